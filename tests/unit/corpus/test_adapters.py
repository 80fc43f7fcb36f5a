"""Dataset adapters: tiny on-disk trees in each layout become the one manifest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from veracity.config import CorpusConfig, SplitRatios
from veracity.corpus import adapters, manifest
from veracity.corpus.adapters import AdapterError

RATIOS = {"train": 0.6, "val": 0.2, "test": 0.2}


# --------------------------------------------------------------------------- helpers


def touch(path: Path) -> Path:
    """An empty placeholder video: adapters never decode files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def by_id(df: pd.DataFrame) -> dict[str, dict]:
    return {row["video_id"]: row for row in df.to_dict("records")}


def assert_groups_disjoint(df: pd.DataFrame, link_donors: bool = True) -> None:
    """No identity group (target linked with donor) appears in two splits."""
    donors = df["source_identity"] if link_donors else [None] * len(df)
    group_of = manifest.identity_groups(df["identity"], donors)
    splits = df.groupby(df["identity"].map(group_of))["split"].nunique()
    assert (splits == 1).all(), splits[splits > 1]


def assert_paths_resolve(df: pd.DataFrame, base: Path, files: list[Path] | None = None) -> None:
    """Relative paths, resolved from ``base``, point at the real files."""
    assert not df["path"].map(lambda p: Path(p).is_absolute()).any()
    resolved = manifest.resolve_paths(df, base)
    if files is None:
        assert resolved.map(lambda p: Path(p).is_file()).all()
    else:
        assert sorted(resolved) == sorted(str(f.resolve()) for f in files)


# --------------------------------------------------------------------------- CSV


def test_csv_keeps_its_splits_and_fills_defaults(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, b = touch(data / "clips" / "a.mp4"), touch(data / "clips" / "b.mp4")
    c = touch(tmp_path / "elsewhere" / "c.mp4")
    (data / "labels.csv").write_text(
        "video_id,label,split,path,method,identity,video_label,audio_label\n"
        "a,0,train,clips/a.mp4,,,,\n"
        "b,1,test,clips/b.mp4,,,,\n"
        f"c,1,val,{c},lipsync,p7,0,1\n"
    )
    base = tmp_path / "out"
    df = adapters.from_csv(data / "labels.csv", base, RATIOS, seed=0)
    rows = by_id(df)
    assert rows["a"]["split"] == "train" and rows["b"]["split"] == "test"
    assert rows["a"]["method"] == "real" and rows["b"]["method"] == "unknown"
    assert rows["c"]["method"] == "lipsync" and rows["c"]["identity"] == "p7"
    assert rows["a"]["identity"] == "a"  # identity defaults to the video id
    assert (rows["a"]["video_label"], rows["a"]["audio_label"]) == (0, 0)
    assert pd.isna(rows["b"]["video_label"]) and pd.isna(rows["b"]["audio_label"])
    assert (rows["c"]["video_label"], rows["c"]["audio_label"]) == (0, 1)
    assert_paths_resolve(df, base, [a, b, c])


def test_csv_directory_and_contract_columns(tmp_path: Path) -> None:
    touch(tmp_path / "v.mp4")
    (tmp_path / "manifest.csv").write_text("video_id,label,split,path\nv,0,val,v.mp4\n")
    df = adapters.from_csv(tmp_path, tmp_path, RATIOS, seed=0)
    assert list(df.columns[: len(manifest.REQUIRED_COLUMNS)]) == list(manifest.REQUIRED_COLUMNS)
    assert df.loc[0, "path"] == "v.mp4" and df.loc[0, "split"] == "val"


def _csv_without_split(path: Path, n_people: int = 12) -> None:
    lines = ["video_id,label,path,identity,source_identity"]
    for i in range(n_people):
        lines.append(f"r{i},0,r{i}.mp4,p{i},")
        # Every fake swaps in the next person's face: p0-p1, p2-p3, ... must stay together.
        donor = i + 1 if i % 2 == 0 else i - 1
        lines.append(f"f{i},1,f{i}.mp4,p{i},p{donor}")
    path.write_text("\n".join(lines) + "\n")


def test_csv_without_split_column_assigns_identity_disjoint_splits(tmp_path: Path) -> None:
    _csv_without_split(tmp_path / "m.csv")
    df = adapters.from_csv(tmp_path / "m.csv", tmp_path, RATIOS, seed=3)
    assert set(df["split"]) == {"train", "val", "test"}
    assert_groups_disjoint(df)
    rows = by_id(df)
    assert rows["r0"]["split"] == rows["r1"]["split"] == rows["f0"]["split"]


def test_csv_split_assignment_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    _csv_without_split(tmp_path / "m.csv", n_people=40)
    first = adapters.from_csv(tmp_path / "m.csv", tmp_path, RATIOS, seed=5)
    again = adapters.from_csv(tmp_path / "m.csv", tmp_path, RATIOS, seed=5)
    pd.testing.assert_frame_equal(first, again)
    others = [adapters.from_csv(tmp_path / "m.csv", tmp_path, RATIOS, seed=s) for s in (6, 7)]
    assert any(not o["split"].equals(first["split"]) for o in others)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("video_id,split,path\nv,train,v.mp4\n", "label"),
        ("video_id,label,split,path\nv,0,train,v.mp4\nw,2,train,w.mp4\n", "m.csv:3"),
        ("video_id,label,split,path\nv,FAKE,train,v.mp4\n", "'label' must be 0 or 1"),
        ("video_id,label,split,path\nv,0,holdout,v.mp4\n", "'split'"),
        ("video_id,label,path,video_label\nv,0,v.mp4,1\n", "real clip"),
        ("video_id,label,path\nv,0,v.mp4\nv,1,w.mp4\n", "duplicate video_id"),
    ],
)
def test_csv_errors_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(AdapterError, match="m.csv") as info:
        adapters.from_csv(tmp_path / "m.csv", tmp_path, RATIOS, seed=0)
    assert expected in str(info.value)


# --------------------------------------------------------------------------- folders


def test_folders_read_meta_json(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    touch(root / "set1" / "clip1" / "video.mp4")
    write_json(
        root / "set1" / "clip1" / "meta.json",
        {
            "label": 1,
            "split": "test",
            "method": "voice",
            "identity": "p1",
            "video_label": 0,
            "audio_label": 1,
        },
    )
    touch(root / "clip2" / "video.mp4")
    write_json(root / "clip2" / "meta.json", {"label": 0, "split": "train"})
    write_json(root / "gone" / "meta.json", {"label": 1, "split": "val"})  # video missing
    touch(root / "unlabelled" / "video.mp4")  # no meta.json: skipped
    base = tmp_path / "out"
    df = adapters.from_folders(root, base, RATIOS, seed=0)
    rows = by_id(df)
    assert set(rows) == {"set1__clip1", "clip2", "gone"}
    assert rows["set1__clip1"]["method"] == "voice" and rows["set1__clip1"]["split"] == "test"
    assert (rows["set1__clip1"]["video_label"], rows["set1__clip1"]["audio_label"]) == (0, 1)
    assert rows["clip2"]["identity"] == "clip2" and rows["clip2"]["method"] == "real"
    resolved = dict(zip(df["video_id"], manifest.resolve_paths(df, base), strict=True))
    assert resolved["clip2"] == str((root / "clip2" / "video.mp4").resolve())
    assert not Path(resolved["gone"]).exists()


def test_folders_without_split_are_identity_disjoint(tmp_path: Path) -> None:
    for i in range(10):
        for kind, label in (("real", 0), ("fake", 1)):
            touch(tmp_path / f"p{i}" / kind / "video.mp4")
            write_json(
                tmp_path / f"p{i}" / kind / "meta.json", {"label": label, "identity": f"p{i}"}
            )
    df = adapters.from_folders(tmp_path, tmp_path, RATIOS, seed=1)
    assert len(df) == 20 and set(df["split"]) == {"train", "val", "test"}
    assert_groups_disjoint(df)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"label": "yes"}'])
def test_folders_malformed_meta_raises_naming_the_file(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "clip" / "meta.json"
    touch(tmp_path / "clip" / "video.mp4")
    bad.write_text(content)
    with pytest.raises(AdapterError, match=str(bad)):
        adapters.from_folders(tmp_path, tmp_path, RATIOS, seed=0)


# --------------------------------------------------------------------------- FaceForensics++


def make_ff(root: Path, folder: str = "c23", splits: bool = True) -> None:
    ids = [f"{i:03d}" for i in range(8)]
    for i in ids:
        touch(root / "original_sequences" / "youtube" / folder / "videos" / f"{i}.mp4")
    fakes = {
        "Deepfakes": ["000_001", "001_000", "002_003", "003_002", "004_005", "005_004"],
        "Face2Face": ["000_001"],
        "FaceShifter": ["004_005"],
        # Not derived from a listed pair: 001_002 links train to val, 000_007 joins 000.
        "FaceSwap": ["001_002", "000_007", "006_007"],
    }
    for method, names in fakes.items():
        for name in names:
            touch(root / "manipulated_sequences" / method / folder / "videos" / f"{name}.mp4")
    touch(root / "manipulated_sequences" / "Deepfakes" / "masks" / "videos" / "000_001.mp4")
    touch(root / "original_sequences" / "youtube" / "c40" / "videos" / "999.mp4")
    for name in ("01__exit_phone_room", "02__walking"):
        touch(root / "original_sequences" / "actors" / folder / "videos" / f"{name}.mp4")
    dfd = root / "manipulated_sequences" / "DeepFakeDetection" / folder / "videos"
    touch(dfd / "01_02__exit_phone_room__ABCDEFGH.mp4")
    if splits:
        write_json(root / "splits" / "train.json", [["000", "001"]])
        write_json(root / "splits" / "val.json", [["002", "003"]])
        write_json(root / "splits" / "test.json", [["004", "005"]])


def test_faceforensics_labels_methods_and_official_splits(tmp_path: Path) -> None:
    root, base = tmp_path / "ff", tmp_path / "out"
    make_ff(root)
    df = adapters.from_faceforensics(root, base, "c23", RATIOS, seed=0)
    rows = by_id(df)
    assert rows["youtube__000"]["label"] == 0 and rows["youtube__000"]["method"] == "real"
    fake = rows["deepfakes__002_003"]
    assert (fake["label"], fake["method"], fake["split"]) == (1, "deepfakes", "val")
    assert (fake["identity"], fake["source_identity"]) == ("002", "003")
    assert rows["face2face__000_001"]["split"] == "train"
    assert rows["faceshifter__004_005"]["split"] == "test"
    assert rows["youtube__005"]["split"] == "test"
    assert set(df["method"]) == {
        "real",
        "deepfakes",
        "face2face",
        "faceshifter",
        "faceswap",
        "deepfakedetection",
    }
    # FF++ has no audio: the visual label is the label, the audio is never fake.
    assert (df["video_label"] == df["label"]).all() and (df["audio_label"] == 0).all()
    # Masks and other compression levels are not part of the c23 corpus.
    assert (df["method"] == "deepfakes").sum() == 6 and "youtube__999" not in rows
    assert_paths_resolve(df, base)


def test_faceforensics_unlisted_fakes_follow_their_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_ff(tmp_path)
    with caplog.at_level(logging.WARNING, logger="veracity.corpus.adapters"):
        rows = by_id(adapters.from_faceforensics(tmp_path, tmp_path, "c23", RATIOS, seed=0))
    # 000_007 links 007 (and, through 006_007, 006) to the train pair 000/001.
    assert rows["faceswap__000_007"]["split"] == "train"
    assert rows["youtube__007"]["split"] == "train"
    assert rows["youtube__006"]["split"] == rows["faceswap__006_007"]["split"] == "train"
    # 001_002 would join train's 001 to val's 002: no split is leak-free, so it is dropped.
    assert "faceswap__001_002" not in rows
    assert "faceswap__001_002" in caplog.text


def test_faceforensics_dfd_is_grouped_by_actor(tmp_path: Path) -> None:
    make_ff(tmp_path)
    rows = by_id(adapters.from_faceforensics(tmp_path, tmp_path, "c23", RATIOS, seed=0))
    fake = rows["deepfakedetection__01_02__exit_phone_room__ABCDEFGH"]
    assert (fake["identity"], fake["source_identity"], fake["label"]) == ("01", "02", 1)
    real = rows["actors__01__exit_phone_room"]
    assert (real["identity"], real["method"], real["label"]) == ("01", "real", 0)
    assert real["split"] == fake["split"] == rows["actors__02__walking"]["split"]


@pytest.mark.parametrize(("on_disk", "asked"), [("c0", "raw"), ("raw", "c0")])
def test_faceforensics_accepts_c0_as_raw(tmp_path: Path, on_disk: str, asked: str) -> None:
    make_ff(tmp_path, folder=on_disk)
    df = adapters.from_faceforensics(tmp_path, tmp_path, asked, RATIOS, seed=0)
    assert "youtube__000" in set(df["video_id"])
    assert df["path"].str.contains(f"/{on_disk}/videos/").all()


def test_faceforensics_without_split_files_is_identity_disjoint(tmp_path: Path) -> None:
    make_ff(tmp_path, splits=False)
    for i in range(8, 30):  # enough pairs for all three splits
        a, b = f"{2 * i:03d}", f"{2 * i + 1:03d}"
        for name in (a, b):
            touch(tmp_path / "original_sequences/youtube/c23/videos" / f"{name}.mp4")
        touch(tmp_path / "manipulated_sequences/Deepfakes/c23/videos" / f"{a}_{b}.mp4")
    df = adapters.from_faceforensics(tmp_path, tmp_path, "c23", RATIOS, seed=2)
    assert set(df["split"]) == {"train", "val", "test"}
    assert "faceswap__001_002" in set(df["video_id"])  # nothing official to conflict with
    assert_groups_disjoint(df)


@pytest.mark.parametrize(
    ("content", "expected"),
    [({"a": 1}, "test.json"), ([["004"]], "test.json"), ([["000", "009"]], "also listed")],
)
def test_faceforensics_bad_split_files_raise(
    tmp_path: Path, content: object, expected: str
) -> None:
    make_ff(tmp_path)
    write_json(tmp_path / "splits" / "test.json", content)
    with pytest.raises(AdapterError, match=expected):
        adapters.from_faceforensics(tmp_path, tmp_path, "c23", RATIOS, seed=0)


def test_faceforensics_incomplete_splits_and_bad_compression_raise(tmp_path: Path) -> None:
    make_ff(tmp_path)
    (tmp_path / "splits" / "val.json").unlink()
    with pytest.raises(AdapterError, match="val.json"):
        adapters.from_faceforensics(tmp_path, tmp_path, "c23", RATIOS, seed=0)
    with pytest.raises(AdapterError, match="c99"):
        adapters.from_faceforensics(tmp_path, tmp_path, "c99", RATIOS, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match="no c23 videos"):
        adapters.from_faceforensics(empty, tmp_path, "c23", RATIOS, seed=0)


# --------------------------------------------------------------------------- DFDC


def make_dfdc(root: Path, n_originals: int = 12) -> None:
    parts = [root / "dfdc_train_part_0", root / "dfdc_train_part_1", root / "train_sample_videos"]
    for i in range(n_originals):
        part = parts[i % len(parts)]
        meta_path = part / "metadata.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta[f"orig{i:02d}.mp4"] = {"label": "REAL", "split": "train", "original": None}
        meta[f"fake{i:02d}.mp4"] = {
            "label": "FAKE",
            "split": "train",
            "original": f"orig{i:02d}.mp4",
        }
        write_json(meta_path, meta)
        touch(part / f"orig{i:02d}.mp4")
        touch(part / f"fake{i:02d}.mp4")
    # A metadata.json directly in root; its video is absent on disk.
    write_json(root / "metadata.json", {"lost.mp4": {"label": "FAKE", "original": "orig00.mp4"}})


def test_dfdc_labels_identities_and_group_splits(tmp_path: Path) -> None:
    root, base = tmp_path / "dfdc", tmp_path / "out"
    make_dfdc(root)
    df = adapters.from_dfdc(root, base, RATIOS, seed=0)
    rows = by_id(df)
    assert len(df) == 25
    assert (rows["orig03"]["label"], rows["orig03"]["method"]) == (0, "real")
    assert (rows["fake03"]["label"], rows["fake03"]["method"]) == (1, "dfdc_fake")
    assert rows["fake03"]["identity"] == "orig03" and rows["orig03"]["identity"] == "orig03"
    assert (rows["orig03"]["video_label"], rows["orig03"]["audio_label"]) == (0, 0)
    assert pd.isna(rows["fake03"]["video_label"]) and pd.isna(rows["fake03"]["audio_label"])
    # DFDC says "train" for everything; splits are ours, by original.
    assert set(df["split"]) == {"train", "val", "test"}
    assert_groups_disjoint(df)
    assert rows["lost"]["split"] == rows["orig00"]["split"]
    resolved = manifest.resolve_paths(df, base)
    assert resolved.map(lambda p: Path(p).is_file()).sum() == 24  # all but lost.mp4


def test_dfdc_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    make_dfdc(tmp_path)
    first = adapters.from_dfdc(tmp_path, tmp_path, RATIOS, seed=9)
    pd.testing.assert_frame_equal(first, adapters.from_dfdc(tmp_path, tmp_path, RATIOS, seed=9))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{broken", "not readable JSON"),
        ('["a.mp4"]', "expected a JSON object"),
        ('{"a.mp4": {"label": "MAYBE"}}', "'a.mp4': label must be FAKE or REAL"),
    ],
)
def test_dfdc_malformed_metadata_raises_naming_the_file(
    tmp_path: Path, content: str, expected: str
) -> None:
    make_dfdc(tmp_path)
    bad = tmp_path / "dfdc_train_part_1" / "metadata.json"
    bad.write_text(content)
    with pytest.raises(AdapterError, match=str(bad)) as info:
        adapters.from_dfdc(tmp_path, tmp_path, RATIOS, seed=0)
    assert expected in str(info.value)


def test_dfdc_without_metadata_raises(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="metadata.json"):
        adapters.from_dfdc(tmp_path, tmp_path, RATIOS, seed=0)


# --------------------------------------------------------------------------- FakeAVCeleb

FAVC_HEADER = "source,target1,target2,method,category,type,race,gender,filename,path"
FAVC_ROWS = {  # category -> (method, type folder, file suffix)
    "A": ("real", "RealVideo-RealAudio", ""),
    "B": ("rtvc", "RealVideo-FakeAudio", "_fake"),
    "C": ("faceswap", "FakeVideo-RealAudio", "_id00999_faceswap"),
    "D": ("fsgan-wav2lip", "FakeVideo-FakeAudio", "_id00999_wavtolip"),
}


def make_fakeavceleb(dataset: Path, header: str = FAVC_HEADER, n_sources: int = 10) -> None:
    lines = [header]
    for i in range(n_sources):
        source = f"id{i:05d}"
        for category, (method, kind, suffix) in FAVC_ROWS.items():
            filename = f"00001{suffix}.mp4"
            folder = f"FakeAVCeleb_v1.2/{kind}/African/men/{source}"
            lines.append(f"{source},-,-,{method},{category},{kind},African,men,{filename},{folder}")
            touch(dataset / kind / "African" / "men" / source / filename)
    (dataset / "meta_data.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("use_parent", [False, True])
def test_fakeavceleb_categories_map_to_modality_labels(tmp_path: Path, use_parent: bool) -> None:
    dataset, base = tmp_path / "FakeAVCeleb_v1.2", tmp_path / "out"
    make_fakeavceleb(dataset)
    df = adapters.from_fakeavceleb(tmp_path if use_parent else dataset, base, RATIOS, seed=0)
    assert len(df) == 40
    expected = {
        "A": (0, 0, 0, "real"),
        "B": (1, 0, 1, "rtvc"),
        "C": (1, 1, 0, "faceswap"),
        "D": (1, 1, 1, "fsgan-wav2lip"),
    }
    for row in df.to_dict("records"):
        category = row["video_id"].split("__")[0]
        got = (row["label"], row["video_label"], row["audio_label"], row["method"])
        assert got == expected[category]
        assert row["identity"] == row["video_id"].split("__")[1]
    assert_paths_resolve(df, base)


def test_fakeavceleb_splits_are_disjoint_by_source(tmp_path: Path) -> None:
    make_fakeavceleb(tmp_path, n_sources=15)
    df = adapters.from_fakeavceleb(tmp_path, tmp_path, RATIOS, seed=4)
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.groupby("identity")["split"].nunique().max() == 1
    pd.testing.assert_frame_equal(df, adapters.from_fakeavceleb(tmp_path, tmp_path, RATIOS, seed=4))


def test_fakeavceleb_parses_columns_by_position(tmp_path: Path) -> None:
    # Some copies name the 9th column 'path' and leave the 10th (the real path) unnamed.
    make_fakeavceleb(
        tmp_path, header="source,target1,target2,method,category,type,race,gender,path,"
    )
    df = adapters.from_fakeavceleb(tmp_path, tmp_path, RATIOS, seed=0)
    assert len(df) == 40
    assert_paths_resolve(df, tmp_path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [("id1,-,-,x,E,t,r,g,f.mp4,p", "unknown category 'E'"), ("id1,-,-,x,A", "expected 10")],
)
def test_fakeavceleb_bad_rows_raise_naming_the_line(
    tmp_path: Path, row: str, expected: str
) -> None:
    (tmp_path / "meta_data.csv").write_text(f"{FAVC_HEADER}\n{row}\n")
    with pytest.raises(AdapterError, match="meta_data.csv:2") as info:
        adapters.from_fakeavceleb(tmp_path, tmp_path, RATIOS, seed=0)
    assert expected in str(info.value)


# --------------------------------------------------------------------------- Celeb-DF


def make_celebdf(root: Path, listing: list[str]) -> None:
    for name in ("id0_0000", "id0_0001", "id1_0000", "id2_0000", "id3_0000", "id4_0000"):
        touch(root / "Celeb-real" / f"{name}.mp4")
    for i in range(6):
        touch(root / "YouTube-real" / f"{i:05d}.mp4")
    for name in ("id0_id1_0000", "id1_id0_0000", "id2_id3_0000", "id3_id2_0000", "id4_id2_0000"):
        touch(root / "Celeb-synthesis" / f"{name}.mp4")
    (root / "List_of_testing_videos.txt").write_text("\n".join(listing) + "\n")


CELEBDF_LIST = [
    "1 YouTube-real/00000.mp4",
    "1 Celeb-real/id0_0000.mp4",
    "0 Celeb-synthesis/id0_id1_0000.mp4",
    "1 YouTube-real/00099.mp4",  # listed but not on disk
]


def test_celebdf_test_list_uses_the_inverted_label_convention(tmp_path: Path) -> None:
    root, base = tmp_path / "Celeb-DF-v2", tmp_path / "out"
    make_celebdf(root, CELEBDF_LIST)
    rows = by_id(adapters.from_celebdf(root, base, RATIOS, seed=0))
    # In the list 1 means real and 0 fake; in the manifest 0 is real and 1 fake.
    assert rows["YouTube-real__00000"]["label"] == 0
    assert rows["Celeb-real__id0_0000"]["label"] == 0
    assert rows["Celeb-synthesis__id0_id1_0000"]["label"] == 1
    missing = rows["YouTube-real__00099"]
    assert (missing["label"], missing["split"]) == (0, "test")
    listed = {"YouTube-real__00000", "Celeb-real__id0_0000", "Celeb-synthesis__id0_id1_0000"}
    assert {v for v, r in rows.items() if r["split"] == "test"} == listed | {"YouTube-real__00099"}


def test_celebdf_identities_val_carve_and_known_leak(tmp_path: Path) -> None:
    make_celebdf(tmp_path, CELEBDF_LIST)
    df = adapters.from_celebdf(tmp_path, tmp_path, RATIOS, seed=0)
    rows = by_id(df)
    synth = rows["Celeb-synthesis__id2_id3_0000"]
    assert (synth["identity"], synth["source_identity"], synth["method"]) == (
        "id2",
        "id3",
        "celebdf_fake",
    )
    assert (synth["video_label"], synth["audio_label"]) == (1, 0)
    assert rows["YouTube-real__00003"]["identity"] == "youtube_00003"
    rest = df[df["split"] != "test"]
    assert set(rest["split"]) == {"train", "val"}
    assert_groups_disjoint(rest, link_donors=False)
    # The official test set shares id0 with train: kept as published, and flagged.
    assert df.loc[df["identity"] == "id0", "split"].nunique() == 2
    assert adapters.KNOWN_LEAK_ATTR in df.attrs
    assert_paths_resolve(rest, tmp_path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1 Celeb-synthesis/id0_id1_0000.mp4", "listed as label 0"),
        ("real YouTube-real/00000.mp4", "List_of_testing_videos.txt:1"),
        ("0 Other/x.mp4", "unknown folder"),
    ],
)
def test_celebdf_bad_test_list_raises(tmp_path: Path, line: str, expected: str) -> None:
    make_celebdf(tmp_path, [line])
    with pytest.raises(AdapterError, match="List_of_testing_videos.txt") as info:
        adapters.from_celebdf(tmp_path, tmp_path, RATIOS, seed=0)
    assert expected in str(info.value)


def test_celebdf_requires_the_test_list(tmp_path: Path) -> None:
    make_celebdf(tmp_path, [])
    (tmp_path / "List_of_testing_videos.txt").unlink()
    with pytest.raises(AdapterError, match="List_of_testing_videos.txt"):
        adapters.from_celebdf(tmp_path, tmp_path, RATIOS, seed=0)


# --------------------------------------------------------------------------- build_manifest


def test_build_manifest_rebases_the_synthetic_manifest(tmp_path: Path) -> None:
    root, base = tmp_path / "raw", tmp_path / "processed" / "corpus"
    video = touch(root / "videos" / "a.mp4")
    manifest.write(
        manifest.from_records(
            [
                {
                    "video_id": "a",
                    "path": "videos/a.mp4",
                    "label": 0,
                    "split": "train",
                    "method": "real",
                    "identity": "p0",
                    "video_label": 0,
                    "audio_label": 0,
                }
            ]
        ),
        root / "manifest.csv",
    )
    df = adapters.build_manifest(CorpusConfig(source="synthetic"), root, base)
    assert df.loc[0, "path"] == "../../raw/videos/a.mp4"
    assert_paths_resolve(df, base, [video])


def test_build_manifest_dispatches_with_config_values(tmp_path: Path) -> None:
    make_dfdc(tmp_path)
    cfg = CorpusConfig(
        source="dfdc", seed=11, split_ratios=SplitRatios(train=0.5, val=0.25, test=0.25)
    )
    expected = adapters.from_dfdc(tmp_path, tmp_path, cfg.split_ratios, seed=11)
    pd.testing.assert_frame_equal(adapters.build_manifest(cfg, tmp_path, tmp_path), expected)
    make_ff(tmp_path / "ff", folder="c40")
    ff = adapters.build_manifest(
        CorpusConfig(source="faceforensics", ff_compression="c40"), tmp_path / "ff", tmp_path
    )
    assert "youtube__999" in set(ff["video_id"])  # the c40 folder was read


def test_build_manifest_missing_synthetic_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="manifest.csv"):
        adapters.build_manifest(CorpusConfig(source="synthetic"), tmp_path, tmp_path)
