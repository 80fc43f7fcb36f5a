"""Training on tiny features: artifacts, determinism, resume, MLflow (a real server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from veracity.config import ContractConfig, ExtractConfig, MemberConfig, TrainConfig, to_plain
from veracity.contract import DataContract
from veracity.extract import extract
from veracity.models import create_detector
from veracity.training import (
    FRAME_PREDICTIONS,
    MODEL_META,
    MODEL_WEIGHTS,
    PREDICTIONS,
    WINDOW_PREDICTIONS,
    load_member,
    train,
)

pytestmark = pytest.mark.integration

CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()
FAST = dict(epochs=2, batch_size=8, windows_per_clip=1, augment=True)


@pytest.fixture(scope="module")
def features(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract(ExtractConfig(workers=2, min_duration_s=0.5), CONTRACT, tiny_corpus / "manifest.csv", out)
    return out


def test_train_writes_a_rebuildable_member(features: Path, tmp_path: Path) -> None:
    member = MemberConfig(detector="tiny_video", target="video_label", **FAST)
    res = train("v", member, TrainConfig(), features, tmp_path / "v", ece_bins=10)
    for name in (MODEL_WEIGHTS, MODEL_META, PREDICTIONS):
        assert (tmp_path / "v" / name).exists()
    meta = json.loads((tmp_path / "v" / MODEL_META).read_text())
    assert meta["contract"]["face_size"] == 32 and meta["detector"] == "tiny_video"
    assert len(meta["history"]) == 2 and 0 <= meta["best_epoch"] < 2
    preds = pd.read_csv(tmp_path / "v" / PREDICTIONS)
    assert set(preds.split) == {"val", "test"} and preds.prob.between(0, 1).all()
    # The same scores at window and frame level: every clip has both, and pooling the
    # windows (mean of logits) gives the clip's score back.
    windows = pd.read_csv(tmp_path / "v" / WINDOW_PREDICTIONS)
    frames = pd.read_csv(tmp_path / "v" / FRAME_PREDICTIONS)
    assert set(windows.video_id) == set(frames.video_id) == set(preds.video_id)
    assert len(windows) >= len(preds) and len(frames) > len(windows)
    pooled = windows.groupby("video_id").logit.mean()
    np.testing.assert_allclose(pooled[preds.video_id].to_numpy(), preds.logit.to_numpy(), rtol=1e-4, atol=1e-5)
    assert not frames.duplicated(["video_id", "frame"]).any()
    model = load_member(tmp_path / "v")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert res.best_epoch == meta["best_epoch"]


def test_training_is_deterministic_on_cpu(features: Path, tmp_path: Path) -> None:
    member = MemberConfig(detector="tiny_audio", target="audio_label", **FAST)
    train("a", member, TrainConfig(seed=3), features, tmp_path / "a1", ece_bins=10)
    train("a", member, TrainConfig(seed=3), features, tmp_path / "a2", ece_bins=10)
    w1, w2 = load_file(tmp_path / "a1" / MODEL_WEIGHTS), load_file(tmp_path / "a2" / MODEL_WEIGHTS)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=0)
    # DVC hashes the whole member directory: every file must be byte-identical, wall times
    # (logged to MLflow) included nowhere.
    names = sorted(p.name for p in (tmp_path / "a1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "a2").iterdir())
    for name in names:
        assert (tmp_path / "a1" / name).read_bytes() == (tmp_path / "a2" / name).read_bytes(), name


def test_a_member_seed_overrides_the_train_seed(features: Path, tmp_path: Path) -> None:
    base = dict(detector="tiny_audio", target="audio_label", **FAST)
    train("a", MemberConfig(**base, seed=3), TrainConfig(seed=99), features, tmp_path / "own", ece_bins=10)
    train("a", MemberConfig(**base), TrainConfig(seed=3), features, tmp_path / "train3", ece_bins=10)
    train("a", MemberConfig(**base), TrainConfig(seed=99), features, tmp_path / "train99", ece_bins=10)
    own, same, other = (load_file(tmp_path / d / MODEL_WEIGHTS) for d in ("own", "train3", "train99"))
    for k in own:
        torch.testing.assert_close(own[k], same[k], rtol=0, atol=0)
    assert any(not torch.equal(own[k], other[k]) for k in own)


def test_the_weights_kept_are_the_latest_epoch_tied_with_the_best(features: Path, tmp_path: Path) -> None:
    base = dict(detector="tiny_audio", target="audio_label", **{**FAST, "epochs": 3, "patience": 5})

    def kept(tolerance: float, out: str) -> tuple[int, list[float], bool]:
        res = train("a", MemberConfig(**base, select_tolerance=tolerance), TrainConfig(seed=3), features,
                    tmp_path / out, ece_bins=10)
        model = load_file(tmp_path / out / MODEL_WEIGHTS)
        last = {k[6:]: v for k, v in load_file(tmp_path / out / "last.safetensors").items() if k.startswith("model.")}
        return res.best_epoch, [h["val_auc"] for h in res.history], all(torch.equal(model[k], last[k]) for k in model)

    # Within 0.99 of the best, every epoch ties: the last one is kept, whatever its AUC.
    epoch, aucs, is_last = kept(0.99, "loose")
    assert epoch == 2 and is_last
    meta = json.loads((tmp_path / "loose" / MODEL_META).read_text())
    assert meta["best_epoch"] == 2 and meta["kept_val_auc"] == aucs[2] and meta["best_val_auc"] == max(aucs)
    # No tolerance: the latest epoch with the best AUC.
    epoch, aucs, is_last = kept(0.0, "strict")
    assert epoch == max(i for i, a in enumerate(aucs) if a == max(aucs)) and is_last == (epoch == 2)


def test_resume_continues_from_the_last_epoch(features: Path, tmp_path: Path) -> None:
    short = MemberConfig(detector="tiny_video", target="video_label", **{**FAST, "epochs": 1, "patience": 5})
    train("v", short, TrainConfig(), features, tmp_path / "v", ece_bins=10)
    longer = short.model_copy(update={"epochs": 3})
    res = train("v", longer, TrainConfig(), features, tmp_path / "v", resume=True, ece_bins=10)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]


def test_debug_mode_is_one_epoch_on_four_clips(features: Path, tmp_path: Path) -> None:
    member = MemberConfig(detector="tiny_fusion", **FAST)
    res = train("f", member, TrainConfig(debug=True), features, tmp_path / "f", ece_bins=10)
    assert len(res.history) == 1
    preds = pd.read_csv(tmp_path / "f" / PREDICTIONS)
    assert len(preds) <= 8  # 4 val + 4 test clips


@pytest.fixture(scope="module")
def specialists(features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny video, audio and lip-sync members, trained once for the warm-start tests."""
    root = tmp_path_factory.mktemp("members")
    one = {**FAST, "epochs": 1}
    train("v", MemberConfig(detector="tiny_video", target="video_label", **one), TrainConfig(), features, root / "v", ece_bins=10)
    train("a", MemberConfig(detector="tiny_audio", target="audio_label", **one), TrainConfig(), features, root / "a", ece_bins=10)
    train("s", MemberConfig(detector="tiny_lipsync", sync_negatives=True, **one), TrainConfig(), features, root / "s", ece_bins=10)
    return root


def test_fusion_warm_starts_from_specialists_and_keeps_frozen_parts(features: Path, specialists: Path,
                                                                     tmp_path: Path) -> None:
    member = MemberConfig(detector="tiny_fusion", init_from={"video": "v", "audio": "a", "sync": "s"},
                          freeze_init=True, **FAST)
    train("f", member, TrainConfig(), features, tmp_path / "f", members_dir=specialists, ece_bins=10)
    fused = load_file(tmp_path / "f" / MODEL_WEIGHTS)
    for src, own_prefix, src_prefix in (("v", "video.", "branch."), ("a", "audio.", "branch."), ("s", "sync.", "sync.")):
        donor = load_file(specialists / src / MODEL_WEIGHTS)
        keys = [k for k in donor if k.startswith(src_prefix)]
        assert keys
        for k in keys:  # frozen: weights and norm statistics exactly as the specialist left them
            torch.testing.assert_close(fused[own_prefix + k[len(src_prefix):]], donor[k], rtol=0, atol=0)
    meta = json.loads((tmp_path / "f" / MODEL_META).read_text())
    assert meta["init_from"]["video"]["member"] == "v"
    assert len(meta["init_from"]["sync"]["weights_sha256"]) == 64
    # The new layers did learn: the head moved away from its seeded initialisation.
    torch.manual_seed(0)
    fresh = create_detector("tiny_fusion", DataContract.load(features)).state_dict()
    heads = [k for k in fused if k.startswith("head.") and k.endswith("weight")]
    assert heads and any(not torch.equal(fused[k], fresh[k]) for k in heads)


def test_warm_start_needs_the_source_member_and_a_matching_part(features: Path, specialists: Path,
                                                                tmp_path: Path) -> None:
    missing = MemberConfig(detector="tiny_fusion", init_from={"video": "nope"}, **FAST)
    with pytest.raises(FileNotFoundError, match="no trained member 'nope'"):
        train("f", missing, TrainConfig(), features, tmp_path / "f1", members_dir=specialists, ece_bins=10)
    other = MemberConfig(detector="tiny_fusion", overrides={"video": {"dim": 8}}, init_from={"video": "v"}, **FAST)
    with pytest.raises(ValueError, match="built differently"):
        train("f", other, TrainConfig(), features, tmp_path / "f2", members_dir=specialists, ece_bins=10)
    wrong_part = MemberConfig(detector="tiny_video", init_from={"audio": "a"}, **FAST)
    with pytest.raises(ValueError, match="has no 'audio' part"):
        train("f", wrong_part, TrainConfig(), features, tmp_path / "f3", members_dir=specialists, ece_bins=10)


def test_member_starts_from_local_pretrained_weights(features: Path, specialists: Path, tmp_path: Path) -> None:
    source = specialists / "v" / MODEL_WEIGHTS
    member = MemberConfig(detector="tiny_video", target="video_label", pretrained=str(source),
                          **{**FAST, "epochs": 1, "lr": 1e-12})
    train("p", member, TrainConfig(), features, tmp_path / "p", ece_bins=10)
    got, want = load_file(tmp_path / "p" / MODEL_WEIGHTS), load_file(source)
    convs = [k for k in want if k.endswith("conv.weight") or ".conv" in k and k.endswith("weight")]
    assert convs
    for k in convs:  # a vanishing learning rate leaves the loaded weights where they were
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ usable extraction statuses


@pytest.fixture()
def mute_train_features(features: Path, tmp_path: Path) -> Path:
    """The module's features, with every train clip and one val clip marked ``no_audio``."""
    out = tmp_path / "mute_features"
    out.mkdir()
    (out / "records").symlink_to(features / "records")
    shutil.copy(features / "contract.json", out / "contract.json")
    index = pd.read_csv(features / "index.csv")
    mute = (index.split == "train") | (index.video_id == index[index.split == "val"].video_id.iloc[0])
    index.loc[mute, "status"] = "no_audio"
    index.to_csv(out / "index.csv", index=False)
    return out


def test_training_takes_the_usable_statuses_it_is_given(mute_train_features: Path, tmp_path: Path) -> None:
    # FaceForensics++ has no audio: with only "ok" usable there is nothing to train on.
    member = MemberConfig(detector="tiny_video", target="video_label", **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match="need usable train and val clips"):
        train("v", member, TrainConfig(), mute_train_features, tmp_path / "ok_only", usable_statuses=("ok",), ece_bins=10)
    res = train("v", member, TrainConfig(), mute_train_features, tmp_path / "v", usable_statuses=("ok", "no_audio"), ece_bins=10)
    assert res.best_epoch == 0
    index = pd.read_csv(mute_train_features / "index.csv")
    preds = pd.read_csv(tmp_path / "v" / PREDICTIONS)
    want = index[index.split.isin(["val", "test"])].video_id
    assert set(preds.video_id) == set(want)  # the no_audio val clip is scored too
    assert "no_audio" in set(index.set_index("video_id").loc[preds.video_id, "status"])


def test_training_defaults_to_the_usable_statuses_of_its_features(mute_train_features: Path,
                                                                  tmp_path: Path) -> None:
    member = MemberConfig(detector="tiny_video", target="video_label", **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match="usable_statuses"):  # never a silent "ok" only
        train("v", member, TrainConfig(), mute_train_features, tmp_path / "none", ece_bins=10)
    resolved = ExtractConfig(usable_statuses=("ok", "no_audio"))
    (mute_train_features / "config.resolved.yaml").write_text(yaml.safe_dump(to_plain(resolved)))
    train("v", member, TrainConfig(), mute_train_features, tmp_path / "v", ece_bins=10)
    assert len(pd.read_csv(tmp_path / "v" / PREDICTIONS)) == (pd.read_csv(
        mute_train_features / "index.csv").split != "train").sum()


# ------------------------------------------------------------------ resume and the LR schedule


def _scripted_auc(values: list[float]):
    """A stand-in for the validation AUC: the given values in turn, then an interruption."""
    it = iter(values)

    def auc(pred, member):
        try:
            return next(it)
        except StopIteration:
            raise KeyboardInterrupt("interrupted after the scripted epochs") from None

    return auc


def test_resume_restores_the_plateau_scheduler(features: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import veracity.training as training

    member = MemberConfig(detector="tiny_audio", target="audio_label", schedule="plateau", patience=10,
                          **{**FAST, "epochs": 4, "augment": False})
    aucs = [0.9, 0.5, 0.5, 0.5]  # best at epoch 0; two bad epochs then halve the LR (patience 1)
    monkeypatch.setattr(training, "_target_auc", _scripted_auc(aucs))
    whole = train("a", member, TrainConfig(), features, tmp_path / "whole", ece_bins=10)
    monkeypatch.setattr(training, "_target_auc", _scripted_auc(aucs[:2]))
    with pytest.raises(KeyboardInterrupt):  # killed during epoch 2, after epoch 1's checkpoint
        train("a", member, TrainConfig(), features, tmp_path / "resumed", ece_bins=10)
    monkeypatch.setattr(training, "_target_auc", _scripted_auc(aucs[2:]))
    resumed = train("a", member, TrainConfig(), features, tmp_path / "resumed", resume=True, ece_bins=10)

    lr = member.lr
    # The lowered LR holds for the epoch after (a per-batch LambdaLR once reset it at once).
    assert [h["lr"] for h in whole.history] == pytest.approx([lr, lr, lr, lr / 2])
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]
    a, b = (json.loads((tmp_path / d / "last.json").read_text())["scheduler"] for d in ("whole", "resumed"))
    assert a["type"] == b["type"] == "ReduceLROnPlateau"
    for key in ("best", "num_bad_epochs", "last_epoch", "_last_lr", "cooldown_counter"):
        assert a["state"][key] == b["state"][key], key
    assert a["state"]["best"] == 0.9 and a["state"]["_last_lr"] == [lr / 2]
    # (Weights are not compared: resume restores no RNG state, so dropout draws differ.)


# ------------------------------------------------------------------ float16 gradient scaling


def test_a_gradient_scaler_comes_with_float16_only() -> None:
    import warnings

    from veracity.training import grad_scaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": constructing is all this checks
        assert isinstance(grad_scaler(torch.float16, torch.device("cuda")), torch.amp.GradScaler)
    assert grad_scaler(torch.bfloat16, torch.device("cuda")) is None
    assert grad_scaler(None, torch.device("cpu")) is None


def test_the_scaled_step_clips_the_true_gradients() -> None:
    from veracity.training import _backward_step

    w = torch.nn.Parameter(torch.zeros(3))
    g = torch.tensor([60.0, 80.0, 0.0])  # gradient norm 100
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _backward_step((w * g).sum(), opt, [w], 1.0, scaler)
    # Unscaled before clipping: a step of norm 1 along -g. Clipping the scaled gradients
    # (norm 102400) first would leave a step of 1/1024 once the scaler divides them.
    torch.testing.assert_close(w.detach(), -g / 100)
    assert scaler.get_scale() == 2.0**10  # no overflow: the scale stays until growth_interval


def test_training_with_a_gradient_scaler_gives_the_same_weights_and_resumes_its_scale(
        features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import veracity.training as training

    made: list[torch.amp.GradScaler] = []

    def cpu_scaler(amp, device):
        # The float16 path's scaler, on CPU in float32: scaling by powers of two is exact,
        # so the weights must match training without one bit for bit.
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1))
        return made[-1]

    member = MemberConfig(detector="tiny_audio", target="audio_label", **FAST)
    train("a", member, TrainConfig(), features, tmp_path / "plain", ece_bins=10)
    monkeypatch.setattr(training, "grad_scaler", cpu_scaler)
    train("a", member, TrainConfig(), features, tmp_path / "scaled", ece_bins=10)
    for name in (MODEL_WEIGHTS, "last.safetensors"):
        plain, scaled = load_file(tmp_path / "plain" / name), load_file(tmp_path / "scaled" / name)
        for k in plain:
            torch.testing.assert_close(scaled[k], plain[k], rtol=0, atol=0)
    saved = json.loads((tmp_path / "scaled" / "last.json").read_text())["grad_scaler"]
    assert saved["scale"] == made[0].get_scale() > 2.0**8  # grew once per step
    assert json.loads((tmp_path / "plain" / "last.json").read_text())["grad_scaler"] is None
    train("a", member, TrainConfig(), features, tmp_path / "scaled", resume=True, ece_bins=10)  # nothing left to run
    assert made[1].get_scale() == saved["scale"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--workers", "1"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    import urllib.request

    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_training_run_appears_in_a_real_mlflow_server(features: Path, tmp_path: Path, mlflow_server: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from typer.testing import CliRunner

    from veracity.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"members": {"tv": {"detector": "tiny_video", **FAST}}}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    res = CliRunner().invoke(app, ["train", "--member", "tv", "--features", str(features),
                                   "--out", str(tmp_path / "tv"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("veracity")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["member"] == "tv" and run.data.tags["git_commit"]
    assert "val_auc" in run.data.metrics and "best_val_auc" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 2 and np.isfinite([m.value for m in history]).all()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/model.json", "model/predictions.csv"} <= artifacts
