"""The manifest expectation suite (Great Expectations) and the validate stage function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from veracity.config import ValidateConfig
from veracity.corpus import manifest as mf
from veracity.validation import (
    SuiteReport,
    ValidationFailed,
    manifest_suite,
    run_suite,
    validate_manifest,
)

# GX must never phone home or write outside the output dir while tests run.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Bounds sized to the 12-clip manifest below: 6 real, 3 faceswap, 3 lipsync, 4 per split.
CFG = ValidateConfig(
    min_clips=12, min_fake_ratio=0.3, max_fake_ratio=0.7, min_per_method=3, min_per_split=3
)


def _row(vid, split, identity, method, source=None, video_label=None, audio_label=None):
    label = 0 if method == "real" else 1
    return {
        "video_id": vid,
        "path": f"videos/{vid}.mp4",
        "label": label,
        "split": split,
        "method": method,
        "identity": identity,
        "video_label": label if video_label is None else video_label,
        "audio_label": label if audio_label is None else audio_label,
        "source_identity": source,
    }


def good_rows() -> list[dict]:
    """Two identities per split; each fake's donor is the other identity of its split."""
    rows = []
    for split, (a, b) in {
        "train": ("id1", "id2"),
        "val": ("id3", "id4"),
        "test": ("id5", "id6"),
    }.items():
        rows += [
            _row(f"{split}_real_{a}", split, a, "real"),
            _row(f"{split}_real_{b}", split, b, "real"),
            _row(f"{split}_fs_{a}", split, a, "faceswap", source=b),
            _row(f"{split}_ls_{b}", split, b, "lipsync"),
        ]
    # A DFDC-like fake whose modality labels are unknown must still pass.
    rows[-1]["video_label"] = rows[-1]["audio_label"] = pd.NA
    return rows


def validate(
    tmp_path: Path, rows: list[dict], cfg: ValidateConfig = CFG, skip_files=()
) -> SuiteReport:
    """Write placeholder videos and the manifest, then run the stage function."""
    corpus = tmp_path / "corpus"
    for r in rows:
        if r["video_id"] not in skip_files:
            f = corpus / r["path"]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"\x00")
    manifest = mf.write(mf.from_records(rows), corpus / "manifest.csv")
    return validate_manifest(cfg, manifest, tmp_path / "out")


def failed(report: SuiteReport, expectation_type: str, column: str | None = None):
    hits = [
        r
        for r in report.failed
        if r.expectation_type == expectation_type and (column is None or r.column == column)
    ]
    assert hits, f"expected {expectation_type}({column}) to fail; summary:\n{report.summary()}"
    return hits[0]


def test_good_manifest_passes(tmp_path):
    report = validate(tmp_path, good_rows())
    assert report.success, report.summary()
    assert report.error is None
    assert report.n_rows == 12
    assert report.summary().startswith("manifest: PASSED")
    # Every check ran as a GX expectation, file and leak checks included.
    checked = {(r.expectation_type, r.column) for r in report.results}
    assert ("expect_column_values_to_be_in_set", "_file_exists") in checked
    assert ("expect_column_values_to_be_in_set", "_identity_n_splits") in checked
    assert len(report.results) == len(manifest_suite(CFG, tmp_path).expectations)
    report.raise_for_failure()  # no exception


def test_identity_in_two_splits_fails_naming_its_clips(tmp_path):
    rows = good_rows()
    # id1 (train) also appears in test.
    rows[8]["identity"] = "id1"  # test_real_id5
    report = validate(tmp_path, rows)
    assert not report.success
    res = failed(report, "expect_column_values_to_be_in_set", "_identity_n_splits")
    # The whole group leaks: id1's clips, the test clip, and id2 (linked as id1's donor).
    assert {"train_real_id1", "train_fs_id1", "train_real_id2", "test_real_id5"} <= set(
        res.unexpected_ids
    )
    assert "val_real_id3" not in res.unexpected_ids
    assert set(res.context["split"]) == {"train", "test"}
    text = report.summary()
    assert "_identity_n_splits" in text and "test_real_id5" in text and "identity leak" in text


def test_donor_in_another_split_leaks_through_source_identity(tmp_path):
    rows = good_rows()
    rows[10]["source_identity"] = "id3"  # test_fs_id5 made with a val identity's face
    report = validate(tmp_path, rows)
    res = failed(report, "expect_column_values_to_be_in_set", "_identity_n_splits")
    assert "test_fs_id5" in res.unexpected_ids and "val_real_id3" in res.unexpected_ids
    assert "train_real_id1" not in res.unexpected_ids
    # Without the donor link the same identities are disjoint: the link is what leaks.
    rows[10]["source_identity"] = None
    assert validate(tmp_path / "nolink", rows).success


def test_missing_file_fails_naming_the_clip(tmp_path):
    report = validate(tmp_path, good_rows(), skip_files={"val_ls_id4"})
    res = failed(report, "expect_column_values_to_be_in_set", "_file_exists")
    assert res.unexpected_ids == ["val_ls_id4"]
    assert (
        "FAILED expect_column_values_to_be_in_set(_file_exists): 1 rows: val_ls_id4 "
        "(file does not exist)" in report.summary()
    )


def test_duplicate_video_id_fails(tmp_path):
    rows = good_rows()
    rows[1]["video_id"] = rows[0]["video_id"]
    rows[1]["path"] = "videos/other.mp4"
    report = validate(tmp_path, rows)
    res = failed(report, "expect_column_values_to_be_unique", "video_id")
    assert res.unexpected_ids == ["train_real_id1", "train_real_id1"]


def test_label_outside_zero_one_fails(tmp_path):
    rows = good_rows()
    rows[2]["label"] = 2
    report = validate(tmp_path, rows)
    res = failed(report, "expect_column_values_to_be_in_set", "label")
    assert res.unexpected_ids == ["train_fs_id1"] and res.unexpected_values == [2]


def test_modality_label_outside_zero_one_fails(tmp_path):
    rows = good_rows()
    rows[3]["audio_label"] = 3
    report = validate(tmp_path, rows)
    assert failed(report, "expect_column_values_to_be_in_set", "audio_label").unexpected_ids == [
        "train_ls_id2"
    ]


def test_fake_with_method_real_is_mislabelled(tmp_path):
    rows = good_rows()
    rows[0]["label"] = 1  # train_real_id1 says fake but its method is 'real'
    report = validate(tmp_path, rows)
    res = failed(report, "expect_column_values_to_be_in_set", "_method_consistent")
    assert res.unexpected_ids == ["train_real_id1"]
    assert "mislabelled" in report.summary()


def test_method_count_below_bound_fails_naming_the_method(tmp_path):
    rows = [r for r in good_rows() if r["video_id"] != "val_ls_id4"]  # lipsync: 3 -> 2
    report = validate(tmp_path, rows, ValidateConfig(**{**CFG.model_dump(), "min_clips": 11}))
    res = failed(report, "expect_column_values_to_be_between", "_method_count")
    assert res.context["method"] == ["lipsync"]
    assert set(res.unexpected_ids) == {"train_ls_id2", "test_ls_id6"}
    assert "method: lipsync" in report.summary()


def test_method_count_above_bound_fails(tmp_path):
    cfg = ValidateConfig(**{**CFG.model_dump(), "max_per_method": 5})
    res = failed(
        validate(tmp_path, good_rows(), cfg), "expect_column_values_to_be_between", "_method_count"
    )
    assert res.context["method"] == ["real"] and res.unexpected_count == 6


def test_class_balance_out_of_bounds_fails(tmp_path):
    cfg = ValidateConfig(**{**CFG.model_dump(), "min_fake_ratio": 0.6})
    report = validate(tmp_path, good_rows(), cfg)
    res = failed(report, "expect_column_mean_to_be_between", "label")
    assert res.observed_value == pytest.approx(0.5)
    assert "fake share" in report.summary()


def test_missing_required_split_fails(tmp_path):
    rows = [{**r, "split": "train"} if r["split"] == "val" else r for r in good_rows()]
    report = validate(tmp_path, rows)
    res = failed(report, "expect_column_distinct_values_to_contain_set", "split")
    assert res.details["missing_list"] == ["val"]
    assert "every required split is present" in report.summary()


def test_split_below_min_clips_fails_naming_the_split(tmp_path):
    cfg = ValidateConfig(**{**CFG.model_dump(), "min_per_split": 5})
    res = failed(
        validate(tmp_path, good_rows(), cfg), "expect_column_values_to_be_between", "_split_count"
    )
    assert set(res.context["split"]) == {"train", "val", "test"}


def test_null_method_fails_once_not_also_as_a_count(tmp_path):
    rows = good_rows()
    rows[5]["method"] = None  # val_real_id4
    report = validate(tmp_path, rows)
    assert failed(report, "expect_column_values_to_not_be_null", "method").unexpected_ids == [
        "val_real_id4"
    ]
    assert [r.label for r in report.failed] == ["expect_column_values_to_not_be_null(method)"]


def test_switches_drop_file_and_leak_checks(tmp_path):
    rows = good_rows()
    rows[8]["identity"] = "id1"
    cfg = ValidateConfig(**{**CFG.model_dump(), "identity_disjoint": False, "check_files": False})
    report = validate(tmp_path, rows, cfg, skip_files={"val_ls_id4"})
    assert report.success, report.summary()
    assert not any(r.column in {"_file_exists", "_identity_n_splits"} for r in report.results)


def test_reports_are_written_and_parse(tmp_path):
    rows = good_rows()
    rows[4]["video_id"] = "<script>x</script>"
    rows[4]["path"] = "videos/x.mp4"
    report = validate(tmp_path, rows, skip_files={"<script>x</script>"})
    out = tmp_path / "out"
    gx_json = json.loads((out / "manifest.json").read_text())
    assert gx_json["success"] is False
    assert gx_json["statistics"]["evaluated_expectations"] == len(report.results)
    metrics = json.loads((out / "summary.json").read_text())
    assert metrics == report.metrics()
    assert metrics["success"] is False and metrics["failed"] == 1
    page = (out / "manifest.html").read_text()
    assert "<table>" in page and "_file_exists" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    # Only the three reports: GX wrote no stores or docs into the output dir.
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.html",
        "manifest.json",
        "summary.json",
    ]


def test_unreadable_manifest_gives_failed_report_and_cli_error(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("video_id,path,label\nclip_1,a.mp4,0\n")
    report = validate_manifest(CFG, bad, tmp_path / "out")
    assert not report.success and "missing required column" in report.error
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["success"] is False
    with pytest.raises(ValidationFailed, match="missing required column") as info:
        report.raise_for_failure()
    assert info.value.report is report


def test_run_suite_keeps_suite_order_and_does_not_mutate_input(tmp_path):
    df = mf.from_records(good_rows())
    suite = manifest_suite(CFG.model_copy(update={"check_files": False}), tmp_path)
    before = df.copy()
    report = run_suite(df, suite)
    assert [r.expectation_type for r in report.results] == [
        e.expectation_type for e in suite.expectations
    ]
    assert df.equals(before)
    # A Suite object can be run again (GX ties added expectations to a suite).
    assert run_suite(df, suite).success == report.success


# --------------------------------------------------------------------------- features suite


def _features_index(statuses: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "video_id": [f"clip_{i:03d}" for i in range(len(statuses))],
        "status": statuses,
        "message": ["extracted" if s == "ok" else f"{s}: why" for s in statuses],
        "n_frames": 40, "face_ratio": 1.0, "has_audio": True, "speech_ratio": 0.5, "duration_s": 3.0,
    })


def test_features_suite_knows_the_error_status(tmp_path):
    import typing

    from veracity.config import ExtractStatus, FeatureBounds
    from veracity.validation import validate_features

    index = tmp_path / "index.csv"
    _features_index(["ok"] * 59 + ["error"]).to_csv(index, index=False)
    bounds = FeatureBounds(max_failure_ratio=0.05)
    # The statuses `veracity validate --features` passes: a clip our code failed on is
    # unusable (counted in the failure share), not an "unknown extraction status".
    report = validate_features(bounds, ["ok"], typing.get_args(ExtractStatus), index, tmp_path / "out")
    assert report.success, report.summary()
    _features_index(["ok"] * 59 + ["exploded"]).to_csv(index, index=False)
    report = validate_features(bounds, ["ok"], typing.get_args(ExtractStatus), index, tmp_path / "out2")
    assert failed(report, "expect_column_values_to_be_in_set", "status")
