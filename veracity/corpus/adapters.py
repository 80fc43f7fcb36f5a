"""Dataset adapters: turn a dataset root into the one manifest (DESIGN §3, DATASETS.md).

Every adapter walks one on-disk layout, builds row dicts with :func:`_record` and hands
them to :func:`_finish`, which fills in missing splits by identity group, checks that
``video_id`` is unique and returns a :func:`manifest.from_records` frame sorted by
``video_id``. Paths are stored relative to ``base``, the directory the manifest will be
written in, so a corpus and its manifest can be moved together.

Split policy: an official split (FaceForensics++ ``splits/*.json``, Celeb-DF's test list,
a ``split`` column or field) is kept as it is; rows without one are assigned whole identity
groups (:func:`manifest.identity_groups`, which links a fake's target to its donor) with
:func:`manifest.assign_group_splits`, so no group spans two splits. A row that would tie
two official splits together (a fake whose target and donor were placed apart) has no
leak-free split and is dropped with a warning.

Adapters do not open videos: a file named in metadata but missing on disk still yields a
row (validation reports missing files), whereas unreadable or malformed metadata raises
:class:`AdapterError` naming the file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

import pandas as pd

from veracity.config import CorpusConfig, SplitRatios
from veracity.corpus import manifest
from veracity.corpus.manifest import REAL_METHOD, SPLITS

_log = logging.getLogger(__name__)

Ratios = Mapping[str, float] | SplitRatios
Record = dict[str, object]

UNKNOWN_METHOD = "unknown"
DFDC_FAKE_METHOD = "dfdc_fake"
CELEBDF_FAKE_METHOD = "celebdf_fake"
# DataFrame.attrs key set when an adapter keeps an official split that shares identities
# across splits (Celeb-DF), so validation can explain the leak it will find.
KNOWN_LEAK_ATTR = "known_split_leak"

FF_COMPRESSIONS = ("raw", "c0", "c23", "c40")
# FF's own extraction script calls the lossless folder c0, the download script raw.
_FF_ALIASES = {"raw": ("raw", "c0"), "c0": ("c0", "raw")}

# FakeAVCeleb category -> (folder name, video_label, audio_label).
FAKEAVCELEB_CATEGORIES = {
    "A": ("RealVideo-RealAudio", 0, 0),
    "B": ("RealVideo-FakeAudio", 0, 1),
    "C": ("FakeVideo-RealAudio", 1, 0),
    "D": ("FakeVideo-FakeAudio", 1, 1),
}
_FAVC_COLUMNS = 10  # source, target1, target2, method, category, type, race, gender, file, path

# Celeb-DF folder -> label; the test list uses the opposite convention (1 = real).
_CELEBDF_FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
_CELEBDF_REAL = re.compile(r"^(id\d+)_\d+$")
_CELEBDF_SYNTH = re.compile(r"^(id\d+)_(id\d+)_\d+$")


class AdapterError(ValueError):
    """A dataset root that cannot be turned into a manifest; the message names the file."""


# --------------------------------------------------------------------------- entry point


def build_manifest(cfg: CorpusConfig, root: Path, base: Path) -> pd.DataFrame:
    """Build the manifest of the corpus at ``root`` for ``cfg.source``.

    Args:
        cfg: the ``corpus`` section (source, split ratios, seed, FF++ compression).
        root: the dataset root (already resolved by the caller; ``cfg.root`` is not read).
        base: the directory the manifest will be written in; paths are relative to it.

    Raises:
        AdapterError: missing or malformed metadata, unknown labels, or an empty layout.
    """
    root, base = Path(root), Path(base)
    ratios, seed = cfg.split_ratios, cfg.seed
    builders: dict[str, Callable[[], pd.DataFrame]] = {
        "synthetic": lambda: _from_contract_csv(root / "manifest.csv", base),
        "csv": lambda: from_csv(root, base, ratios, seed),
        "folder": lambda: from_folders(root, base, ratios, seed),
        "faceforensics": lambda: from_faceforensics(root, base, cfg.ff_compression, ratios, seed),
        "dfdc": lambda: from_dfdc(root, base, ratios, seed),
        "fakeavceleb": lambda: from_fakeavceleb(root, base, ratios, seed),
        "celebdf": lambda: from_celebdf(root, base, ratios, seed),
    }
    if cfg.source not in builders:
        raise AdapterError(f"unknown corpus source {cfg.source!r}; known: {sorted(builders)}")
    return builders[cfg.source]()


def _from_contract_csv(path: Path, base: Path) -> pd.DataFrame:
    """A manifest already in contract form (the synthetic corpus), re-based onto ``base``."""
    try:
        df = manifest.read(path)
    except manifest.ManifestError as exc:
        raise AdapterError(str(exc)) from None
    df["path"] = [manifest.relative_to(p, base) for p in manifest.resolve_paths(df, path.parent)]
    return manifest.normalize(df)


# --------------------------------------------------------------------------- generic layouts


def from_csv(
    root_or_csv: Path, base: Path, ratios: Ratios | None = None, seed: int = 0
) -> pd.DataFrame:
    """Read a user CSV with at least ``video_id,label,path`` (and usually ``split``).

    ``path`` is absolute or relative to the CSV's directory. Optional columns and their
    defaults: ``method`` (``real`` for reals, ``unknown`` for fakes), ``identity`` (the
    video id), ``source_identity``, ``video_label``/``audio_label`` (0 for reals, unknown
    for fakes) and ``split``; rows without a split get identity-disjoint splits.

    Args:
        root_or_csv: the CSV itself, or a directory holding ``manifest.csv`` or one ``*.csv``.
        base: the directory the manifest will be written in.
        ratios: split ratios for rows without a split.
        seed: seed of the group assignment.
    """
    path = _find_csv(Path(root_or_csv))
    try:
        # Everything as text so labels like "1" and ids like "007" survive unchanged.
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("video_id", "label", "path") if c not in table.columns]
    if missing:
        raise AdapterError(f"{path}: missing required column(s) {', '.join(missing)}")
    records = []
    for line, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path}:{line}"
        video_id = _text(row["video_id"])
        rel = _text(row["path"])
        if video_id is None or rel is None:
            raise AdapterError(f"{where}: empty 'video_id' or 'path'")
        records.append(_labelled_record(row, video_id, path.parent / rel, base, where))
    return _finish(records, ratios, seed, what="rows", where=path)


def _find_csv(root_or_csv: Path) -> Path:
    if root_or_csv.is_file():
        return root_or_csv
    if not root_or_csv.is_dir():
        raise AdapterError(f"CSV manifest {root_or_csv} does not exist")
    if (root_or_csv / "manifest.csv").is_file():
        return root_or_csv / "manifest.csv"
    found = sorted(root_or_csv.glob("*.csv"))
    if len(found) != 1:
        raise AdapterError(
            f"{root_or_csv}: expected manifest.csv or exactly one *.csv, found {len(found)}"
        )
    return found[0]


def from_folders(
    root: Path, base: Path, ratios: Ratios | None = None, seed: int = 0
) -> pd.DataFrame:
    """One clip per directory: ``<dir>/video.mp4`` described by ``<dir>/meta.json``.

    ``meta.json`` holds ``{"label": 0|1}`` and optionally ``split``, ``method``,
    ``identity``, ``source_identity``, ``video_label`` and ``audio_label``. The video id is
    the directory's path relative to ``root`` with ``/`` replaced by ``__``. A directory
    with a ``video.mp4`` but no ``meta.json`` is unlabelled and skipped; one with a
    ``meta.json`` but no video still yields a row (validation reports the missing file).

    Args:
        root: the directory searched recursively.
        base: the directory the manifest will be written in.
        ratios: split ratios for clips without a ``split``.
        seed: seed of the group assignment.
    """
    root = _require_dir(root, "folder corpus")
    records = []
    for meta_path in sorted(root.rglob("meta.json")):
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise AdapterError(f"{meta_path}: expected a JSON object with a 'label'")
        rel = meta_path.parent.relative_to(root).as_posix()
        video_id = root.name if rel == "." else rel.replace("/", "__")
        video = meta_path.parent / "video.mp4"
        records.append(_labelled_record(meta, video_id, video, base, str(meta_path)))
    return _finish(records, ratios, seed, what="meta.json files", where=root)


def _labelled_record(
    fields: Mapping[str, object], video_id: str, path: Path, base: Path, where: str
) -> Record:
    """A row from user-written fields (CSV row or ``meta.json``), with contract defaults.

    Defaults: method ``real`` for reals and ``unknown`` for fakes; identity = video id;
    ``video_label``/``audio_label`` 0 for reals and unknown (NA) for fakes.
    """
    label = _binary(fields.get("label"), f"{where}: 'label'")
    split = _text(fields.get("split"))
    if split is not None and split not in SPLITS:
        raise AdapterError(f"{where}: 'split' must be one of {list(SPLITS)}, got {split!r}")
    video_label = _binary(fields.get("video_label"), f"{where}: 'video_label'", optional=True)
    audio_label = _binary(fields.get("audio_label"), f"{where}: 'audio_label'", optional=True)
    if label == 0:
        if 1 in (video_label, audio_label):
            raise AdapterError(f"{where}: a real clip (label 0) has a fake modality label")
        video_label = audio_label = 0
    elif video_label == 0 and audio_label == 0:
        raise AdapterError(f"{where}: a fake clip (label 1) has both modality labels 0")
    default_method = REAL_METHOD if label == 0 else UNKNOWN_METHOD
    return _record(
        video_id,
        path,
        base,
        label=label,
        split=split,
        method=_text(fields.get("method")) or default_method,
        identity=_text(fields.get("identity")) or video_id,
        source_identity=_text(fields.get("source_identity")),
        video_label=video_label,
        audio_label=audio_label,
    )


# --------------------------------------------------------------------------- FaceForensics++


def from_faceforensics(
    root: Path,
    base: Path,
    compression: str = "c23",
    ratios: Ratios | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """FaceForensics++ with DeepFakeDetection (DFD) and FaceShifter, one compression level.

    Reads ``original_sequences/{youtube,actors}/<c>/videos/*.mp4`` (label 0, method
    ``real``) and ``manipulated_sequences/<Method>/<c>/videos/*.mp4`` (label 1, method =
    folder name lowercased); ``masks`` folders are not videos of the corpus and are skipped.
    A fake ``<t>_<s>`` has identity ``t`` (target) and source_identity ``s``; DFD names
    ``<t>_<s>__<scene>__<id>`` and ``<actor>__<scene>`` parse the same way. FF++ has no
    audio, so ``video_label = label`` and ``audio_label = 0``.

    Splits come from ``splits/{train,val,test}.json`` (pairs ``[a, b]``: reals ``a``, ``b``
    and fakes ``a_b``, ``b_a``) when present. Everything they do not cover (DFD, fakes of
    pairs not listed, or the whole corpus without split files) is assigned by identity
    group. Because DFD actors are swapped with one another, their group is usually a
    single one and lands in one split as a whole (a warning says so).

    Args:
        root: the FaceForensics++ download root.
        base: the directory the manifest will be written in.
        compression: ``raw`` (alias ``c0``), ``c23`` or ``c40``.
        ratios: split ratios for videos not covered by the split files.
        seed: seed of the group assignment.
    """
    root = _require_dir(root, "FaceForensics++ root")
    if compression not in FF_COMPRESSIONS:
        raise AdapterError(
            f"unknown FaceForensics++ compression {compression!r}; known: {list(FF_COMPRESSIONS)}"
        )
    official = _ff_official_splits(root / "splits")
    records = []
    for kind, label in (("original_sequences", 0), ("manipulated_sequences", 1)):
        for sequence in sorted(p for p in (root / kind).glob("*") if p.is_dir()):
            videos = _ff_videos_dir(sequence, compression)
            if videos is None:
                continue
            method = REAL_METHOD if label == 0 else sequence.name.lower()
            for video in sorted(videos.glob("*.mp4")):
                identity, source = _ff_people(video.stem)
                records.append(
                    _record(
                        f"{sequence.name.lower()}__{video.stem}",
                        video,
                        base,
                        label=label,
                        split=official.get(video.stem),
                        method=method,
                        identity=identity,
                        source_identity=source,
                        video_label=label,
                        audio_label=0,
                    )
                )
    return _finish(records, ratios, seed, what=f"{compression} videos", where=root / "*_sequences")


def _ff_videos_dir(sequence: Path, compression: str) -> Path | None:
    for name in _FF_ALIASES.get(compression, (compression,)):
        if (sequence / name / "videos").is_dir():
            return sequence / name / "videos"
    return None


def _ff_people(stem: str) -> tuple[str, str | None]:
    """(target, source) of an FF++/DFD video name; source is None for originals."""
    people = stem.split("__")[0].split("_")
    return people[0], (people[1] if len(people) > 1 else None)


def _ff_official_splits(folder: Path) -> dict[str, str]:
    """Map of original id and fake name (``a_b``) to its official split; empty if absent."""
    files = {split: folder / f"{split}.json" for split in SPLITS}
    present = [split for split, path in files.items() if path.is_file()]
    if not present:
        return {}
    if len(present) != len(files):
        absent = [str(p) for s, p in files.items() if s not in present]
        raise AdapterError(f"incomplete FaceForensics++ splits: missing {', '.join(absent)}")
    out: dict[str, str] = {}
    for split, path in files.items():
        pairs = _read_json(path)
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            raise AdapterError(f'{path}: expected a JSON list of ["target", "source"] pairs')
        for a, b in pairs:
            for key in (a, b, f"{a}_{b}", f"{b}_{a}"):
                if out.setdefault(key, split) != split:
                    raise AdapterError(f"{path}: '{key}' is also listed in {out[key]}.json")
    return out


# --------------------------------------------------------------------------- DFDC


def from_dfdc(root: Path, base: Path, ratios: Ratios | None = None, seed: int = 0) -> pd.DataFrame:
    """DFDC (Kaggle): ``metadata.json`` in ``root`` and in its sub-folders.

    Covers ``dfdc_train_part_<N>/`` and ``train_sample_videos/``. Entries are
    ``{"x.mp4": {"label": "FAKE"|"REAL", "original": "y.mp4"|null, ...}}``. DFDC has no
    method or per-modality label and has audio, so fakes get method ``dfdc_fake`` and
    unknown (NA) ``video_label``/``audio_label``. No actor id exists: a fake is grouped with
    its ``original`` (identity = its stem), a real with itself. DFDC's ``split`` is always
    ``train``, so it is ignored and splits are assigned by group.

    Args:
        root: the directory holding the parts (or a part itself).
        base: the directory the manifest will be written in.
        ratios: split ratios.
        seed: seed of the group assignment.
    """
    root = _require_dir(root, "DFDC root")
    metadata_files = [p for p in [root / "metadata.json"] if p.is_file()]
    metadata_files += sorted(root.glob("*/metadata.json"))
    if not metadata_files:
        raise AdapterError(f"no DFDC metadata.json in {root} or its sub-folders")
    records = []
    for meta_path in metadata_files:
        entries = _read_json(meta_path)
        if not isinstance(entries, dict):
            raise AdapterError(f"{meta_path}: expected a JSON object of video name -> entry")
        for name, entry in sorted(entries.items()):
            where = f"{meta_path}: {name!r}"
            if not isinstance(entry, dict):
                raise AdapterError(f"{where}: entry must be an object with a 'label'")
            raw_label = entry.get("label")
            label = {"REAL": 0, "FAKE": 1}.get(str(raw_label).upper())
            if label is None:
                raise AdapterError(f"{where}: label must be FAKE or REAL, got {raw_label!r}")
            original = _text(entry.get("original"))
            stem = Path(name).stem
            records.append(
                _record(
                    stem,
                    meta_path.parent / name,
                    base,
                    label=label,
                    split=None,
                    method=REAL_METHOD if label == 0 else DFDC_FAKE_METHOD,
                    identity=Path(original).stem if label == 1 and original else stem,
                    source_identity=None,
                    video_label=0 if label == 0 else None,
                    audio_label=0 if label == 0 else None,
                )
            )
    return _finish(records, ratios, seed, what="videos", where=root)


# --------------------------------------------------------------------------- FakeAVCeleb


def from_fakeavceleb(
    root: Path, base: Path, ratios: Ratios | None = None, seed: int = 0
) -> pd.DataFrame:
    """FakeAVCeleb v1.2 from its ``meta_data.csv``.

    Columns are read by position (``source, target1, target2, method, category, type, race,
    gender, filename, path``) because some copies shift the header names. Category A/B/C/D
    gives ``(video_label, audio_label)`` = (0,0)/(0,1)/(1,0)/(1,1); ``label`` is 1 unless A.
    ``identity`` is ``source``; donors (``target1``/``target2``) are noisy and linking them
    would leave ~10 groups, so they are not recorded and splits are grouped by source only.

    Args:
        root: the ``FakeAVCeleb_v1.2`` folder or its parent.
        base: the directory the manifest will be written in.
        ratios: split ratios (FakeAVCeleb has no official split).
        seed: seed of the group assignment.
    """
    root = _require_dir(root, "FakeAVCeleb root")
    candidates = [root / "meta_data.csv", *sorted(root.glob("*/meta_data.csv"))]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise AdapterError(f"no meta_data.csv in {root} or its sub-folders")
    csv_path = found[0]
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AdapterError(f"{csv_path}: not a readable CSV ({exc})") from None
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{csv_path}:{line}"
        if len(row) < _FAVC_COLUMNS:
            raise AdapterError(f"{where}: expected {_FAVC_COLUMNS} columns, got {len(row)}")
        source, _, _, method, category, _, _, _, filename, folder = (
            cell.strip() for cell in row[:_FAVC_COLUMNS]
        )
        if category.upper() not in FAKEAVCELEB_CATEGORIES:
            raise AdapterError(f"{where}: unknown category {category!r}; expected A, B, C or D")
        _, video_label, audio_label = FAKEAVCELEB_CATEGORIES[category.upper()]
        label = max(video_label, audio_label)
        records.append(
            _record(
                f"{category.upper()}__{source}__{Path(filename).stem}",
                _fakeavceleb_file(csv_path.parent, folder, filename),
                base,
                label=label,
                split=None,
                method=REAL_METHOD if label == 0 else (method.lower() or UNKNOWN_METHOD),
                identity=source,
                source_identity=None,
                video_label=video_label,
                audio_label=audio_label,
            )
        )
    return _finish(records, ratios, seed, what="rows", where=csv_path)


def _fakeavceleb_file(dataset_dir: Path, folder: str, filename: str) -> Path:
    """Resolve the csv's ``path`` + ``filename`` against the folder holding the csv.

    ``path`` starts with ``FakeAVCeleb_v1.2/``; anchoring on the category folder instead
    keeps working when the dataset folder was renamed or the prefix is absent.
    """
    parts = list(PurePosixPath(folder.replace("\\", "/")).parts)
    category_dirs = {name for name, _, _ in FAKEAVCELEB_CATEGORIES.values()}
    start = next((i for i, part in enumerate(parts) if part in category_dirs), 0)
    parts = parts[start:]
    if not parts or parts[-1] != filename:  # some copies put the file in 'path' already
        parts.append(filename)
    return dataset_dir.joinpath(*parts)


# --------------------------------------------------------------------------- Celeb-DF


def from_celebdf(
    root: Path, base: Path, ratios: Ratios | None = None, seed: int = 0
) -> pd.DataFrame:
    """Celeb-DF (v2) with its official test list.

    ``Celeb-real/idN_XXXX.mp4`` and ``YouTube-real/XXXXX.mp4`` are real (each YouTube clip
    is its own identity); ``Celeb-synthesis/idT_idD_XXXX.mp4`` is fake with identity ``idT``
    and source_identity ``idD``. Fakes are visual-only: ``audio_label = 0``.

    ``List_of_testing_videos.txt`` lines read ``<1|0> <folder>/<file>`` where **1 = real and
    0 = fake**, the reverse of the manifest. Listed videos are ``test`` (a listed video
    missing on disk still yields a row); the rest is train, from which ``val`` is carved by
    target identity with the train:val ratio.

    The official test set is **not** identity-disjoint (it shares 56 of 59 subjects with
    train). It is kept as published, not silently re-split, and the frame's
    ``attrs[KNOWN_LEAK_ATTR]`` says so; validation reports the leak. Since identities leak
    anyway, the val carve groups by target identity only: linking donors would merge the 59
    subjects into a handful of components and make val all-or-nothing.

    Args:
        root: the Celeb-DF folder holding the three video folders and the test list.
        base: the directory the manifest will be written in.
        ratios: only train and val are used, to carve val out of the non-test videos.
        seed: seed of the val carve.
    """
    root = _require_dir(root, "Celeb-DF root")
    test_list = root / "List_of_testing_videos.txt"
    if not test_list.is_file():
        raise AdapterError(f"Celeb-DF test list {test_list} does not exist")
    listed = _celebdf_test_list(test_list)
    on_disk = {
        f"{folder}/{video.name}"
        for folder in _CELEBDF_FOLDERS
        for video in (root / folder).glob("*.mp4")
    }
    records = []
    for rel in sorted(on_disk | listed.keys()):
        where = f"{test_list}: {rel!r}" if rel in listed else str(root / rel)
        folder, name = rel.split("/", 1)
        label = _CELEBDF_FOLDERS.get(folder)
        if label is None:
            raise AdapterError(f"{where}: unknown folder; expected one of {list(_CELEBDF_FOLDERS)}")
        if rel in listed and listed[rel] != label:
            raise AdapterError(f"{where}: listed as label {listed[rel]} but lies in {folder}")
        identity, source = _celebdf_people(folder, Path(name).stem, where)
        records.append(
            _record(
                f"{folder}__{Path(name).stem}",
                root / rel,
                base,
                label=label,
                split="test" if rel in listed else None,
                method=REAL_METHOD if label == 0 else CELEBDF_FAKE_METHOD,
                identity=identity,
                source_identity=source,
                video_label=label,
                audio_label=0,
            )
        )
    r = _ratio_map(ratios)
    carve = {s: r[s] / (r["train"] + r["val"]) for s in ("train", "val")}
    test = [x for x in records if x["split"] == "test"]
    pool = [x for x in records if x["split"] is None]
    records = test + _fill_splits(pool, carve, seed, link_donors=False)
    df = _finish(records, ratios, seed, what="videos", where=root)
    df.attrs[KNOWN_LEAK_ATTR] = (
        "Celeb-DF's official test list shares identities with train; kept as published"
    )
    return df


def _celebdf_test_list(path: Path) -> dict[str, int]:
    """``folder/file -> manifest label`` from the test list (its 1 = real becomes 0)."""
    listed: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in ("0", "1") or "/" not in fields[1]:
            raise AdapterError(f"{path}:{line_no}: expected '<1|0> <folder>/<file>', got {line!r}")
        listed[fields[1]] = 1 - int(fields[0])
    return listed


def _celebdf_people(folder: str, stem: str, where: str) -> tuple[str, str | None]:
    if folder == "YouTube-real":
        return f"youtube_{stem}", None
    pattern = _CELEBDF_SYNTH if folder == "Celeb-synthesis" else _CELEBDF_REAL
    match = pattern.match(stem)
    if match is None:
        raise AdapterError(f"{where}: name does not follow Celeb-DF's {folder} naming")
    groups = match.groups()
    return groups[0], (groups[1] if len(groups) > 1 else None)


# --------------------------------------------------------------------------- shared helpers


def _record(
    video_id: str,
    path: Path,
    base: Path,
    *,
    label: int,
    split: str | None,
    method: str,
    identity: str,
    source_identity: str | None,
    video_label: int | None,
    audio_label: int | None,
) -> Record:
    """One manifest row; every adapter builds rows here so they share one set of keys."""
    return {
        "video_id": video_id,
        "path": manifest.relative_to(path, base),
        "label": label,
        "split": split,
        "method": method,
        "identity": identity,
        "video_label": pd.NA if video_label is None else video_label,
        "audio_label": pd.NA if audio_label is None else audio_label,
        "source_identity": pd.NA if source_identity is None else source_identity,
    }


def _finish(
    records: list[Record], ratios: Ratios | None, seed: int, *, what: str, where: object
) -> pd.DataFrame:
    """Fill missing splits, check ids are unique and build the sorted, normalised frame."""
    if not records:
        raise AdapterError(f"no {what} found in {where}")
    records = _fill_splits(records, _ratio_map(ratios), seed)
    counts = Counter(r["video_id"] for r in records)
    duplicated = sorted(str(v) for v, n in counts.items() if n > 1)
    if duplicated:
        raise AdapterError(f"{where}: duplicate video_id(s) {duplicated[:5]}")
    return manifest.from_records(sorted(records, key=lambda r: str(r["video_id"])))


def _fill_splits(
    records: list[Record], ratios: Mapping[str, float], seed: int, *, link_donors: bool = True
) -> list[Record]:
    """Give rows without a split a leak-free split by identity group; returns the rows kept.

    People (identity, and donors when ``link_donors``) already placed by an official split
    pull the rows that involve them into that split; groups of new people are drawn with
    :func:`manifest.assign_group_splits`. A row that would tie two official splits together
    (e.g. a fake of a train target with a val donor) has no leak-free split and is dropped.
    """
    if all(r["split"] is not None for r in records):
        return records
    official: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["split"] is not None:
            for person in _people(r, link_donors):
                official[person].add(str(r["split"]))

    def splits_of(rows: Iterable[Record]) -> set[str]:
        return {s for r in rows for person in _people(r, link_donors) for s in official[person]}

    pending = [r for r in records if r["split"] is None]
    # Drop direct clashes before grouping, so one bad fake does not condemn its whole group.
    placeable = [r for r in pending if len(splits_of([r])) <= 1]
    group_of = manifest.identity_groups(
        (str(r["identity"]) for r in placeable),
        (r["source_identity"] if link_donors else None for r in placeable),
    )
    members: dict[str, list[Record]] = defaultdict(list)
    for r in placeable:
        members[group_of[str(r["identity"])]].append(r)
    fixed = {g: splits_of(rows) for g, rows in members.items()}
    free = {g: len(rows) for g, rows in members.items() if not fixed[g]}
    _warn_dominant_group(free, ratios)
    drawn = manifest.assign_group_splits(free, ratios, seed)
    for group, rows in members.items():
        if len(fixed[group]) <= 1:
            for r in rows:
                r["split"] = next(iter(fixed[group])) if fixed[group] else drawn[group]
    kept = [r for r in records if r["split"] is not None]
    if len(kept) < len(records):
        dropped = sorted(str(r["video_id"]) for r in records if r["split"] is None)
        _log.warning(
            "dropped %d row(s) that would put one identity in two official splits: %s",
            len(dropped),
            dropped[:5],
        )
    return kept


def _people(record: Record, link_donors: bool) -> list[str]:
    """The identities a row shows: its own, plus its donors (``a|b``) when linked."""
    donors = _text(record["source_identity"]) if link_donors else None
    return [str(record["identity"]), *(d for d in (donors or "").split("|") if d)]


def _warn_dominant_group(sizes: Mapping[str, int], ratios: Mapping[str, float]) -> None:
    """Warn when one group outweighs a whole val/test share: one draw then decides it."""
    total = sum(sizes.values())
    if total == 0:
        return
    group, size = max(sizes.items(), key=lambda kv: kv[1])
    smallest = min(v for v in ratios.values() if v > 0)
    if size > smallest * total:
        _log.warning(
            "identity group %r holds %d of %d rows to split (more than a %.0f%% split); "
            "linked identities leave few groups, so split sizes will be uneven",
            group,
            size,
            total,
            100 * smallest,
        )


def _ratio_map(ratios: Ratios | None) -> dict[str, float]:
    if ratios is None:
        ratios = CorpusConfig().split_ratios
    if isinstance(ratios, SplitRatios):
        return ratios.model_dump()
    return dict(ratios)


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise AdapterError(f"{what} {root} does not exist or is not a directory")
    return root


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not readable JSON ({exc})") from None


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)  # pandas reads an empty CSV cell as NaN
    return isinstance(value, str) and not value.strip()


def _text(value: object) -> str | None:
    return None if _is_missing(value) else str(value).strip()


def _binary(value: object, what: str, *, optional: bool = False) -> int | None:
    """Parse a 0/1 label from JSON (int) or CSV (text); ``None`` when optional and empty."""
    if _is_missing(value):
        if optional:
            return None
        raise AdapterError(f"{what} is missing")
    # bool is an int subclass; true/false is not our label convention, so refuse it.
    if not isinstance(value, bool) and str(value).strip() in ("0", "1"):
        return int(str(value).strip())
    raise AdapterError(f"{what} must be 0 or 1, got {value!r}")
