"""The analyzer end to end with a tiny real bundle: reports, abstentions, persons, CLI, ONNX.

The bundle is the session's ``tiny_bundle`` (tests/conftest.py), built the way the
pipeline builds one. Test media that the corpus lacks
(no face, no audio, two people, random bytes) are made here from the synthetic renderer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from veracity.analyzer import REASONS, Analyzer, Report
from veracity.bundle import Bundle, BundleError, Evidence
from veracity.cli import app
from veracity.config import AnalyzeConfig
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.decision import Disagreement, Fusion
from veracity.media.encode import write_mp4
from veracity.status import EXTRACT_STATUSES

pytestmark = pytest.mark.integration

VERDICTS = {"FAKE", "UNCERTAIN", "REAL", "ABSTAIN"}
runner = CliRunner()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (video + audio member, stacking, thresholds, ONNX)."""
    return tiny_bundle


@pytest.fixture(scope="module")
def analyzer(bundle_dir: Path) -> Analyzer:
    return Analyzer(bundle_dir, device="cpu")


def _person(name: str, seed: int, size: int = 96, seconds: float = 1.6) -> tuple[list[np.ndarray], np.ndarray]:
    ident = sample_identity(name, np.random.default_rng(seed))
    clip = render(ClipSpec(name, "real", ident, None, seconds, 25, size, size, 16000, 20, 2.0, seed))
    return list(clip.frames), clip.audio


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files the corpus lacks: two people side by side, no face, no audio, random bytes."""
    d = tmp_path_factory.mktemp("analyzer_media")
    a_frames, a_audio = _person("left", 1)
    b_frames, _ = _person("right", 2)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96)[None, :, None] * np.ones((96, 1, 3))
    no_face = [np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8) for _ in range(40)]
    files = {
        "two": write_mp4(d / "two_people.mp4", [np.concatenate(p, axis=1) for p in zip(a_frames, b_frames,
                                                                                          strict=True)], 25, a_audio),
        "no_face": write_mp4(d / "gradient.mp4", no_face, 25, a_audio),
        "no_audio": write_mp4(d / "mute.mp4", a_frames, 25, None),
        "silent": write_mp4(d / "silent.mp4", a_frames, 25, np.zeros_like(a_audio)),
        "corrupt": d / "random.mp4",
    }
    files["corrupt"].write_bytes(rng.bytes(4096))
    return files


def _videos(tiny_corpus: Path) -> list[Path]:
    return sorted((tiny_corpus / "videos").glob("*.mp4"))


def _check_schema(r: Report, bundle_dir: Path) -> None:
    d = r.to_dict()
    json.dumps(d, allow_nan=False)  # plain JSON, no NaN
    assert r.verdict in VERDICTS and r.verdict != "ABSTAIN" and r.reason is None
    assert 0.0 <= r.probability <= 1.0
    th = r.thresholds
    assert r.verdict == ("FAKE" if r.probability >= th["fake_at"] else
                         "REAL" if r.probability < th["real_below"] else "UNCERTAIN")
    assert set(r.members) == {"video", "audio"}
    assert all(0 <= m["probability"] <= 1 and m["modality"] in ("video", "audio") for m in r.members.values())
    assert set(r.modalities) == {"video", "audio"} and r.agreement["modality_agreement"] is not None
    duration = r.media["duration_s"]
    assert duration > 0 and r.media["width"] == 96 and r.media["has_audio"] is True
    segs = r.timeline
    assert segs and segs[0]["start_s"] >= 0 and segs[-1]["end_s"] <= duration + 1e-6
    for s in segs:
        assert s["start_s"] < s["end_s"] and s["verdict"] in VERDICTS - {"ABSTAIN"} and 0 <= s["probability"] <= 1
    for a, b in zip(segs, segs[1:], strict=False):
        assert a["end_s"] <= b["start_s"] + 1e-9  # ordered, non-overlapping
        assert a["verdict"] != b["verdict"]  # merged when equal
    assert 1 <= len(r.top_frames) <= 5
    assert all(0 <= f["time_s"] <= duration for f in r.top_frames)
    assert len({f["frame"] for f in r.top_frames}) == len(r.top_frames)
    assert {"extract_s", "forward_s", "total_s"} <= set(r.timings)
    assert r.bundle["sha256"] == hashlib.sha256((bundle_dir / "bundle.json").read_bytes()).hexdigest()
    assert len(r.persons) == 1 and r.person == r.persons[0]["track"]


# ------------------------------------------------------------------------------ reports


def test_report_schema_on_corpus_clips(analyzer: Analyzer, bundle_dir: Path, tiny_corpus: Path) -> None:
    for path in _videos(tiny_corpus)[:2]:
        _check_schema(analyzer.analyze(path), bundle_dir)


def test_same_file_twice_gives_the_same_probability(analyzer: Analyzer, tiny_corpus: Path) -> None:
    path = _videos(tiny_corpus)[3]
    first, second = analyzer.analyze(path), analyzer.analyze(path)
    assert first.probability == second.probability and first.timeline == second.timeline


def test_windows_scored_during_extraction_give_the_same_reports(bundle_dir: Path, media: dict[str, Path],
                                                               tiny_corpus: Path) -> None:
    # Batches of 2 so that whole batches exist before these short files end. The silent file
    # is the stream's wrong guess (it scores with the audio; the file is judged without):
    # the analyzer must start over, not reuse.
    after, during = (Analyzer(bundle_dir, device="cpu", cfg=AnalyzeConfig(batch_size=2, overlap=ov))
                     for ov in (False, True))
    files = [*_videos(tiny_corpus)[:4], media["two"], media["silent"], media["no_audio"], media["no_face"]]
    overlapped = []
    for f in files:
        a, b = after.analyze(f).to_dict(), during.analyze(f).to_dict()
        overlapped.append(b["timings"].get("forward_overlapped_s", 0.0) > 0)
        assert "forward_overlapped_s" not in a["timings"]
        a.pop("timings"), b.pop("timings")
        assert a == b, f.name
    assert overlapped[:6] == [True] * 6 and overlapped[6:] == [False, False]


@pytest.mark.parametrize(("kind", "reason"), [("no_face", "no_face"), ("corrupt", "corrupt"), ("no_audio", "no_audio")])
def test_files_that_cannot_be_judged_abstain(analyzer: Analyzer, media: dict[str, Path], kind: str,
                                             reason: str) -> None:
    r = analyzer.analyze(media[kind])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", reason, None)
    assert r.reason in REASONS and r.message and "Traceback" not in r.message
    json.dumps(r.to_dict(), allow_nan=False)


def test_missing_file_is_missing_as_in_extraction(analyzer: Analyzer, tmp_path: Path) -> None:
    r = analyzer.analyze(tmp_path / "nowhere.mp4")
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "missing", None)
    assert r.reason in EXTRACT_STATUSES  # one vocabulary: extraction's index says "missing" too


def test_a_video_only_bundle_judges_a_mute_file(analyzer: Analyzer, media: dict[str, Path]) -> None:
    b = analyzer.bundle
    video = [m for m in b.members if m.modality == "video"]
    only = Bundle(b.contract, video, Fusion("weighted_mean", ("video",), weights=(1.0,)), b.thresholds, b.evidence,
                  spec=b.spec)
    r = Analyzer(only).analyze(media["no_audio"])
    assert r.verdict in {"FAKE", "UNCERTAIN", "REAL"} and set(r.members) == {"video"}


def _judging_without_audio(b: Bundle, **changes) -> Bundle:
    """The same bundle with evidence rules that judge a file without usable audio on video alone."""
    ev = Evidence(b.evidence.min_face_ratio, b.evidence.min_duration_s, require_audio=False)
    kw = dict(spec=b.spec, modality_thresholds=b.modality_thresholds, profile=b.profile)
    return Bundle(b.contract, b.members, b.fusion, b.thresholds, ev, **{**kw, **changes})


@pytest.mark.parametrize(("kind", "words"), [("no_audio", "the file has no audio stream"),
                                             ("silent", "the audio track is silent")])
def test_a_file_without_usable_audio_is_judged_on_video_alone(analyzer: Analyzer, media: dict[str, Path],
                                                               kind: str, words: str) -> None:
    b = analyzer.bundle
    assert "video" in b.modality_thresholds  # calibrate fits them for the tiny bundle too
    r = Analyzer(_judging_without_audio(b)).analyze(media[kind])
    assert r.verdict in {"FAKE", "UNCERTAIN", "REAL"}, r.message
    assert r.judged == ["video"] and f"(judged on video alone: {words})" in r.message
    # Only the video member judged, on its own validation-fitted thresholds; the audio member
    # is listed without a score, never fed silence.
    assert r.members["video"]["judged"] and r.members["audio"] == {
        "modality": "audio", "judged": False, "logit": None, "probability": None, "reliable": False}
    th = b.modality_thresholds["video"]
    assert r.thresholds == {"real_below": th.real_below, "fake_at": th.fake_at}
    assert r.probability == r.members["video"]["probability"] and r.verdict == th.verdict(r.probability)
    json.dumps(r.to_dict(), allow_nan=False)


def test_without_video_thresholds_or_when_audio_is_required_a_mute_file_abstains(analyzer: Analyzer,
                                                                                  media: dict[str, Path]) -> None:
    r = Analyzer(_judging_without_audio(analyzer.bundle, modality_thresholds={})).analyze(media["no_audio"])
    assert (r.verdict, r.reason) == ("ABSTAIN", "no_audio") and "no video-only thresholds" in r.message
    r = analyzer.analyze(media["silent"])  # the session bundle requires audio
    assert (r.verdict, r.reason) == ("ABSTAIN", "silent") and "require audio" in r.message


def test_members_that_split_beyond_the_validation_bound_make_the_call_uncertain(analyzer: Analyzer,
                                                                               tiny_corpus: Path) -> None:
    b = analyzer.bundle
    assert b.disagreement is not None  # calibrate fitted one on the tiny validation split
    seen = set()
    for path in _videos(tiny_corpus)[:8]:
        plain = analyzer.analyze(path)
        p = [plain.members[n]["probability"] for n in b.names]
        assert plain.disagreement == pytest.approx(float(b.disagreement.distance([p])[0] / b.disagreement.bound))
        # A bound of ~0 flags every split pattern; the one reference pattern is a far-off corner.
        far = tuple(-5.0 if v >= 0.5 else 5.0 for v in p)
        rule = Disagreement(members=tuple(b.names), reference=(far,), k=1, bound=1e-9, rate=0.02)
        r = Analyzer(_judging_without_audio(b, disagreement=rule)).analyze(path)
        assert r.disagreement is not None and r.disagreement > 1.0
        split = min(p) < 0.5 <= max(p)
        seen.add(split)
        if split:  # the fusion's probability stays in the report; the call does not
            assert (r.verdict, r.reason) == ("UNCERTAIN", "member_disagreement")
            assert r.probability == pytest.approx(plain.probability) and "disagree" in r.message
        else:  # the members agree: the fusion's call stands however odd the pattern
            assert (r.verdict, r.reason) == (plain.verdict, plain.reason)
        if seen == {True, False}:
            break
    assert True in seen, "no clip of the tiny corpus splits the members"


def test_an_unexpected_failure_is_abstain_error_and_leaves_no_files(analyzer: Analyzer, tiny_corpus: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert analyzer.analyze(_videos(tiny_corpus)[0]).verdict != "ABSTAIN"

    def boom(batch, members=None, timeout_s=None):
        raise RuntimeError("simulated device failure\nsecond line")

    monkeypatch.setattr(analyzer.bundle, "forward", boom)
    with caplog.at_level(logging.WARNING, logger="veracity.analyzer"):
        r = analyzer.analyze(_videos(tiny_corpus)[0])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "error", None)
    assert "simulated device failure" in r.message and "second line" not in r.message
    # The report has one line; the traceback of the bug is in the log, at WARNING.
    logged = [rec for rec in caplog.records if rec.name == "veracity.analyzer" and rec.exc_info]
    assert logged and logged[0].levelno == logging.WARNING
    assert "in boom" in caplog.text and "second line" in caplog.text
    assert list(scratch.iterdir()) == []  # the extraction directories were removed both times


def test_two_people_are_scored_separately(analyzer: Analyzer, media: dict[str, Path]) -> None:
    r = analyzer.analyze(media["two"])
    assert r.verdict != "ABSTAIN", r.message
    assert len(r.persons) == 2 and len({p["track"] for p in r.persons}) == 2
    worst = max(r.persons, key=lambda p: p["probability"])
    assert r.person == worst["track"] and r.probability == worst["probability"] and r.verdict == worst["verdict"]
    # Each person's frames come from their own half of the picture.
    for p in r.persons:
        xs = {(f["box"][0] + f["box"][2]) / 2 >= 96 for f in p["top_frames"]}
        assert len(xs) == 1


def test_analyze_many_keeps_order_and_goes_on(analyzer: Analyzer, media: dict[str, Path], tiny_corpus: Path,
                                              tmp_path: Path) -> None:
    paths = [_videos(tiny_corpus)[0], media["corrupt"], tmp_path / "gone.mp4", _videos(tiny_corpus)[1]]
    reports = analyzer.analyze_many(paths)
    assert [r.path for r in reports] == [str(p) for p in paths]
    assert [r.reason for r in reports] == [None, "corrupt", "missing", None]


def test_explain_writes_overlays_and_audio_segments(analyzer: Analyzer, tiny_corpus: Path, tmp_path: Path) -> None:
    r = analyzer.analyze(_videos(tiny_corpus)[2], explain=True, explain_dir=tmp_path / "x")
    ex = r.explanations
    assert ex is not None and ex["gradcam_member"] == "video"
    assert len(ex["overlays"]) == len(r.top_frames)
    for o, f in zip(ex["overlays"], r.top_frames, strict=True):
        img = cv2.imread(o["png"])
        assert o["time_s"] == f["time_s"] and img is not None and img.shape == (128, 128, 3)  # 32 px crop x 4
    assert ex["modality_agreement"] == pytest.approx(r.agreement["modality_agreement"])
    for s in ex["audio_segments"]:
        assert 0 <= s["start_s"] < s["end_s"] and s["max_prob"] >= r.thresholds["fake_at"]
    assert analyzer.analyze(_videos(tiny_corpus)[2]).explanations is None


# ------------------------------------------------------------------------------ bundle and runtimes


def test_a_tampered_bundle_is_refused_naming_the_file(bundle_dir: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(bundle_dir, tmp_path / "bundle")
    weights = bad / "members" / "audio.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="members/audio.safetensors"):
        Analyzer(bad, device="cpu")


def test_onnx_runtime_matches_torch(analyzer: Analyzer, bundle_dir: Path, tiny_corpus: Path) -> None:
    onnx = Analyzer(bundle_dir, device="cpu", runtime="onnx")
    assert set(onnx.identity["runtime"].values()) == {"onnx"}
    path = _videos(tiny_corpus)[4]
    assert onnx.analyze(path).probability == pytest.approx(analyzer.analyze(path).probability, abs=1e-4)


def test_bf16_autocast_runs_the_members_in_bf16_near_fp32(analyzer: Analyzer, bundle_dir: Path,
                                                         tiny_corpus: Path) -> None:
    assert analyzer.identity["precision"] == "fp32"  # the default
    assert Analyzer(bundle_dir, device="cpu", cfg=AnalyzeConfig(precision="auto")).identity["precision"] == "fp32"
    bf16 = Analyzer(bundle_dir, device="cpu", cfg=AnalyzeConfig(precision="bf16"))
    assert bf16.identity["precision"] == "bf16"
    path = _videos(tiny_corpus)[4]
    fp, lo = analyzer.analyze(path), bf16.analyze(path)
    assert lo.bundle["precision"] == "bf16" and fp.bundle["precision"] == "fp32"
    # Rounded to bf16's 8 bits of mantissa, so not the same numbers, but near them.
    assert lo.probability != fp.probability
    assert lo.probability == pytest.approx(fp.probability, abs=0.05)


def test_an_unknown_precision_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        Bundle.load(bundle_dir, "cpu", precision="fp16")


# ------------------------------------------------------------------------------ CLI


def test_cli_json_for_a_directory(bundle_dir: Path, media: dict[str, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(_videos(tiny_corpus)[0], d / "b_good.mp4")
    shutil.copy(media["corrupt"], d / "a_bad.mp4")
    (d / "notes.txt").write_text("not a video")
    (d / "nested").mkdir()
    params = tmp_path / "params.yaml"
    params.write_text("analyze:\n  top_frames: 2\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["analyze", str(d), "--bundle", str(bundle_dir), "--json", "--explain", "--out", str(out),
                              "--device", "cpu", "--params", str(params)])
    assert res.exit_code == 0, res.output
    reports = json.loads(res.stdout)
    # Every file gets a report, whatever its extension; the sub-folder is named as skipped.
    assert [Path(r["path"]).name for r in reports] == ["a_bad.mp4", "b_good.mp4", "notes.txt"]
    assert reports[0]["verdict"] == "ABSTAIN" and reports[0]["reason"] == "corrupt"
    assert reports[2]["verdict"] == "ABSTAIN" and reports[2]["reason"] in ("corrupt", "unsupported")
    assert "skipped" in res.stderr and "nested" in res.stderr
    assert reports[1]["verdict"] in VERDICTS - {"ABSTAIN"} and len(reports[1]["top_frames"]) <= 2
    assert json.loads((out / "b_good.json").read_text())["probability"] == reports[1]["probability"]
    assert (out / "a_bad.json").is_file() and len(list((out / "b_good").glob("*.png"))) == len(reports[1]["top_frames"])
    text = runner.invoke(app, ["analyze", str(d / "b_good.mp4"), "--bundle", str(bundle_dir), "--device", "cpu",
                               "--params", str(params)])
    assert text.exit_code == 0 and "verdict:" in text.stdout and "timeline:" in text.stdout


def test_cli_refuses_a_bad_bundle_cleanly(tiny_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("{}\n")
    res = runner.invoke(app, ["analyze", str(_videos(tiny_corpus)[0]), "--bundle", str(tmp_path / "none"),
                              "--params", str(tmp_path / "p.yaml")])
    assert res.exit_code != 0 and "bundle.json is missing" in res.output and "Traceback" not in res.output


def test_analyze_config_limits_top_frames(bundle_dir: Path, tiny_corpus: Path) -> None:
    a = Analyzer(bundle_dir, device="cpu", cfg=AnalyzeConfig(top_frames=1, segment_merge=False))
    r = a.analyze(_videos(tiny_corpus)[0])
    assert len(r.top_frames) == 1
    assert sum(s["windows"] for s in r.timeline) == len(r.timeline)  # one window per segment when not merged


# ------------------------------------------------------------------------------ benchmark


def test_benchmark_scores_every_clip_through_the_analyzer_and_goes_on_past_a_bad_one(
        bundle_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    import pandas as pd

    from veracity.config import BenchmarkConfig
    from veracity.stages.benchmark import benchmark

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    manifest = pd.read_csv(corpus / "manifest.csv")
    broken = manifest.iloc[0].copy()
    broken["video_id"], broken["path"], broken["label"], broken["method"] = "broken", "videos/broken.mp4", 0, "real"
    (corpus / "videos" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    pd.concat([manifest, broken.to_frame().T]).to_csv(corpus / "manifest.csv", index=False)
    cfg = BenchmarkConfig(reencode_identities=2, bootstrap=100, workers=2, device="cpu")
    seen: list[int] = []
    res = benchmark(cfg, AnalyzeConfig(), bundle_dir, corpus, tmp_path / "out", ece_bins=10,
                    progress=lambda done, total: seen.append(total))

    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    clean = scores[scores["condition"] == "clean"]
    assert sorted(clean["video_id"]) == sorted([*manifest["video_id"], "broken"])
    two = sorted(manifest["identity"].unique())
    reencoded = scores[scores["condition"] == "crf35"]
    assert reencoded["identity"].nunique() == 2 and set(reencoded["identity"]) <= set(two)
    assert seen and seen[-1] == len(scores)
    # The damaged file is a row with its reason; every other clip was judged.
    bad = clean.set_index("video_id").loc["broken"]
    assert bad["verdict"] == "ABSTAIN" and bad["reason"] == "corrupt"
    assert res["n_abstain"] == int((clean["verdict"] == "ABSTAIN").sum()) >= 1
    assert res["abstain_reasons"]["corrupt"] == 1
    # The same figures as the Analyzer gives one clip at a time, in this process.
    one = Analyzer(bundle_dir, device="cpu").analyze(corpus / manifest["path"].iloc[3])
    row = clean.set_index("video_id").loc[manifest["video_id"].iloc[3]]
    assert row["verdict"] == one.verdict and row["probability"] == pytest.approx(one.probability, abs=1e-5)
    for name in ("auc", "ece", "fpr", "brier"):  # (ECE's interval may sit above it: binned ECE is biased up)
        iv = res["ensemble"][name]
        assert set(iv) == {"value", "lo", "hi"} and iv["lo"] <= iv["hi"]
    assert set(res["members"]) == {"video", "audio"} and res["n_people"] == manifest["identity"].nunique()
    assert res["bundle_sha256"] == hashlib.sha256((bundle_dir / "bundle.json").read_bytes()).hexdigest()
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "seconds" not in written and written["n"] == res["n"]  # wall time would change dvc.lock
    for plot in ("plots/roc.csv", "plots/reliability.csv"):
        assert set(pd.read_csv(tmp_path / "out" / plot)["member"]) == {"ensemble", "video", "audio"}


@pytest.mark.parametrize("batch_windows", [0, 64])
def test_concurrent_analyses_in_one_process_match_one_at_a_time(analyzer: Analyzer, tiny_bundle: Path,
                                                                 tiny_corpus: Path, batch_windows: int) -> None:
    """Threads sharing an analyzer (a server's) get the reports they would get alone, with
    and without their windows batched together. (They did not: the face detector's OpenCV
    cascade was shared between threads, and concurrent detections corrupted each other.)"""
    from concurrent.futures import ThreadPoolExecutor

    clips = _videos(tiny_corpus)[:6]
    want = {c.name: analyzer.analyze(c) for c in clips}
    batched = Analyzer(tiny_bundle, device="cpu", batch_windows=batch_windows, batch_wait_s=0.05)
    try:
        with ThreadPoolExecutor(4) as pool:
            got = dict(zip([c.name for c in clips], pool.map(batched.analyze, clips), strict=True))
    finally:
        batched.close()
    for name, r in got.items():
        assert (r.verdict, r.reason) == (want[name].verdict, want[name].reason), name
        if r.probability is not None:
            assert r.probability == pytest.approx(want[name].probability, abs=1e-5)
            assert [f["frame_score"] for f in r.top_frames] == pytest.approx(
                [f["frame_score"] for f in want[name].top_frames], abs=1e-5)
    assert batch_windows == 0 or (batched.batcher is not None and batched.batcher.passes > 0)


def _member(a: Analyzer, modality: str):
    return next(m for m in a.bundle.members if m.modality == modality)


def test_a_member_past_its_time_limit_is_named_and_the_video_members_judge(bundle_dir: Path, tiny_corpus: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a = Analyzer(bundle_dir, device="cpu", member_timeout_s=1.0)
    clip = _videos(tiny_corpus)[0]
    audio = _member(a, "audio")
    slow_forward = audio.model.forward

    def hang(*args, **kwargs):
        time.sleep(3.0)
        return slow_forward(*args, **kwargs)

    monkeypatch.setattr(audio.model, "forward", hang)
    r = a.analyze(clip)
    assert r.verdict != "ABSTAIN" and r.judged == ["video"], (r.verdict, r.reason, r.message)
    assert r.failed_members[audio.name].startswith("time_limit") and "gave no answer" in r.message
    assert r.members[audio.name]["judged"] is False and r.members[audio.name]["probability"] is None
    assert r.thresholds["fake_at"] == a.bundle.modality_thresholds["video"].fake_at
    assert r.timings["total_s"] < 10  # the hanging member did not hold the analysis


def test_a_failing_video_member_makes_the_file_unjudgeable_not_real(bundle_dir: Path, tiny_corpus: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a = Analyzer(bundle_dir, device="cpu", member_timeout_s=5.0)
    video = _member(a, "video")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(video.model, "forward", broken)
    r = a.analyze(_videos(tiny_corpus)[0])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "member_failed", None)
    assert video.name in r.message and "illegal memory access" in r.message


@pytest.fixture(scope="module")
def three_members(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle's video and audio members plus a tiny lip-sync member, calibrated
    together: a bundle with fallbacks (every pair that sees the face)."""
    from tests.conftest import ONE_EPOCH, TINY_EXTRACT
    from veracity.config import CalibrateConfig, MemberConfig, TrainConfig, to_plain
    from veracity.stages.calibrate import calibrate
    from veracity.training import train

    built, root = tiny_bundle.parent, tmp_path_factory.mktemp("three_members")
    members = {"video": MemberConfig(detector="tiny_video", target="video_label", **ONE_EPOCH),
               "audio": MemberConfig(detector="tiny_audio", target="audio_label", **ONE_EPOCH),
               "sync": MemberConfig(detector="tiny_lipsync", target="label", sync_negatives=True, **ONE_EPOCH)}
    for name in ("video", "audio"):
        shutil.copytree(built / "models" / name, root / "models" / name)
    train("sync", members["sync"], TrainConfig(), built / "features", root / "models" / "sync", ece_bins=10)
    calibrate(CalibrateConfig(method="temperature"), members, root / "models", root / "calibration",
              root / "reports", ece_bins=10)
    spec = json.loads((root / "calibration" / "calibration.json").read_text())
    bundle = Bundle.assemble(root / "models", spec, evidence=Evidence(min_face_ratio=0.5, min_duration_s=0.5,
                                                                      require_audio=False))
    return bundle.save(root / "bundle", extra={"extract": to_plain(TINY_EXTRACT)})


def _fail(monkeypatch: pytest.MonkeyPatch, a: Analyzer, name: str) -> None:
    model = next(m for m in a.bundle.members if m.name == name).model

    def broken(*args, **kwargs):
        raise RuntimeError(f"{name} is out of memory")

    monkeypatch.setattr(model, "forward", broken)


@pytest.mark.parametrize("gone", ["audio", "video"])
def test_a_failed_member_leaves_the_call_to_the_fallback_of_the_others(
        three_members: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch, gone: str) -> None:
    a = Analyzer(three_members, device="cpu", member_timeout_s=30.0)
    left = [n for n in a.bundle.names if n != gone]
    clip = _videos(tiny_corpus)[0]
    _fail(monkeypatch, a, gone)
    r = a.analyze(clip)
    fb = a.bundle.fallbacks[frozenset(left)]
    assert r.verdict in ("REAL", "UNCERTAIN", "FAKE"), (r.verdict, r.reason, r.message)
    assert r.failed_members[gone].startswith("error") and f"{gone} is out of memory" in r.failed_members[gone]
    assert f"judged by {', '.join(left)}" in r.message and f"{gone} gave no answer" in r.message
    assert r.members[gone]["judged"] is False and r.members[gone]["probability"] is None
    # The fallback's own calibrated fusion and thresholds made the call, not the full fusion's.
    p = {n: r.members[n]["probability"] for n in left}
    assert r.probability == pytest.approx(float(fb.fusion.prob(np.array([[p[n] for n in fb.members]]))[0]), abs=1e-6)
    assert r.thresholds == {"real_below": fb.thresholds.real_below, "fake_at": fb.thresholds.fake_at}
    assert all(seg["verdict"] == fb.thresholds.verdict(seg["probability"]) for seg in r.timeline)
    assert r.judged == sorted({a.bundle.modalities[n] for n in left})


def test_when_no_set_of_the_others_can_judge_the_file_abstains_naming_them(
        three_members: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = Analyzer(three_members, device="cpu", member_timeout_s=30.0)
    for name in ("video", "sync"):  # the voice alone never judges a face
        _fail(monkeypatch, a, name)
    r = a.analyze(_videos(tiny_corpus)[0])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "member_failed", None)
    assert "video (error" in r.message and "sync (error" in r.message
