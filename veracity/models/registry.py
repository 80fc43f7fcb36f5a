"""Detector registry and factory (DESIGN §5.1), after timm's ``register_model``/``create_model``.

Each architecture variant is a small function ``def tiny_video(contract, **overrides)`` that
fills in its defaults and builds a :class:`Detector`; ``@register_detector`` files it under
the function's name. :func:`create_detector` is the one way code outside this package builds
a model: by name, for a :class:`~veracity.contract.DataContract`, with keyword overrides,
and optionally with weights from a *local* path. Nothing is ever downloaded.

Every detector carries what is needed to rebuild it: ``name``, ``contract`` and ``config``
(a plain, JSON-ready dict of its constructor arguments), so
``create_detector(d.name, d.contract, **d.config)`` gives the same architecture and
``load_state_dict(strict=True)`` of ``d``'s weights works. :func:`save_detector` and
:func:`load_detector` keep those three in the metadata of a safetensors file.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from veracity.config import ContractConfig
from veracity.contract import DataContract
from veracity.models.base import Batch, DetectorOutput

MODALITIES = ("video", "audio", "av")
_META_KEY = "veracity.detector"


class Detector(nn.Module):
    """Base class of every detector: an ``nn.Module`` mapping a :class:`Batch` to a
    :class:`DetectorOutput`.

    Attributes:
        modality: ``"video"``, ``"audio"`` or ``"av"`` (class attribute).
        contract: the data contract the detector was built for.
        name: registry name (set by :func:`create_detector`; the class name otherwise).
        config: JSON-ready constructor arguments; with ``name`` and ``contract`` they
            rebuild the architecture exactly.
    """

    modality: ClassVar[str] = ""

    def __init__(self, contract: DataContract):
        super().__init__()
        self.contract = contract
        self.name = type(self).__name__
        self.config: dict[str, Any] = {}

    def forward(self, batch: Batch) -> DetectorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def parts(self) -> dict[str, nn.Module]:
        """Named parts another detector can be initialised from (``video``, ``audio``, ``sync``).

        A fusion model built from the same part configurations as the specialists can start
        from their trained weights (``train.members.<m>.init_from``). Default: none.
        """
        return {}

    def checkpoint_overrides(self, path: Path) -> dict[str, Any]:
        """Constructor overrides that a pretrained checkpoint imposes on the architecture.

        A Hugging Face wav2vec2 directory, for instance, fixes the transformer's sizes; the
        factory rebuilds the detector with these before loading. Default: none.

        Args:
            path: the local checkpoint (file or directory).

        Returns:
            Overrides to merge into the constructor arguments (empty when none).
        """
        return {}

    def load_backbone(self, path: Path) -> None:
        """Load pretrained weights of a part (a timm backbone, a wav2vec2 encoder).

        Args:
            path: a local weights file or checkpoint directory.

        Raises:
            ValueError: the detector has no part that these weights fit.
        """
        raise ValueError(f"{self.name}: {path} does not hold weights for the whole detector, "
                         "and this detector has no pretrained backbone to load them into")


D = TypeVar("D", bound=Detector)
VariantFn = Callable[..., Detector]


@dataclass(frozen=True)
class _Entry:
    fn: VariantFn
    modality: str
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_detector(fn: VariantFn | None = None, *, modality: str | None = None,
                      description: str | None = None) -> Any:
    """Register a variant function under its name (usable bare or with arguments).

    The modality defaults to the ``modality`` of the class named in the function's return
    annotation; the description to the first line of its docstring.

    Args:
        fn: the variant function ``(contract, **overrides) -> Detector``.
        modality: ``"video"``, ``"audio"`` or ``"av"``.
        description: one line for :func:`detector_info`.

    Returns:
        The function itself (or a decorator, when called with keyword arguments only).

    Raises:
        ValueError: the name is taken or the modality cannot be determined.
    """

    def decorate(f: VariantFn) -> VariantFn:
        name = f.__name__
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} is already registered")
        mod = modality
        if mod is None:
            ret = typing.get_type_hints(f).get("return")
            mod = getattr(ret, "modality", None)
        if mod not in MODALITIES:
            raise ValueError(f"detector {name!r}: modality must be one of {MODALITIES}, got {mod!r}")
        desc = description or (inspect.getdoc(f) or "").split("\n", 1)[0]
        _REGISTRY[name] = _Entry(f, mod, desc)
        return f

    return decorate(fn) if fn is not None else decorate


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown detector {name!r}{hint} (see list_detectors())") from None


def list_detectors(pattern: str = "*") -> list[str]:
    """Names of the registered detectors matching a shell-style pattern, sorted.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"tiny_*"``.

    Returns:
        Sorted names.
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def detector_info(name: str) -> dict[str, str]:
    """What a registered detector is.

    Args:
        name: registry name.

    Returns:
        ``{"name", "modality", "description"}``.

    Raises:
        KeyError: unknown name (with close matches).
    """
    e = _entry(name)
    return {"name": name, "modality": e.modality, "description": e.description}


def create_detector(name: str, contract: DataContract | None = None,
                    pretrained: str | Path | None = None, **overrides: Any) -> Detector:
    """Build a registered detector.

    Args:
        name: registry name (see :func:`list_detectors`).
        contract: the data contract to build for (default: ``ContractConfig().build()``,
            the code defaults of the ``contract`` params section).
        pretrained: ``None`` (random init) or a local path: a safetensors/torch file with
            the whole detector's ``state_dict``, or the weights of a part (a timm backbone
            file or directory, a Hugging Face wav2vec2 directory). Never downloaded.
        **overrides: constructor arguments replacing the variant's defaults; ``None``
            values are dropped (so unset CLI options fall through to the defaults).

    Returns:
        The detector, in training mode, with ``name``/``contract``/``config`` set.

    Raises:
        KeyError: unknown name (the message suggests close matches).
        TypeError: an override the detector does not take (the message names it).
        FileNotFoundError: ``pretrained`` does not exist.
        ValueError: ``pretrained=True`` (weights need a local path) or weights that fit
            nothing in the detector.
    """
    entry = _entry(name)
    contract = contract if contract is not None else ContractConfig().build()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    path: Path | None = None
    if pretrained is True:
        raise ValueError("pretrained=True would need a download; pass a local weights path")
    if pretrained not in (None, False, ""):
        path = Path(pretrained).expanduser()  # type: ignore[arg-type]
        if not path.exists():
            raise FileNotFoundError(f"pretrained weights for {name!r} not found: {path} "
                                    "(a local file or directory is expected; nothing is downloaded)")
    det = entry.fn(contract, **overrides)
    if path is not None:
        extra = det.checkpoint_overrides(path)
        if extra:
            # The checkpoint fixes part of the architecture: rebuild before loading.
            det = entry.fn(contract, **{**overrides, **extra})
        load_weights(det, path)
    det.name = name
    return det


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` from a safetensors file, or a torch file (``weights_only``).

    Args:
        path: the file.

    Returns:
        Tensor by key (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    return dict(obj)


def load_weights(det: Detector, path: Path | str) -> None:
    """Load local pretrained weights into a detector, whole or into a part.

    A file whose keys are exactly the detector's is loaded with ``strict=True``; anything
    else goes to :meth:`Detector.load_backbone`.

    Args:
        det: the detector.
        path: weights file or checkpoint directory.

    Raises:
        FileNotFoundError: the path does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_file():
        state = read_state_dict(path)
        if set(state) == set(det.state_dict()):
            det.load_state_dict(state, strict=True)
            return
    det.load_backbone(path)


def save_detector(det: Detector, path: Path | str) -> Path:
    """Write a detector's weights as safetensors, with name/config/contract as metadata.

    Args:
        det: the detector.
        path: output ``.safetensors`` file.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": det.name, "config": det.config, "contract": det.contract.to_dict()}
    state = {k: v.detach().contiguous().cpu() for k, v in det.state_dict().items()}
    save_file(state, str(path), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def load_detector(path: Path | str, map_location: str | torch.device = "cpu") -> Detector:
    """Rebuild a detector written by :func:`save_detector` and load its weights (strict).

    Args:
        path: the ``.safetensors`` file.
        map_location: device for the weights.

    Returns:
        The detector in eval mode.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no detector metadata.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(_META_KEY)
    if meta is None:
        raise ValueError(f"{path} has no {_META_KEY!r} metadata; use create_detector(..., pretrained=)")
    info = json.loads(meta)
    det = create_detector(info["name"], DataContract.from_dict(info["contract"]), **info["config"])
    det.load_state_dict(load_file(str(path), device=str(map_location)), strict=True)
    return det.eval()


# ---------------------------------------------------------------- helpers for variants

def plain(value: Any) -> Any:
    """A JSON-ready copy of a config value (tuples become lists).

    Raises:
        TypeError: a value that JSON cannot hold.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"config values must be JSON-ready, got {type(value).__name__}: {value!r}")


def config_of(local_vars: Mapping[str, Any]) -> dict[str, Any]:
    """A detector's ``config`` from its constructor's ``locals()`` (taken first thing)."""
    return plain({k: v for k, v in local_vars.items()
                  if k not in ("self", "contract", "__class__") and not k.startswith("_")})


def build(cls: type[D], contract: DataContract, defaults: Mapping[str, Any],
          overrides: Mapping[str, Any], merge: tuple[str, ...] = ()) -> D:
    """Build ``cls(contract, **defaults | overrides)``, checking the override names.

    Args:
        cls: the detector class.
        contract: data contract.
        defaults: the variant's arguments.
        overrides: the caller's arguments; they replace defaults, except that keys named in
            ``merge`` (sub-configs given as dicts) are merged one level deep.
        merge: names of dict-valued arguments merged rather than replaced.

    Returns:
        The detector.

    Raises:
        TypeError: an override that ``cls`` does not take, named in the message.
    """
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in overrides if k not in params or k in ("self", "contract"))
    if unknown:
        accepted = sorted(k for k in params if k not in ("self", "contract"))
        raise TypeError(f"{cls.__name__} got unknown override(s) {unknown}; accepted: {accepted}")
    kw = dict(defaults)
    for k, v in overrides.items():
        if k in merge and isinstance(v, Mapping) and isinstance(kw.get(k), Mapping):
            kw[k] = {**kw[k], **v}
        else:
            kw[k] = v
    return cls(contract, **kw)
