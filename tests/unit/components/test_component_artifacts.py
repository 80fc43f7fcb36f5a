"""Inside a task: sections to typed config, member artifacts to a models folder, figures to
KFP's own artifact classes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from kfp import dsl

from components import artifacts as a
from veracity.config import ConfigError


def test_sections_arrive_as_json_and_become_the_typed_config() -> None:
    cfg = a.params(extract='{"workers": 1, "usable_statuses": ["ok", "no_audio"]}', register={"model_name": "m"})
    assert cfg.extract.workers == 1 and cfg.extract.usable_statuses == ("ok", "no_audio")
    assert cfg.register_.model_name == "m" and cfg.gate == type(cfg.gate)()  # the rest at defaults


def test_a_bad_section_names_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'extract.wokers'"):
        a.params(extract='{"wokers": 1}')


def test_members_are_named_by_their_model_json_not_their_order(tmp_path: Path) -> None:
    arts = []
    for folder, member in (("x1", "lipsync"), ("x2", "video_specialist")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.json").write_text(json.dumps({"member": member}))
        arts.append(SimpleNamespace(path=str(tmp_path / folder)))
    models = a.members_dir(arts[1:], arts[:1])
    assert sorted(p.name for p in models.iterdir()) == ["lipsync", "video_specialist"]
    assert (models / "lipsync").resolve() == (tmp_path / "x1").resolve()


def test_figures_are_flattened_to_finite_scalars(tmp_path: Path) -> None:
    report = {"test": {"auc": 0.9, "n": 10, "ok": True, "ece": math.nan, "name": "x"}, "seconds": 3}
    assert a.flat_figures(report) == {"test.auc": 0.9, "test.n": 10.0, "seconds": 3.0}
    metrics = dsl.Metrics(name="summary")
    metrics.uri = str(tmp_path / "summary")
    a.log_figures(metrics, report, keep=["test"])
    assert metrics.metadata == {"test.auc": 0.9, "test.n": 10.0}
    # ... and in its file: KFP's local cache skips artifacts that have none.
    assert json.loads((tmp_path / "summary").read_text()) == metrics.metadata


def test_the_benchmark_roc_and_confusion_leave_abstentions_and_reencodes_out(tmp_path: Path) -> None:
    rows = [("clean", 0, "REAL", 0.1), ("clean", 0, "FAKE", 0.8), ("clean", 1, "FAKE", 0.9),
            ("clean", 1, "UNCERTAIN", 0.5), ("clean", 1, "ABSTAIN", None), ("crf35", 0, "FAKE", 0.99)]
    pd.DataFrame(rows, columns=["condition", "label", "verdict", "probability"]).to_csv(tmp_path / "s.csv", index=False)
    roc = dsl.ClassificationMetrics(name="roc")
    roc.uri = str(tmp_path / "roc")
    a.log_benchmark_classification(roc, tmp_path / "s.csv")
    matrix = roc.metadata["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["real", "fake"]
    assert [r["row"] for r in matrix["rows"]] == [[1, 1], [1, 1]]
    points = roc.metadata["confidenceMetrics"]
    assert points[0]["recall"] == 0.0 and points[-1]["recall"] == 1.0
    assert all(math.isfinite(p["confidenceThreshold"]) for p in points)


def test_a_markdown_card_becomes_a_page_with_its_table() -> None:
    page = a.markdown_page("# Card\n\n| a | b |\n|---|---|\n| 1 | <x> |\n", "v1 <draft>")
    assert page.startswith("<!DOCTYPE html>") and "<title>v1 &lt;draft&gt;</title>" in page
    assert "<h1>Card</h1>" in page and "<td>1</td>" in page
