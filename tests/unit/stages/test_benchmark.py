"""The benchmark's figures from a scored table, the re-encode drop, and its refusals.

The scoring through the real Analyzer is tested in tests/integration/test_analyzer.py and,
as a DVC stage, in tests/integration/test_dvc_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from veracity import metrics
from veracity.config import AnalyzeConfig, BenchmarkConfig, GenerateConfig
from veracity.decision import Fallback, Fusion, Thresholds
from veracity.stages import StageError
from veracity.stages.benchmark import (
    BenchmarkError,
    _alone_figures,
    _alone_views,
    _figures,
    _nest,
    _reencode_drop,
    _reencoded_people,
    _without_figures,
    analyse_clips,
    benchmark,
)
from veracity.stages.generate import benchmark_corpus

NAMES = ["video", "audio"]


def scored_table() -> pd.DataFrame:
    """Four people: one real and two fakes (faceswap, voice) each; one real clip abstains."""
    rows = []
    for i, person in enumerate("abcd"):
        rows += [
            {"video_id": f"{person}0", "identity": person, "method": "real", "label": 0, "verdict": "REAL",
             "probability": 0.1 + 0.01 * i, "p_video": 0.1, "p_audio": 0.2},
            {"video_id": f"{person}1", "identity": person, "method": "faceswap", "label": 1, "verdict": "FAKE",
             "probability": 0.9, "p_video": 0.9, "p_audio": 0.2},
            {"video_id": f"{person}2", "identity": person, "method": "voice", "label": 1, "verdict": "UNCERTAIN",
             "probability": 0.5, "p_video": 0.1, "p_audio": 0.8},
        ]
    rows[0].update(verdict="FAKE", probability=0.95)  # a false positive
    rows[3].update(verdict="ABSTAIN", probability=np.nan, p_video=np.nan, p_audio=np.nan)  # b's real clip
    return pd.DataFrame(rows)


def test_figures_leave_abstentions_out_and_score_each_method_and_member() -> None:
    table = scored_table()
    # FAKE at 0.7, REAL below 0.3: the verdicts in scored_table()
    got = _figures(table, NAMES, Thresholds(0.3, 0.7, 0.05, 0.1), ece_bins=10)(np.arange(len(table)))
    assert got["abstain_rate"] == pytest.approx(1 / 12)
    scored = table[table["verdict"] != "ABSTAIN"]
    assert got["auc"] == pytest.approx(metrics.roc_auc(scored["label"], scored["probability"]))
    assert got["fpr"] == pytest.approx(1 / 3)  # 1 of the 3 reals that were scored called FAKE
    assert got["tpr"] == pytest.approx(4 / 8)  # faceswap FAKE, voice UNCERTAIN
    assert got["uncertain_rate"] == pytest.approx(4 / 11)
    # The video member sees face swaps, not voices; the audio member the other way round.
    assert got["method.faceswap.video"] == 1.0 and got["method.voice.video"] == 0.5
    assert got["method.voice.audio"] == 1.0 and got["method.faceswap.audio"] == 0.5
    nested = _nest({k: {"value": v, "lo": v, "hi": v} for k, v in got.items()}, NAMES)
    assert set(nested) == {"ensemble", "members", "per_method", "alone", "without"}
    assert nested["per_method"]["voice"]["audio"]["value"] == 1.0
    assert nested["members"]["video"]["auc"]["value"] == got["video.auc"]
    assert "auc" in nested["ensemble"] and not any("." in k for k in nested["ensemble"])
    assert set(nested["ensemble"]["without_profile"]) == {"auc", "ece"}


def test_out_of_profile_clips_are_their_own_figure_and_scored_anyway_without_the_profile() -> None:
    table = scored_table().assign(reason=None, unreliable_probability=np.nan)
    # c's face swap set aside as out of profile: no verdict, its probability kept as unreliable
    table.loc[table["video_id"] == "c1", ["verdict", "probability", "reason", "unreliable_probability"]] = \
        ["ABSTAIN", np.nan, "out_of_distribution", 0.05]
    table.loc[table["video_id"] == "d2", ["verdict", "reason"]] = ["UNCERTAIN", "member_disagreement"]
    got = _figures(table, NAMES, Thresholds(0.3, 0.7, 0.05, 0.1), ece_bins=10)(np.arange(len(table)))
    assert got["ood_rate"] == pytest.approx(1 / 12) and got["abstain_rate"] == pytest.approx(2 / 12)
    assert got["disagreement_rate"] == pytest.approx(1 / 12)
    kept = table[table["verdict"] != "ABSTAIN"]
    assert got["auc"] == pytest.approx(metrics.roc_auc(kept["label"], kept["probability"]))
    # Without the profile the set-aside fake is scored at 0.05, below two reals: the AUC falls.
    both = table[table["verdict"] != "ABSTAIN"].copy()
    both = pd.concat([both, pd.DataFrame([{"label": 1, "probability": 0.05}])])
    assert got["without_profile.auc"] == pytest.approx(metrics.roc_auc(both["label"], both["probability"]))
    assert got["without_profile.auc"] < got["auc"]


def test_each_modality_alone_is_judged_on_its_members_target_and_profile() -> None:
    table = scored_table().assign(ood_members="", ood_facts="")
    table["video_label"] = (table["method"] == "faceswap").astype(float)
    table["audio_label"] = (table["method"] == "voice").astype(float)
    # c's voice clip: its audio member out of profile (video alone still judges it);
    # d's face swap: a face fact out (audio alone still judges it)
    table.loc[table["video_id"] == "c2", "ood_members"] = "audio"
    table.loc[table["video_id"] == "d1", "ood_facts"] = "sharpness"
    spec = {"members": [{"name": "video", "modality": "video", "target": "video_label",
                         "target_methods": ["faceswap", "voice"]},
                        {"name": "audio", "modality": "audio", "target": "audio_label", "target_methods": None}],
            "modality_thresholds": {m: Thresholds(0.3, 0.7, 0.05, 0.1).to_dict() for m in ("video", "audio")}}
    # An audio-visual member needs both modalities: it has no "alone" view even with thresholds.
    spec["members"].append({"name": "sync", "modality": "av", "target": "label", "target_methods": None})
    spec["modality_thresholds"]["av"] = Thresholds(0.3, 0.7, 0.05, 0.1).to_dict()
    views = _alone_views(table.assign(p_sync=0.5), spec)
    assert set(views) == {"video", "audio"}
    v, a = views["video"].set_index(table["video_id"]), views["audio"].set_index(table["video_id"])
    assert v.loc["a1", "verdict"] == "FAKE" and v.loc["a2", "verdict"] == "REAL"  # the face cannot see a voice
    assert a.loc["a2", "verdict"] == "FAKE" and a.loc["a1", "verdict"] == "REAL"
    assert a.loc["c2", "verdict"] == "ABSTAIN" and v.loc["c2", "verdict"] == "REAL"
    assert v.loc["d1", "verdict"] == "ABSTAIN" and a.loc["d1", "verdict"] == "REAL"
    assert v.loc["b0", "verdict"] == "ABSTAIN"  # abstained before any member scored it
    got = _alone_figures(views, spec, ece_bins=10)(np.arange(len(table)))
    assert got["alone.video.auc"] == 1.0 and got["alone.audio.auc"] == 1.0
    assert got["alone.video.ood_rate"] == pytest.approx(1 / 12)
    assert got["alone.audio.fpr"] == 0.0


def test_without_a_member_its_fallback_judges_the_clips_the_bundle_judged() -> None:
    table = scored_table().assign(p_sync=0.3)
    # With the voice gone, the fallback of face + sync: the mean of the two, FAKE at 0.55.
    fb = Fallback(Fusion("weighted_mean", ("video", "sync"), weights=(1.0, 1.0)), Thresholds(0.25, 0.55, 0.05, 0.1))
    spec = {"members": [{"name": n} for n in ("video", "audio", "sync")], "fallbacks": [fb.to_dict()]}
    got = _without_figures(table, spec, ece_bins=10)(np.arange(len(table)))
    assert set(got) == {f"without.audio.{k}" for k in ("auc", "ece", "fpr", "tpr", "uncertain_rate")}
    # Face swaps (0.6) are FAKE, voices (0.2) REAL: the face and the lips cannot hear a cloned voice.
    assert got["without.audio.tpr"] == pytest.approx(0.5) and got["without.audio.fpr"] == 0.0
    assert got["without.audio.uncertain_rate"] == 0.0  # reals at 0.2 are REAL too; b's real clip abstained
    nested = _nest({k: {"value": v} for k, v in got.items()}, [])
    assert nested["without"]["audio"]["tpr"]["value"] == pytest.approx(0.5)


def test_reencode_drop_is_paired_on_the_clips_both_conditions_scored() -> None:
    clean = scored_table().assign(condition="clean")
    re = clean.assign(condition="crf35")
    re["probability"] = np.where(re["label"] == 1, 0.05, re["probability"])  # fakes now look real
    re.loc[re["video_id"] == "c1", ["verdict", "probability"]] = ["ABSTAIN", np.nan]
    got = _reencode_drop(pd.concat([clean, re]), 35, draws=200, confidence=0.95)
    assert got["abstained_after_reencode"] == 1 and got["n"] == 12 - 1 - 1  # b0 (clean) and c1 (re-encoded) out
    assert got["drop"]["value"] == pytest.approx(got["clean_auc"]["value"] - got["auc"]["value"])
    assert got["drop"]["value"] > 0.5 and got["drop"]["lo"] <= got["drop"]["value"] <= got["drop"]["hi"]


def test_reencoded_people_are_a_stable_spread_not_the_first_names() -> None:
    people = [f"id{i:03d}" for i in range(125)]
    chosen = _reencoded_people(people, 32)
    assert len(chosen) == 32 and chosen == sorted(chosen)
    assert chosen == _reencoded_people(list(reversed(people)), 32)
    assert chosen != people[:32]
    assert _reencoded_people(people, 0) == [] and len(_reencoded_people(people[:5], 32)) == 5


def test_the_benchmark_corpus_never_reuses_the_training_seed(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="equals generate.seed"):
        benchmark_corpus(GenerateConfig(seed=5), BenchmarkConfig(seed=5), tmp_path / "bench")
    assert not (tmp_path / "bench").exists()
    corpus = BenchmarkConfig(seed=9, n_identities=40).corpus(GenerateConfig(seed=5, methods_per_identity=2, width=96))
    assert (corpus.seed, corpus.n_identities, corpus.methods_per_identity, corpus.width) == (9, 40, None, 96)


def test_benchmark_names_what_is_missing(tmp_path: Path) -> None:
    cfg, analyze = BenchmarkConfig(), AnalyzeConfig()
    with pytest.raises(BenchmarkError, match="manifest.csv does not exist"):
        benchmark(cfg, analyze, tmp_path / "bundle", tmp_path / "corpus", tmp_path / "out", ece_bins=10)
    (tmp_path / "corpus").mkdir()
    pd.DataFrame({"video_id": ["x"], "path": ["x.mp4"], "label": [0], "identity": ["p"], "method": ["real"]}).to_csv(
        tmp_path / "corpus" / "manifest.csv", index=False)
    with pytest.raises(BenchmarkError, match="holds no bundle.json"):
        benchmark(cfg, analyze, tmp_path / "bundle", tmp_path / "corpus", tmp_path / "out", ece_bins=10)
    assert not (tmp_path / "out").exists()


def test_a_bundle_whose_cuts_were_set_on_the_benchmark_people_is_refused(tmp_path: Path) -> None:
    import json

    (tmp_path / "corpus").mkdir()
    pd.DataFrame({"video_id": ["x"], "path": ["x.mp4"], "label": [0], "identity": ["p"], "method": ["real"]}).to_csv(
        tmp_path / "corpus" / "manifest.csv", index=False)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(
        {"members": [], "metrics": {"reals": {"source": "synthetic", "seed": 2027}}}))
    with pytest.raises(BenchmarkError, match="equals ensemble.reals.seed"):
        benchmark(BenchmarkConfig(seed=2027), AnalyzeConfig(), tmp_path / "bundle", tmp_path / "corpus",
                  tmp_path / "out", ece_bins=10)
    assert not (tmp_path / "out").exists()


def test_clips_are_scored_in_order_and_a_failed_one_is_an_error_row(tiny_bundle: Path, tiny_corpus: Path,
                                                                     tmp_path: Path) -> None:
    # The rows come from veracity.pool's processes (a dying one is tested there): here, that
    # the benchmark's tasks keep their order and a clip that cannot be re-encoded is a row.
    a, b = sorted((tiny_corpus / "videos").glob("*.mp4"))[:2]
    tasks = [("a", str(a), None, str(tmp_path)), ("gone", str(tmp_path / "gone.mp4"), 35, str(tmp_path)),
             ("b", str(b), 35, str(tmp_path))]
    rows = analyse_clips(tasks, tiny_bundle, workers=2, device="cpu", analyze=AnalyzeConfig())
    assert [(r["video_id"], r["condition"]) for r in rows] == [("a", "clean"), ("gone", "crf35"), ("b", "crf35")]
    assert rows[1]["verdict"] == "ABSTAIN" and rows[1]["reason"] == "error" and "re-encode at crf 35" in rows[1]["message"]
    for r in (rows[0], rows[2]):
        assert r["verdict"] != "ABSTAIN" and 0 <= r["probability"] <= 1 and any(k.startswith("p_") for k in r)
    assert not list(tmp_path.glob("*.crf35.mp4"))  # the re-encoded copy is removed
