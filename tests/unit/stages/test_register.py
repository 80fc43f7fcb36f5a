"""Registration: the promotion gate, aliases in a real MLflow registry, the model card, the CLI verb.

Bundles are written by hand (small files + a ``bundle.json`` with their sha256s), and so
are their benchmark figures, so these tests exercise the registry and the gate, not the
detectors. The analyzer that the pyfunc
model loads is replaced by a stand-in that reads ``bundle.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from registrykit import iv, make_benchmark  # tests/ is on sys.path (rootdir conftest)

from veracity.config import GateConfig, RegisterConfig
from veracity.modelcard import NA, model_card
from veracity.stages.register import gate_metrics, promotion_gate, register_bundle
from veracity.tracking import tracking_uri

QUIET = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


# ------------------------------------------------------------------------------ helpers


GATE = GateConfig()  # the defaults: AUC 0.99, method AUC 0.97, ECE 0.03, robustness drop 0.05


def register(path: Path, cfg: RegisterConfig, root: Path, card_out: Path | None = None, **figures: float) -> dict:
    """Register a hand-made bundle at ``path`` with hand-made benchmark figures."""
    bundle = make_bundle(path)
    return register_bundle(bundle, make_benchmark(bundle, **figures), cfg, GATE, root, card_out=card_out)


def make_bundle(path: Path, auc: float = 0.95, ece: float = 0.02, drop: float = 0.03) -> Path:
    """A bundle directory with two members, one ONNX file and correct checksums."""
    files = {
        "members/video_specialist.safetensors": b"video weights " + str(auc).encode(),
        "members/video_specialist.onnx": b"onnx graph",
        "members/audio_specialist.safetensors": b"audio weights",
    }
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    spec = {
        "format": "veracity-bundle",
        "version": 1,
        "contract": {"fps": 8, "face_size": 64, "sample_rate": 16000},
        "members": [
            {"name": "video_specialist", "detector": "video_specialist", "modality": "video",
             "target": "video_label", "weights": "members/video_specialist.safetensors",
             "onnx": "members/video_specialist.onnx", "pooling": {"how": "topk", "k": 4, "beta": 5.0},
             "calibrator": {"method": "temperature", "temperature": 1.3}},
            {"name": "audio_specialist", "detector": "audio_specialist", "modality": "audio",
             "target": "audio_label", "weights": "members/audio_specialist.safetensors", "onnx": None,
             "pooling": {"how": "mean"},
             "calibrator": {"method": "isotonic", "isotonic": {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.4, 1.0]}}},
        ],
        "fusion": {"rule": "stacking", "members": ["video_specialist", "audio_specialist"]},
        "thresholds": {"real_below": 0.2, "fake_at": 0.7, "target_fpr": 0.05, "target_uncertain": 0.1,
                       "val_fpr": 0.04, "val_uncertain": 0.09},
        "metrics": {
            "ensemble": {"test": {"auc": auc, "ece": ece, "brier": 0.03, "fpr": 0.04, "uncertain_rate": 0.1, "n": 88,
                                  "ece_if_calibrated_median": 0.045, "ece_if_calibrated_p90": 0.061},
                         "per_method": {"faceswap": {"auc": 0.981}, "lipsync": {"auc": 0.912}, "voice_clone": 0.933}},
            "members": {"video_specialist": {"test": {"auc": 0.9, "ece_before": 0.1, "ece_after": 0.03}},
                        "audio_specialist": {"test": {"auc": 0.85, "ece_before": 0.2, "ece_after": 0.04}}},
        },
        "robustness": {"gate": {"corruption": "crf", "strength": 35, "clean_auc": auc, "auc": auc - drop, "drop": drop},
                       "worst": {"corruption": "noise", "strength": 0.1, "drop": 0.2}},
        "lineage": {"git_commit": "abc123def", "data_dvc_md5": "d41d8cd98f00b204e9800998ecf8427e",
                    "dvc_lock": {"train@video_specialist": "11112222", "train@audio_specialist": "33334444"},
                    "mlflow_runs": {"video_specialist": "run-video-1", "audio_specialist": "run-audio-1"}},
        "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()},
    }
    (path / "bundle.json").write_text(json.dumps(spec, indent=2))
    return path


class _FakeReport:
    def __init__(self, path: Path, spec: dict):
        # The real Analyzer's contract for a missing file: ABSTAIN/missing, no probability.
        found = Path(path).is_file()
        self.verdict, self.probability, self.reason = ("FAKE", 0.875, None) if found else ("ABSTAIN", None, "missing")
        self._d = {"path": str(path), "verdict": self.verdict, "probability": self.probability,
                   "bundle_auc": spec["metrics"]["ensemble"]["test"]["auc"]}

    def to_dict(self) -> dict:
        return dict(self._d)


class _FakeAnalyzer:
    """Stands in for veracity.analyzer.Analyzer: reads bundle.json, calls everything FAKE."""

    def __init__(self, bundle_dir: Path):
        self.spec = json.loads((Path(bundle_dir) / "bundle.json").read_text())

    def analyze(self, path: Path) -> _FakeReport:
        return _FakeReport(path, self.spec)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One MLflow project root (SQLite store) for the module; each test uses its own model name."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in QUIET.items():
            mp.setenv(k, v)
        # setenv then delenv: the variable is unset now and put back as it was afterwards.
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        fake = types.ModuleType("veracity.analyzer")
        fake.Analyzer = _FakeAnalyzer  # type: ignore[attr-defined]
        mp.setitem(sys.modules, "veracity.analyzer", fake)
        yield root


def _client(root: Path):
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(client, name: str, alias: str) -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


# ------------------------------------------------------------------------ promotion flow


def test_better_bundles_become_champion_and_a_worse_one_stays_challenger(store: Path, tmp_path: Path) -> None:
    cfg = RegisterConfig(model_name="flow")
    a = register(tmp_path / "a", cfg, store, card_out=tmp_path / "card.md", auc=0.992)
    assert (a["version"], a["promoted"], a["champion_version"], a["previous_champion_version"]) == ("1", True, "1", None)
    assert a["champion"] is None and a["candidate"]["auc"] == pytest.approx(iv(0.992))

    b = register(tmp_path / "b", cfg, store, auc=0.996)
    assert (b["version"], b["promoted"], b["champion_version"], b["previous_champion_version"]) == ("2", True, "2", "1")
    assert b["champion"] == pytest.approx({"auc": 0.992})

    # Above gate.min_auc, but its whole interval is below the champion's AUC.
    c = register(tmp_path / "c", cfg, store, auc=0.992, half=0.001)
    assert (c["version"], c["promoted"], c["champion_version"], c["previous_champion_version"]) == ("3", False, "2", "2")
    assert any(r.startswith("PASS auc:") for r in c["reasons"])
    assert any(r.startswith("FAIL auc vs champion") and "0.9930" in r and "0.9960" in r for r in c["reasons"])

    client = _client(store)
    assert _alias(client, "flow", "champion") == "2"
    assert _alias(client, "flow", "challenger") == "3"
    v3 = client.get_model_version("flow", "3")
    assert v3.tags["gate"] == "failed" and "FAIL auc vs champion" in v3.tags["gate_reasons"]
    assert client.get_model_version("flow", "2").tags["gate"] == "passed"
    # The benchmark figures live on the version's run, intervals and per-method AUCs included.
    run = client.get_run(c["run_id"])
    assert run.data.metrics["benchmark_auc"] == pytest.approx(0.992)
    assert run.data.metrics["benchmark_auc_hi"] == pytest.approx(0.993)
    assert run.data.metrics["benchmark_auc.lipsync.video_specialist"] == pytest.approx(0.6)
    assert run.data.metrics["benchmark_reencode_drop_lo"] == pytest.approx(0.009)
    assert run.data.metrics["test_auc"] == pytest.approx(0.95)  # the test split, from the bundle
    assert run.data.tags["stage"] == "register"
    assert "model_card.md" in [f.path for f in client.list_artifacts(c["run_id"])]
    card = (tmp_path / "card.md").read_text()
    assert "version 1" in card and "## Benchmark: people no split has seen" in card
    assert "| lipsync | 0.999 [0.997, 1.001] | 0.6 [0.598, 0.602] |" in card
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_the_champion_alias_loads_the_champion_bundle_as_a_pyfunc(store: Path, tmp_path: Path) -> None:
    import mlflow

    cfg = RegisterConfig(model_name="served")
    for name, auc in (("a", 0.95), ("b", 0.96), ("c", 0.91)):  # c stays challenger (worse than b)
        bundle = make_bundle(tmp_path / name, auc=auc)
        register_bundle(bundle, make_benchmark(bundle, auc=0.99 + auc / 100, half=0.0001), cfg, GATE, store)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video")
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri(store))
    try:
        model = mlflow.pyfunc.load_model("models:/served@champion")
        out = model.predict(pd.DataFrame({"path": [str(clip), str(tmp_path / "missing.mp4")]}))
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert list(out.columns) == ["path", "verdict", "probability", "reason", "report"]
    assert out["verdict"].tolist() == ["FAKE", "ABSTAIN"]
    assert out["probability"].iloc[0] == pytest.approx(0.875) and pd.isna(out["probability"].iloc[1])
    assert out["reason"].iloc[1] == "missing"  # the Analyzer's reason, passed through
    assert json.loads(out["report"].iloc[0])["bundle_auc"] == pytest.approx(0.96)  # version 2's bundle
    assert not list((store / "mlartifacts").rglob("*.pkl"))  # logged as code: nothing to unpickle
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["path"]
    assert sig.outputs.input_names() == ["path", "verdict", "probability", "reason", "report"]


def test_a_poorly_calibrated_candidate_is_not_promoted_despite_better_auc(store: Path, tmp_path: Path) -> None:
    cfg = RegisterConfig(model_name="calib")
    assert register(tmp_path / "a", cfg, store, auc=0.992)["promoted"]
    res = register(tmp_path / "b", cfg, store, auc=0.999, ece=0.05)
    assert not res["promoted"] and res["champion_version"] == "1"
    assert any(r.startswith("PASS auc vs champion") for r in res["reasons"])
    assert any(r.startswith("FAIL ece") and "0.0480" in r for r in res["reasons"])
    assert _alias(_client(store), "calib", "champion") == "1"


def test_a_first_candidate_failing_the_gate_leaves_no_champion(store: Path, tmp_path: Path) -> None:
    cfg = RegisterConfig(model_name="fragile")
    res = register(tmp_path / "a", cfg, store, drop=0.2)
    assert not res["promoted"] and res["champion_version"] is None
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        _client(store).get_model_version_by_alias("fragile", "champion")


def test_a_tampered_bundle_is_refused_naming_the_file(store: Path, tmp_path: Path) -> None:
    from veracity.bundle import BundleError

    bundle = make_bundle(tmp_path / "t")
    bench = make_benchmark(bundle)
    (bundle / "members/audio_specialist.safetensors").write_bytes(b"audio weights, edited")
    with pytest.raises(BundleError, match="members/audio_specialist.safetensors"):
        register_bundle(bundle, bench, RegisterConfig(model_name="tampered"), GATE, store)
    (bundle / "members/audio_specialist.safetensors").unlink()
    with pytest.raises(BundleError, match="members/audio_specialist.safetensors"):
        register_bundle(bundle, bench, RegisterConfig(model_name="tampered"), GATE, store)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # nothing was registered
        _client(store).get_registered_model("tampered")


def test_a_benchmark_of_another_bundle_is_refused(store: Path, tmp_path: Path) -> None:
    from veracity.bundle import BundleError

    bundle, other = make_bundle(tmp_path / "b"), make_bundle(tmp_path / "o", auc=0.5)
    with pytest.raises(BundleError, match="the benchmark measured bundle"):
        register_bundle(bundle, make_benchmark(other), RegisterConfig(model_name="mixed"), GATE, store)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        _client(store).get_registered_model("mixed")


# ---------------------------------------------------------------------------- the gate


def candidate(**changes: object) -> dict:
    """Gate inputs of a good candidate, with ``changes``."""
    return {**gate_metrics(make_benchmark(None)), **changes}


@pytest.mark.parametrize(
    ("changes", "champion", "margin", "passed", "failed"),
    [
        ({}, None, 0.0, True, None),
        # A bar fails only when the whole interval is on the wrong side of it.
        ({"auc": {"value": 0.985, "lo": 0.975, "hi": 0.99}}, None, 0.0, True, None),  # reaches 0.99: passes
        ({"auc": {"value": 0.985, "lo": 0.975, "hi": 0.9899}}, None, 0.0, False, "auc"),
        ({"ece": {"value": 0.05, "lo": 0.03, "hi": 0.07}}, None, 0.0, True, None),  # starts at the bar
        ({"ece": {"value": 0.05, "lo": 0.0301, "hi": 0.07}}, None, 0.0, False, "ece"),
        ({"fpr": {"value": 0.09, "lo": 0.05, "hi": 0.12}}, None, 0.0, True, None),
        ({"fpr": {"value": 0.09, "lo": 0.051, "hi": 0.12}}, None, 0.0, False, "fpr"),
        ({"robustness_drop": {"value": 0.07, "lo": 0.0501, "hi": 0.09}}, None, 0.0, False, "robustness_drop"),
        ({"method_auc": {"faceswap": {"value": 0.95, "lo": 0.94, "hi": 0.969}}}, None, 0.0, False, "auc on faceswap"),
        ({}, {"auc": 0.997}, 0.0, True, None),  # upper end 0.997 reaches the champion's
        ({}, {"auc": 0.9971}, 0.0, False, "auc vs champion"),
        ({}, {"auc": 0.9971}, 0.001, True, None),  # within the margin
        ({}, {"auc": None}, 0.0, True, None),  # a champion without a benchmark AUC is not compared
        ({"auc": None}, None, 0.0, False, "auc"),  # not measured fails
        ({"robustness_drop": None}, None, 0.0, False, "robustness_drop"),
        ({"method_auc": {}}, None, 0.0, False, "method auc"),
        ({"target_fpr": None}, None, 0.0, False, "fpr"),
    ],
)
def test_promotion_gate_judges_intervals(changes: dict, champion: dict | None, margin: float, passed: bool,
                                         failed: str | None) -> None:
    ok, reasons = promotion_gate(candidate(**changes), champion, RegisterConfig(auc_margin=margin), GATE)
    assert ok is passed
    assert all(r.startswith(("PASS", "FAIL")) for r in reasons)
    fails = [r.split(":")[0][5:] for r in reasons if r.startswith("FAIL")]
    assert fails == ([] if failed is None else [failed])


def test_gate_reasons_give_the_figures() -> None:
    ok, reasons = promotion_gate(candidate(ece={"value": 0.04, "lo": 0.035, "hi": 0.045}), {"auc": 0.999},
                                 RegisterConfig(auc_margin=0.001), GATE)
    assert not ok
    assert reasons[0] == "PASS auc: 0.9950 [0.9930, 0.9970], upper end >= gate.min_auc 0.9900"
    assert reasons[1] == ("FAIL auc vs champion: 0.9950 [0.9930, 0.9970], upper end < champion 0.9990 - "
                          "register.auc_margin 0.001 = 0.9980")
    assert "FAIL ece: 0.0400 [0.0350, 0.0450], lower end > gate.max_ece 0.0300" in reasons
    assert "PASS fpr: 0.0500 [0.0480, 0.0520], lower end <= the bundle's target FPR 0.0500" in reasons


def test_gate_metrics_read_from_the_benchmark() -> None:
    got = gate_metrics(make_benchmark(None, auc=0.993, drop=0.04))
    assert got["auc"] == pytest.approx(iv(0.993)) and got["robustness_drop"] == pytest.approx(iv(0.04))
    assert set(got["method_auc"]) == {"faceswap", "lipsync"} and got["target_fpr"] == 0.05
    empty = gate_metrics({})
    assert empty["auc"] is None and empty["method_auc"] == {} and empty["target_fpr"] is None
    # an interval with a missing or non-finite end is not a measurement
    assert gate_metrics({"ensemble": {"auc": {"value": 0.99, "lo": float("nan"), "hi": 1.0}}})["auc"] is None


# ---------------------------------------------------------------------------- model card


def test_model_card_lists_members_methods_thresholds_and_lineage(tmp_path: Path) -> None:
    spec = json.loads((make_bundle(tmp_path) / "bundle.json").read_text())
    card = model_card(spec, extra={"model_name": "veracity-detector", "version": "4", "promoted": True,
                                   "champion_version": "4", "reasons": ["PASS auc: 0.9500"]})
    assert card.startswith("# Model card: veracity-detector")
    assert "| video_specialist | video_specialist | video | video_label | topk (k=4, beta=5) | temperature (T=1.3) " \
           "| 0.9 | 0.1 | 0.03 |" in card
    assert "| audio_specialist | audio_specialist | audio | audio_label | mean | isotonic (3 knots) |" in card
    assert "| faceswap | 0.981 |" in card and "| lipsync | 0.912 |" in card and "| voice_clone | 0.933 |" in card
    assert "stacking" in card and "REAL below 0.2, FAKE at or above 0.7" in card
    assert "| false-positive rate (REAL called FAKE) | 0.05 | 0.04 |" in card
    assert "| gate | crf | 35 |" in card and "| worst | noise | 0.1 |" in card
    assert "abc123def" in card and "d41d8cd98f00b204e9800998ecf8427e" in card
    assert "| train@video_specialist | 11112222 |" in card and "| audio_specialist | run-audio-1 |" in card
    assert "version 4" in card and "PASS auc: 0.9500" in card
    assert "synthetic" in card and "validation" in card
    assert "would show ECE 0.045 (median over label draws; 90th percentile 0.061) on 88 clips" in card


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"members": [{"name": "m"}], "metrics": {"ensemble": {"test": {}}}},
        {"members": "oops", "metrics": [], "thresholds": None, "robustness": {"gate": None}, "lineage": "x",
         "fusion": 3, "data": {"clips_by_split": {"train": 10, "val": 5, "test": 5}}},
        {"members": [None, {"name": "m", "pooling": "mean", "calibrator": {"method": "isotonic"}}],
         "metrics": {"ensemble": {"per_method": {"faceswap": None, "lipsync": {"auc": float("nan")}}}}},
    ],
)
def test_model_card_renders_missing_fields_as_na(spec: dict) -> None:
    card = model_card(spec)
    assert card.startswith("# Model card")
    assert NA in card
    for heading in ("## Members", "## AUC per manipulation method", "## Robustness", "## Lineage"):
        assert heading in card


# ------------------------------------------------------------------------------ CLI verb


def test_cli_register_writes_summary_and_refuses_a_tampered_bundle(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from veracity.cli import app

    monkeypatch.chdir(store)  # the store is ./mlflow.db
    bundle, out = make_bundle(tmp_path / "bundle"), tmp_path / "out"
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps(make_benchmark(bundle)))
    (tmp_path / "params.yaml").write_text("register:\n  model_name: ignored\ngate:\n  max_ece: 0.03\n")
    args = ["register", "--bundle", str(bundle), "--out", str(out), "--benchmark", str(bench),
            "--params", str(tmp_path / "params.yaml"), "--set", "model_name=cli"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_name"] == "cli" and summary["version"] == "1" and summary["promoted"] is True
    assert "promoted to champion: version 1" in result.output
    assert "PASS ece: 0.0200 [0.0180, 0.0220], lower end <= gate.max_ece 0.0300" in result.output
    assert "video_specialist" in (out / "model_card.md").read_text()

    worse = make_bundle(tmp_path / "worse", auc=0.5)
    bench.write_text(json.dumps(make_benchmark(worse, auc=0.98)))
    result = CliRunner().invoke(app, [*args[:2], str(worse), *args[3:]])
    assert result.exit_code == 0, result.output
    assert "stays challenger: version 2" in result.output

    result = CliRunner().invoke(app, [*args[:6], str(tmp_path / "none.json"), *args[7:]])
    assert result.exit_code == 2 and "run `veracity benchmark` first" in result.output

    (bundle / "members/video_specialist.onnx").write_bytes(b"swapped graph")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "members/video_specialist.onnx" in result.output and "Traceback" not in result.output


def test_model_card_states_the_profiles_scope_or_its_absence() -> None:
    profile = {"method": "mahalanobis", "target_rate": 0.02, "fit_splits": ["train"], "threshold_split": "val",
               "n_fit": 200, "gate_facts": ["face_px"], "bands": {"face_px": [44.9, 111.0], "fps": [25, 25]}}
    card = model_card({"profile": profile})
    scope = next(line for line in card.splitlines() if line.startswith("- Scope:"))
    assert "200 clips of the train split" in scope and "face px 44.9 to 111" in scope and "fps" not in scope
    assert "2% of held-out val people" in scope
    bare = next(line for line in model_card({}).splitlines() if line.startswith("- Scope:"))
    assert "no reference profile" in bare


def test_model_card_states_how_files_without_audio_and_split_members_are_judged() -> None:
    judged = model_card({"evidence": {"require_audio": False}, "modality_thresholds": {"video": {}},
                         "disagreement": {"k": 3, "bound": 2.51, "rate": 0.02}})
    assert "judged on video alone, against video-only thresholds set the same way" in judged
    assert "thresholds are chosen on the validation split" in judged  # no reals in this bundle
    assert "Member disagreement: UNCERTAIN when the members split" in judged and "2.51" in judged
    strict = model_card({"evidence": {"require_audio": True}, "modality_thresholds": {"video": {}}})
    assert "A file without usable audio is ABSTAIN." in strict and "Member disagreement" not in strict


def test_model_card_says_the_fake_cuts_were_set_on_new_peoples_reals() -> None:
    reals = {"source": "synthetic", "n": 300, "n_judged": 296,
             "rules": {"fused": {"fake_at_val": 0.66, "fake_at": 0.40, "reals_fpr": 0.0473}}}
    card = model_card({"metrics": {"reals": reals}})
    assert "each FAKE cut is set on 296 authentic clips of people no split has seen" in card
    assert "0.0473 of them at or above the fused cut" in card and "UNCERTAIN band on validation" in card
    assert "thresholds are chosen on the validation split" not in card


def test_model_card_shows_the_benchmark_per_modality_alone_and_without_the_profile() -> None:
    iv = {"value": 0.9, "lo": 0.8, "hi": 0.95}
    bench = {"ensemble": {"auc": iv, "ood_rate": {"value": 0.012, "lo": 0.006, "hi": 0.02},
                          "without_profile": {"auc": iv, "ece": iv}},
             "alone": {"video": {"auc": {"value": 0.97, "lo": 0.96, "hi": 0.98}}, "audio": {"auc": iv}}}
    card = model_card({}, extra={"benchmark": bench})
    assert "| ood_rate | 0.012 [0.006, 0.02] |" in card
    assert "Without the reference profile (out-of-profile clips scored anyway): AUC 0.9 [0.8, 0.95]" in card
    assert "| figure | audio | video |" in card and "| auc | 0.9 [0.8, 0.95] | 0.97 [0.96, 0.98] |" in card


def test_benchmark_figures_per_modality_and_without_profile_become_run_metrics() -> None:
    from veracity.stages.register import _benchmark_metrics

    iv = {"value": 0.9, "lo": 0.8, "hi": 0.95}
    got = _benchmark_metrics({"ensemble": {"auc": iv, "without_profile": {"ece": iv}}, "alone": {"video": {"fpr": iv}}})
    assert got["benchmark_auc"] == 0.9 and got["benchmark_without_profile.ece_lo"] == 0.8
    assert got["benchmark_alone.video.fpr_hi"] == 0.95
