"""One training function for every ensemble member (DESIGN §5.2).

``train(member, cfg, features, out)`` builds the member's detector from the registry,
streams windows from the extracted features (the clips whose extraction status is usable),
and optimises it with AdamW under a cosine or plateau schedule, label smoothing,
class-imbalance weighting, gradient clipping, mixed precision on CUDA (float16 with a
gradient scaler) and early stopping on validation AUC (clip level). It writes:

    model.safetensors   best weights (by validation AUC)
    model.json          detector name + config, data contract, member config, metrics,
                        history: enough to rebuild the model without guessing
    last.safetensors    last epoch's weights and optimiser state (for --resume)
    last.json           epoch, optimiser param groups, scheduler and gradient-scaler
                        state: RNG-free resume state
    predictions.csv     clip-level scores on val and test (for evaluate/calibrate)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from veracity import metrics
from veracity.augment import Augment, capture_blur, self_blend
from veracity.config import RESOLVED_NAME, MemberConfig, TrainConfig, to_plain
from veracity.contract import DataContract
from veracity.data import ClipInfo, WindowDataset, collate, load_clips
from veracity.devices import resolve_device
from veracity.lineage import json_default, sha256_file
from veracity.models import create_detector
from veracity.models.base import Batch, DetectorOutput
from veracity.models.checkpoint import (
    FRAME_PREDICTIONS,
    LAST_META,
    LAST_WEIGHTS,
    MODEL_META,
    MODEL_WEIGHTS,
    PREDICTIONS,
    WINDOW_PREDICTIONS,
    load_member,
)
from veracity.models.lipsync import shifted_audio_negatives

log = logging.getLogger(__name__)



@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out: Path
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def pick_device(cfg: TrainConfig) -> torch.device:
    """``train.device`` as a device (:func:`veracity.devices.resolve_device`)."""
    return resolve_device(cfg.device)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this device, or None for full precision (always on CPU)."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def grad_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """The gradient scaler for this autocast dtype: one for float16, else None.

    float16 gradients underflow to zero below ~6e-8, so the loss is scaled up before the
    backward pass and the gradients scaled back before clipping and the step; bfloat16 has
    float32's range and needs none, and full precision none either.
    """
    return torch.amp.GradScaler(device.type) if amp == torch.float16 else None


def _backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.Tensor],
                   grad_clip: float | None, scaler: torch.amp.GradScaler | None) -> None:
    """Backward pass, gradient clipping and optimiser step, through ``scaler`` when there is one.

    With a scaler the gradients are unscaled before clipping (``grad_clip`` is a norm of the
    true gradients), and a step whose gradients overflowed is skipped by the scaler.
    """
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        return
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()


def _recorded_usable_statuses(features: Path) -> tuple[str, ...]:
    """The ``usable_statuses`` the features directory was extracted with (its resolved config)."""
    path = Path(features) / RESOLVED_NAME
    if not path.is_file():
        raise ValueError(f"{features}: no {RESOLVED_NAME} saying which extraction statuses are usable; "
                         "pass usable_statuses (extract.usable_statuses)")
    return tuple((yaml.safe_load(path.read_text()) or {}).get("usable_statuses", ()))


def _targets(batch: Batch, clips: list[ClipInfo], member: MemberConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window target and a 0/1 mask of windows that count in the loss."""
    y = getattr(batch, member.target).clone()
    if member.target != "label":
        # Unknown modality labels (NaN, e.g. DFDC) fall back to the clip label.
        y = torch.where(torch.isnan(y), batch.label, y)
    mask = torch.ones_like(y)
    if member.target_methods is not None:
        wanted = set(member.target_methods)
        keep = torch.tensor([c.label == 0 or c.method in wanted for c in clips], dtype=y.dtype)
        mask = mask * keep
    present = {"video_label": batch.video_present, "audio_label": batch.audio_present}.get(member.target)
    if present is not None:
        mask = mask * present.to(y.dtype)
    return y, mask


def _append(batch: Batch, y: torch.Tensor, mask: torch.Tensor, extra: Batch,
            extra_y: torch.Tensor) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """The batch with ``extra`` windows (targets ``extra_y``, all counted) appended."""
    merged = Batch(**{
        f: (torch.cat([getattr(batch, f), getattr(extra, f)]) if getattr(batch, f) is not None
            and getattr(extra, f) is not None else None)
        for f in vars(batch)
    })
    return merged, torch.cat([y, extra_y]), torch.cat([mask, torch.ones_like(extra_y)])


def _subset(batch: Batch, keep: torch.Tensor) -> Batch:
    idx = torch.nonzero(keep).flatten()
    return Batch(**{f: (v[idx] if isinstance(v, torch.Tensor) else v) for f, v in vars(batch).items()})


def _with_sync_negatives(batch: Batch, y: torch.Tensor, mask: torch.Tensor, contract: DataContract,
                         generator: torch.Generator) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Append the batch's real, two-modality windows again with shifted audio, as fakes."""
    keep = (batch.label == 0) & batch.video_present & batch.audio_present
    if not bool(keep.any()):
        return batch, y, mask
    neg = shifted_audio_negatives(_subset(batch, keep), contract, generator=generator)
    return _append(batch, y, mask, neg, torch.ones(int(keep.sum()), device=y.device, dtype=y.dtype))


def _with_self_blends(batch: Batch, y: torch.Tensor, mask: torch.Tensor, contract: DataContract,
                      generator: torch.Generator) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Append the batch's real-face windows again, self-blended (:func:`self_blend`), as video fakes."""
    keep = (batch.video_label == 0) & batch.video_present
    if not bool(keep.any()):
        return batch, y, mask
    real = _subset(batch, keep)
    ones = torch.ones(int(keep.sum()), device=y.device, dtype=y.dtype)
    real.video = self_blend(real.video, contract, generator)
    real.label, real.video_label = ones.clone(), ones.clone()
    return _append(batch, y, mask, real, ones)


def _loss(out: DetectorOutput, batch: Batch, y: torch.Tensor, mask: torch.Tensor,
          member: MemberConfig, pos_weight: float | None) -> torch.Tensor:
    eps = member.label_smoothing
    ys = y * (1 - eps) + 0.5 * eps
    pw = torch.tensor(pos_weight, device=y.device) if pos_weight else None
    per = F.binary_cross_entropy_with_logits(out.logits.float(), ys, pos_weight=pw, reduction="none")
    loss = (per * mask).sum() / mask.sum().clamp(min=1.0)
    if out.aux and member.aux_weight > 0:
        for key, target, present in (("video", batch.video_label, batch.video_present),
                                     ("audio", batch.audio_label, batch.audio_present)):
            if key not in out.aux or target is None:
                continue
            t = torch.where(torch.isnan(target), batch.label, target)
            m = present.to(t.dtype) if present is not None else torch.ones_like(t)
            aux = F.binary_cross_entropy_with_logits(out.aux[key].float(), t * (1 - eps) + 0.5 * eps, reduction="none")
            loss = loss + member.aux_weight * (aux * m).sum() / m.sum().clamp(min=1.0)
    if member.temporal_consistency > 0 and out.frame_scores is not None and out.frame_scores.shape[1] > 1:
        p = torch.sigmoid(out.frame_scores.float())
        loss = loss + member.temporal_consistency * (p[:, 1:] - p[:, :-1]).pow(2).mean()
    return loss


_CLIP_COLUMNS = ["video_id", "split", "method", "label", "video_label", "audio_label"]


def _with_clip_columns(ds: WindowDataset, ids: np.ndarray, rest: dict[str, Any]) -> pd.DataFrame:
    info = {c.video_id: c for c in ds.clips}
    cols = {"video_id": ids, **{k: [getattr(info[g], k) for g in ids] for k in _CLIP_COLUMNS[1:]}}
    df = pd.DataFrame({**cols, **rest})
    df["prob"] = 1 / (1 + np.exp(-df["logit"].to_numpy(dtype=float)))
    return df


def predict_levels(model: torch.nn.Module, ds: WindowDataset, device: torch.device, batch_size: int,
                   amp: torch.dtype | None = None, pooling: str = "mean",
                   frames_too: bool = True) -> dict[str, pd.DataFrame]:
    """Logits at three levels: ``frame`` (per-frame scores, averaged where windows overlap;
    empty for detectors without them or when ``frames_too`` is False), ``window`` and
    ``video`` (windows pooled per clip).

    Frames are indexed by their row in the clip's primary track (the sampled-frame order).
    """
    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    scores, items, frames = [], [], []
    t = ds.contract.frames_per_window
    with torch.inference_mode():
        for batch, idx in loader:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(batch)
            scores.append(out.logits.float().cpu().numpy())
            items.append(idx.numpy())
            if frames_too and out.frame_scores is not None and out.frame_scores.shape[1] == t:
                frames.append(out.frame_scores.float().cpu().numpy())
    if not scores:
        empty = pd.DataFrame(columns=[*_CLIP_COLUMNS, "logit", "prob"])
        return {"frame": empty, "window": empty, "video": empty}
    s, idx = np.concatenate(scores), np.concatenate(items)
    ids = np.array([ds.item_clip(int(i)).video_id for i in idx])
    starts = np.array([ds.item_start(int(i)) for i in idx])
    window = _with_clip_columns(ds, ids, {"start": starts, "logit": s})
    groups, pooled = metrics.pool(s, ids, how=pooling)
    video = _with_clip_columns(ds, groups, {"logit": pooled})
    frame = pd.DataFrame(columns=[*_CLIP_COLUMNS, "frame", "logit", "prob"])
    if frames:
        f = np.concatenate(frames)
        lengths = np.array([ds.item_length(int(i)) for i in idx])
        rows = pd.DataFrame({"video_id": np.repeat(ids, t), "frame": (starts[:, None] + np.arange(t)).ravel(),
                             "logit": f.ravel()})
        rows = rows[np.arange(t)[None, :].repeat(len(idx), 0).ravel() < np.repeat(lengths, t)]  # drop padding
        rows = rows.groupby(["video_id", "frame"], sort=True, as_index=False)["logit"].mean()
        frame = _with_clip_columns(ds, rows["video_id"].to_numpy(), {"frame": rows["frame"].to_numpy(),
                                                                      "logit": rows["logit"].to_numpy()})
    return {"frame": frame, "window": window, "video": video}


def predict(model: torch.nn.Module, ds: WindowDataset, device: torch.device, batch_size: int,
            amp: torch.dtype | None = None, pooling: str = "mean") -> pd.DataFrame:
    """Clip-level logits: window logits pooled per clip (``pooling``: see metrics.pool)."""
    # Per-epoch validation needs the clip scores only: skip the frame table.
    return predict_levels(model, ds, device, batch_size, amp, pooling, frames_too=False)["video"]


def _target_auc(pred: pd.DataFrame, member: MemberConfig) -> float:
    y = pred[member.target].astype(float).where(pred[member.target].notna(), pred["label"]).to_numpy()
    keep = np.ones(len(pred), bool)
    if member.target_methods is not None:
        keep = (pred["label"] == 0).to_numpy() | pred["method"].isin(member.target_methods).to_numpy()
    return metrics.roc_auc(y[keep], pred["logit"].to_numpy()[keep])


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # Optimiser state as safetensors (tensors) + JSON (the rest): no pickle anywhere.
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def warm_start(model: torch.nn.Module, member: MemberConfig, members_dir: Path | None) -> dict[str, Any]:
    """Initialise the parts named in ``member.init_from`` from trained members.

    Args:
        model: the detector being trained (its :meth:`parts` are the targets).
        member: the member's config (``init_from``, ``freeze_init``).
        members_dir: directory holding one folder per trained member.

    Returns:
        Lineage per part: the source member and the sha256 of its weights file.

    Raises:
        FileNotFoundError: a source member has not been trained.
        ValueError: a part is unknown, or its architecture or data contract differs.
    """
    if not member.init_from:
        return {}
    if members_dir is None:
        raise ValueError("init_from names other members but no members directory was given")
    own = model.parts()
    info: dict[str, Any] = {}
    for part, source in member.init_from.items():
        if part not in own:
            raise ValueError(f"init_from: {model.name} has no {part!r} part (it has {sorted(own)})")
        src_dir = Path(members_dir) / source
        if not (src_dir / MODEL_META).is_file():
            raise FileNotFoundError(f"init_from {part}: no trained member {source!r} in {src_dir} (train it first)")
        donor = load_member(src_dir)
        if donor.contract != model.contract:
            raise ValueError(f"init_from {part}: {source!r} was trained for another data contract")
        theirs = donor.parts()
        if part not in theirs:
            raise ValueError(f"init_from {part}: member {source!r} ({donor.name}) has no {part!r} part")
        try:
            own[part].load_state_dict(theirs[part].state_dict())
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"init_from {part}: {source!r}'s {part} part is built differently "
                             f"from {model.name}'s ({first})") from None
        if member.freeze_init:
            own[part].requires_grad_(False)
        info[part] = {"member": source, "weights_sha256": sha256_file(src_dir / MODEL_WEIGHTS)}
        log.info("%s part initialised from %s%s", part, source, " (frozen)" if member.freeze_init else "")
    return info


def train(name: str, member: MemberConfig, cfg: TrainConfig, features: Path, out: Path,
          resume: bool = False, tracker: Any = None, members_dir: Path | None = None, *,
          usable_statuses: Sequence[str] | None = None, ece_bins: int) -> TrainResult:
    """Train one ensemble member on extracted features.

    Args:
        name: the member's name (its params key and output folder).
        member: what to train and how.
        cfg: shared training settings (seed, device, AMP, debug).
        features: the extraction output directory (index.csv, records, contract.json).
        out: where the model, its metadata and predictions go.
        resume: continue from ``out/last.*`` if present.
        tracker: optional object with ``log_metrics(dict, step)`` (MLflow run wrapper).
        members_dir: where the members named by ``member.init_from`` were trained.
        usable_statuses: extraction statuses whose clips are trained and evaluated on
            (``extract.usable_statuses``; e.g. ``ok`` and ``no_audio`` for FaceForensics++).
            None takes the ones ``features`` was extracted with (its ``config.resolved.yaml``).
        ece_bins: bins of the test ECE reported (``metrics.ece_bins``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: no usable train or val clips, or ``usable_statuses`` is None and the
            features directory does not record them.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if member.seed is None else member.seed
    _seed_everything(seed)
    contract = DataContract.load(features)
    device = pick_device(cfg)
    amp = autocast_dtype(cfg, device)
    if usable_statuses is None:
        usable_statuses = _recorded_usable_statuses(features)
        log.info("%s: usable extraction statuses %s, as %s was extracted", name, list(usable_statuses), features)
    train_clips = load_clips(features, ["train"], usable_statuses)
    val_clips = load_clips(features, ["val"], usable_statuses)
    test_clips = load_clips(features, ["test"], usable_statuses)
    epochs = member.epochs
    if cfg.debug:
        train_clips, val_clips, test_clips, epochs = train_clips[:4], val_clips[:4], test_clips[:4], 1
    if not train_clips or not val_clips:
        raise ValueError(f"{features}: need usable train and val clips (got {len(train_clips)} / {len(val_clips)} "
                         f"with status in {list(usable_statuses)})")

    aug = Augment(contract, p=member.augment_p) if member.augment else None
    train_ds = WindowDataset(train_clips, contract, train=True, windows_per_clip=member.windows_per_clip,
                             transform=aug, seed=seed)
    val_ds = WindowDataset(val_clips, contract)
    test_ds = WindowDataset(test_clips, contract)
    model = create_detector(member.detector, contract, pretrained=member.pretrained, **member.overrides)
    lineage = warm_start(model, member, members_dir)
    frozen = [model.parts()[p] for p in lineage] if member.freeze_init else []
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=member.lr, weight_decay=member.weight_decay)
    steps_per_epoch = math.ceil(len(train_ds) / member.batch_size)
    total = steps_per_epoch * epochs
    warm = int(member.warmup_frac * total)

    def lr_at(step: int) -> float:
        if member.schedule != "cosine":
            return 1.0
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    # One scheduler, the member's: a LambdaLR stepped every batch would set the learning
    # rate back to base * 1.0 right after ReduceLROnPlateau lowered it.
    per_epoch = member.schedule == "plateau"  # stepped on validation AUC, not per batch
    scheduler: Any = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1)
                      if per_epoch else torch.optim.lr_scheduler.LambdaLR(opt, lr_at))
    scaler = grad_scaler(amp, device)
    labels = np.array([getattr(c, member.target) if not np.isnan(getattr(c, member.target, np.nan)) else c.label
                       for c in train_clips], dtype=float)
    pos_weight = None
    if member.pos_weight == "auto":
        n_pos, n_neg = float(labels.sum()), float(len(labels) - labels.sum())
        if member.self_blend:  # every real-face window comes with a blended twin labelled fake
            n_pos += n_neg
        pos_weight = n_neg / n_pos if n_pos else None
    elif member.pos_weight is not None:
        pos_weight = float(member.pos_weight)

    first_epoch, best_auc, best_epoch, history, bad = 0, -1.0, -1, [], 0
    if resume and (out / LAST_META).exists():
        meta = json.loads((out / LAST_META).read_text())
        tensors = load_file(out / LAST_WEIGHTS)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(opt, tensors, meta["optimizer"])
        saved = meta["scheduler"]
        if "type" not in saved:  # written before the type was recorded: always a LambdaLR
            saved = {"type": "LambdaLR", "state": saved}
        if saved["type"] == type(scheduler).__name__:
            scheduler.load_state_dict(saved["state"])
        else:
            log.warning("%s: the checkpoint holds %s state, not %s; that scheduler starts afresh",
                        name, saved["type"], type(scheduler).__name__)
        if scaler is not None and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        first_epoch, best_auc, best_epoch, history, bad = (meta["epoch"] + 1, meta["best_auc"], meta["best_epoch"],
                                                          meta["history"], meta["bad_epochs"])
        log.info("%s: resuming at epoch %d", name, first_epoch)

    from tqdm import tqdm

    for epoch in range(first_epoch, epochs):
        model.train()
        for part in frozen:  # fixed parts keep their dropout off and norm statistics as trained
            part.eval()
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(train_ds, batch_size=member.batch_size, shuffle=True, generator=g,
                            collate_fn=collate, num_workers=cfg.num_workers)
        t0, losses = time.perf_counter(), []
        for batch, idx in tqdm(loader, desc=f"{name} {epoch + 1}/{epochs}", leave=False, disable=None):
            clips = [train_ds.item_clip(int(i)) for i in idx]
            batch = batch.to(device)
            y, mask = _targets(batch, clips, member)
            if member.sync_negatives:
                batch, y, mask = _with_sync_negatives(batch, y, mask, contract, g)
            if member.self_blend:
                batch, y, mask = _with_self_blends(batch, y, mask, contract, g)
            if member.capture_blur and batch.video is not None:
                batch.video = capture_blur(batch.video, member.capture_blur, generator=g)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                output = model(batch)
            loss = _loss(output, batch, y, mask, member, pos_weight)
            _backward_step(loss, opt, params, member.grad_clip, scaler)
            if not per_epoch:
                scheduler.step()
            losses.append(float(loss.detach()))
        val = predict(model, val_ds, device, member.batch_size * 2, amp)
        val_auc = _target_auc(val, member)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_auc": float(val_auc),
               "lr": float(opt.param_groups[0]["lr"]), "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info(json.dumps({"member": name, **row}))
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if per_epoch:
            scheduler.step(val_auc if not np.isnan(val_auc) else 0.0)
        improved = not np.isnan(val_auc) and val_auc > best_auc
        # Patience counts epochs without a better AUC; the weights kept are the latest ones
        # within member.select_tolerance of the best (a tie on this many clips).
        # (An improvement is a tie too: max(best, val) is then val.)
        tied = not np.isnan(val_auc) and val_auc >= max(best_auc, val_auc) - member.select_tolerance
        if improved or best_epoch < 0:
            best_auc, bad = (val_auc if not np.isnan(val_auc) else best_auc), 0
        else:
            bad += 1
        if tied or best_epoch < 0:
            best_epoch = epoch
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / MODEL_WEIGHTS)
        tensors, opt_meta = _flatten_optimizer(opt)
        tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        save_file({k: v.cpu() for k, v in tensors.items()}, out / LAST_WEIGHTS)
        (out / LAST_META).write_text(json.dumps({
            "epoch": epoch, "best_auc": best_auc, "best_epoch": best_epoch, "bad_epochs": bad,
            # Without wall times, like model.json: same data and seed, same bytes (DVC hashes them).
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history],
            "optimizer": opt_meta,
            "scheduler": {"type": type(scheduler).__name__, "state": scheduler.state_dict()},
            "grad_scaler": scaler.state_dict() if scaler is not None else None}, default=json_default))
        if bad >= member.patience:
            log.info("%s: early stop at epoch %d (best %d, val AUC %.4f)", name, epoch, best_epoch, best_auc)
            break

    model.load_state_dict(load_file(out / MODEL_WEIGHTS))
    levels = [predict_levels(model, ds, device, member.batch_size * 2, amp) for ds in (val_ds, test_ds)]
    for level, path in (("frame", FRAME_PREDICTIONS), ("window", WINDOW_PREDICTIONS)):
        df = pd.concat([lv[level] for lv in levels], ignore_index=True)
        df.insert(0, "member", name)
        df.to_csv(out / path, index=False, float_format="%.6g")
    preds = pd.concat([lv["video"] for lv in levels], ignore_index=True)
    preds.insert(0, "member", name)
    preds.to_csv(out / PREDICTIONS, index=False)
    test = preds[preds.split == "test"]
    test_metrics = {}
    if len(test):
        # Scored on what the member learns (e.g. audio_label for the audio specialist);
        # evaluate reports every member against the clip label and per method as well.
        y = test[member.target].where(test[member.target].notna(), test["label"]).astype(float)
        keep = np.ones(len(test), bool)
        if member.target_methods is not None:
            keep = (test["label"] == 0).to_numpy() | test["method"].isin(member.target_methods).to_numpy()
        test_metrics = metrics.summarize(y.to_numpy()[keep], test["prob"].to_numpy()[keep], n_bins=ece_bins)
    result = TrainResult(out, best_epoch, float(best_auc), history,
                         {k: float(v) for k, v in test_metrics.items()}, time.perf_counter() - start)
    (out / MODEL_META).write_text(json.dumps({
        "member": name,
        "detector": model.name,
        "detector_config": model.config,
        "contract": contract.to_dict(),
        "member_config": to_plain(member),
        "train_config": to_plain(cfg, exclude={"members"}),
        "init_from": lineage,
        "best_epoch": best_epoch,  # the epoch whose weights are kept (see select_tolerance)
        "best_val_auc": best_auc,  # the highest validation AUC of any epoch
        "kept_val_auc": next((h["val_auc"] for h in history if h.get("epoch") == best_epoch), None),
        "test": result.test,
        # Loss and AUC per epoch; wall times stay in the logs and MLflow so that the same
        # data and seed give the same bytes here.
        "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history],
        "device": str(device),
        "amp": str(amp) if amp else "off",
    }, indent=1, default=json_default))
    return result
