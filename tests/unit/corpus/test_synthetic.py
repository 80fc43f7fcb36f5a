"""The synthetic corpus: real media, every family labelled, learnable but not trivially separable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from veracity.config import ConfigError, GenerateConfig
from veracity.corpus import manifest
from veracity.corpus.synth import generate, plan_corpus
from veracity.corpus.synth.families import LABELS
from veracity.corpus.synth.identity import sample_identity
from veracity.corpus.synth.speech import mouth_track, plan_utterance, synthesize, vocode


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray, av.container.InputContainer]:
    with av.open(str(path)) as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        info = (vs.codec_context.name, as_.codec_context.name, as_.rate, as_.channels)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return frames, audio, info


def test_plan_covers_every_family_with_its_labels() -> None:
    specs, splits, _ = plan_corpus(GenerateConfig())
    methods = {s.method for s in specs}
    assert methods == set(LABELS)
    for s in specs:
        if s.other is not None:  # donors, drivers and voices never cross a split
            assert splits[s.other.name] == splits[s.identity.name]
    assert len({s.video_id for s in specs}) == len(specs)
    assert 200 <= len(specs) <= 600  # "a few hundred clips" by default


def test_methods_per_identity_balances_methods_and_varies_combinations() -> None:
    cfg = GenerateConfig(n_identities=24, real_per_identity=2, methods_per_identity=3,
                         split_ratios={"train": 0.5, "val": 0.25, "test": 0.25})
    specs, splits, _ = plan_corpus(cfg)
    per_identity: dict[str, list[str]] = {}
    for s in specs:
        per_identity.setdefault(s.identity.name, []).append(s.method)
    assert all(sorted(m).count("real") == 2 and len(m) == 5 and len(set(m)) == 4 for m in per_identity.values())
    for split in ("train", "val", "test"):
        fakes = [s.method for s in specs if splits[s.identity.name] == split and s.method != "real"]
        counts = {m: fakes.count(m) for m in cfg.methods}
        assert max(counts.values()) - min(counts.values()) <= 1, (split, counts)
    combos = {tuple(sorted(set(m) - {"real"})) for m in per_identity.values()}
    assert len(combos) >= 6  # not a fixed rotation through two halves of the method list
    with pytest.raises(ConfigError, match="methods_per_identity"):
        plan_corpus(GenerateConfig(methods_per_identity=7))


def test_plan_refuses_splits_without_a_donor() -> None:
    with pytest.raises(ConfigError, match="fewer than 2 identities"):
        plan_corpus(GenerateConfig(n_identities=3))


def test_manifest_rows_and_splits(tiny_corpus: Path, tiny_config: GenerateConfig) -> None:
    df = manifest.read(tiny_corpus / "manifest.csv")
    assert len(df) == tiny_config.n_identities * (1 + len(tiny_config.methods))
    for method, (video_label, audio_label) in LABELS.items():
        rows = df[df.method == method]
        assert len(rows) > 0, method
        assert (rows.video_label == video_label).all() and (rows.audio_label == audio_label).all()
        assert (rows.label == int(video_label or audio_label)).all()
    assert df.groupby("identity")["split"].nunique().max() == 1
    assert set(df.split) == {"train", "val", "test"}
    # File names do not reveal the family.
    assert not df.video_id.str.contains("|".join(LABELS)).any()


def test_clips_are_h264_aac_16k_with_expected_length(tiny_corpus: Path, tiny_config: GenerateConfig) -> None:
    df = manifest.read(tiny_corpus / "manifest.csv")
    for row in df.head(7).itertuples():
        frames, audio, (vcodec, acodec, rate, channels) = _decode(tiny_corpus / row.path)
        assert (vcodec, acodec, rate, channels) == ("h264", "aac", 16000, 1)
        assert frames[0].shape == (tiny_config.height, tiny_config.width, 3)
        assert abs(len(frames) / tiny_config.fps - row.duration_s) < 0.05
        assert abs(len(audio) / 16000 - row.duration_s) < 0.1
        assert 0.02 < float(np.sqrt(np.mean(audio**2))) < 0.2  # speech, not silence


def test_haar_frontal_detector_finds_faces(tiny_corpus: Path) -> None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    df = manifest.read(tiny_corpus / "manifest.csv")
    found = total = 0
    for row in df.itertuples():
        frames, _, _ = _decode(tiny_corpus / row.path)
        for f in frames[::3]:
            gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            found += len(cascade.detectMultiScale(gray, 1.1, 4, minSize=(24, 24))) > 0
            total += 1
    assert found / total >= 0.90, f"faces found in {found}/{total} frames"


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    cfg = GenerateConfig(seed=3, n_identities=3, real_per_identity=1, fakes_per_method=0,
                         methods=("lipsync", "voice"), width=64, height=64,
                         min_duration_s=0.8, max_duration_s=0.9, workers=2)

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a = digest(generate(cfg, tmp_path / "a").root)
    b = digest(generate(cfg.model_copy(update={"workers": 1}), tmp_path / "b").root)
    assert a == b
    assert len([k for k in a if k.endswith(".mp4")]) == 3
    c = digest(generate(cfg.model_copy(update={"seed": 4}), tmp_path / "c").root)
    assert c != a


def test_mouth_follows_speech_only_when_in_sync() -> None:
    rng = np.random.default_rng(0)
    corr_sync, corr_lipsync = [], []
    for seed in range(8):
        voice = sample_identity(f"v{seed}", rng)
        r = np.random.default_rng(seed)
        heard = plan_utterance(3.0, r)
        audio = synthesize(heard, 3.0, voice, r)
        env = np.sqrt(np.mean(audio[: 75 * 640].reshape(75, 640) ** 2, axis=1))
        mouth = mouth_track(heard, 3.0, 25, r)
        other = mouth_track(plan_utterance(3.0, r), 3.0, 25, r)
        corr_sync.append(np.corrcoef(env, mouth)[0, 1])
        corr_lipsync.append(np.corrcoef(env, other)[0, 1])
    # Loudness tracks jaw opening when the lips say what is heard (measured ~0.8), and
    # not at all when they say another utterance (the lipsync family; measured ~0.05).
    assert np.mean(corr_sync) > 0.65
    assert abs(np.mean(corr_lipsync)) < 0.25


def test_vocoder_keeps_timing_but_changes_the_signal() -> None:
    rng = np.random.default_rng(1)
    voice = sample_identity("v", rng)
    heard = plan_utterance(2.0, rng)
    audio = synthesize(heard, 2.0, voice, rng)
    fake = vocode(audio, rng)
    env = lambda x: np.sqrt(np.mean(x[: 50 * 640].reshape(50, 640) ** 2, axis=1))  # noqa: E731
    assert np.corrcoef(env(audio), env(fake))[0, 1] > 0.8  # same syllables, same timing
    assert np.corrcoef(audio, fake)[0, 1] < 0.5  # but not the same waveform (phase rebuilt)


# ----------------------------------------------------------------- no shortcut via global stats


def _global_stats(path: Path) -> np.ndarray:
    frames, audio, _ = _decode(path)
    fr = np.stack(frames[::4]).astype(np.float32)
    hist = np.concatenate(
        [np.histogram(fr[..., k], bins=8, range=(0, 255))[0] / fr[..., k].size for k in range(3)]
    )
    size = path.stat().st_size
    return np.concatenate(
        [[fr.mean(), size, len(frames), size / len(frames), np.sqrt(np.mean(audio**2))],
         fr.mean((0, 1, 2)), fr.std((0, 1, 2)), hist]
    )


def _cv_auc(x: np.ndarray, y: np.ndarray, model) -> float:
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return roc_auc_score(y, cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1])


@pytest.mark.integration
def test_global_statistics_do_not_separate_fakes(tmp_path: Path) -> None:
    cfg = GenerateConfig(seed=11, n_identities=12, real_per_identity=6, fakes_per_method=1,
                         width=96, height=96, min_duration_s=1.5, max_duration_s=2.0, workers=2)
    root = generate(cfg, tmp_path).root
    df = manifest.read(root / "manifest.csv")
    x = np.stack([_global_stats(root / p) for p in df.path])
    y = df.label.to_numpy(dtype=int)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "boosted trees": GradientBoostingClassifier(random_state=0),
    }
    aucs = {name: _cv_auc(x, y, m) for name, m in models.items()}
    assert max(aucs.values()) < 0.68, aucs
    # Positive control: the same features and models do catch a global shortcut when one exists.
    leaky = x.copy()
    leaky[:, 0] += y * 25.0  # fakes one between-clip spread brighter
    assert _cv_auc(leaky, y, models["boosted trees"]) > 0.9


# Every OpenCV dispatch target above the x86-64 baseline (names as OpenCV 4.14 accepts them;
# SSE/SSE2/SSE3 are the baseline itself), and Intel IPP held to its SSE4.2 code: what an
# older CPU would run.
OLDER_CPU = {"OPENCV_CPU_DISABLE": "AVX512-SKX,AVX512F,AVX2,FMA3,FP16,AVX,SSE4.2,SSE4.1,POPCNT,SSSE3",
             "OPENCV_IPP": "sse42"}


def test_generation_does_not_depend_on_the_cpu(tmp_path: Path) -> None:
    """The same corpus with OpenCV's CPU-specific kernels switched off: same bytes.

    Without ``cpu_independent_opencv`` one of these 18 clips (id003_002) came out different.
    """
    import os
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from veracity.config import GenerateConfig, SplitRatios;"
            "from veracity.corpus.synth import generate;"
            "generate(GenerateConfig(seed=11, n_identities=6, split_ratios=SplitRatios(train=0.34, val=0.33, test=0.33),"
            " real_per_identity=1, methods_per_identity=2, width=128, height=128, min_duration_s=1.0,"
            " max_duration_s=1.2, workers=1), Path(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / name)], env={**os.environ, **extra})
             for name, extra in (("default", {}), ("older_cpu", OLDER_CPU))]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]

    def digest(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "videos").glob("*.mp4"))}

    default, older = digest(tmp_path / "default"), digest(tmp_path / "older_cpu")
    assert len(default) == 18
    assert [k for k in default if default[k] != older.get(k)] == []
