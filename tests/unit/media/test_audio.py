"""Energy VAD and loudness normalisation on tone bursts and synthetic speech."""

from __future__ import annotations

import numpy as np
import pytest

from veracity.corpus.synth import speech
from veracity.corpus.synth.identity import sample_identity
from veracity.media.audio import (
    HOP_MS,
    EnergyVAD,
    apply_gain,
    energy_vad,
    frame_energy_db,
    hop_seconds,
    loudness_gain_db,
    rms_dbfs,
)

SR = 16000


def _bursts(intervals, duration=3.0, amp=0.3, noise=1e-3, seed=0) -> np.ndarray:
    """440 Hz tone bursts over a faint noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * SR)) / SR
    x = rng.normal(0.0, noise, t.size)
    for a, b in intervals:
        m = (t >= a) & (t < b)
        x[m] += amp * np.sin(2 * np.pi * 440 * t[m])
    return x.astype(np.float32)


def _utterance(seed: int, duration: float = 4.0):
    rng = np.random.default_rng(seed)
    segs = speech.plan_utterance(duration, rng)
    audio = speech.synthesize(segs, duration, sample_identity("v", rng), rng, SR)
    return segs, speech.finish(audio, rng, target_rms=0.08)


def test_frame_energy_db_levels_and_length():
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    e = frame_energy_db(sine, SR)
    assert e.size == 100  # ceil(16000 / 160)
    assert np.allclose(e, 10 * np.log10(0.5), atol=0.2)  # full-scale sine: -3 dBFS everywhere
    assert frame_energy_db(np.zeros(1601, np.float32), SR).size == 11
    assert (frame_energy_db(np.zeros(800, np.float32), SR) <= -119).all()
    assert frame_energy_db(np.zeros(0, np.float32), SR).size == 0


def test_tone_burst_segments_match_truth_within_50ms():
    truth = [(0.3, 0.8), (1.2, 1.5), (2.0, 2.7)]
    r = energy_vad(_bursts(truth), SR)
    assert len(r.segments) == 3
    for (a, b), (ta, tb) in zip(r.segments, truth, strict=True):
        assert abs(a - ta) <= 0.05 and abs(b - tb) <= 0.05
    assert r.speech_ratio == pytest.approx(1.5 / 3.0, abs=0.05)
    assert r.noise_db < -55 and r.level_db > -15
    assert r.threshold_db == pytest.approx(max(r.noise_db + 12, -55))
    assert r.mask.dtype == bool and r.mask.size == 300 and r.hop_s == pytest.approx(0.01)


def test_short_pauses_bridged_and_clicks_dropped():
    r = energy_vad(_bursts([(0.5, 0.9), (1.0, 1.4), (2.0, 2.03)]), SR)
    assert len(r.segments) == 1  # 100 ms pause < min_silence_ms; 30 ms click < min_speech_ms
    a, b = r.segments[0]
    assert abs(a - 0.5) <= 0.05 and abs(b - 1.4) <= 0.05
    # Leading and trailing silence is never bridged, however short.
    r = energy_vad(_bursts([(0.04, 1.0), (2.0, 2.96)]), SR)
    assert len(r.segments) == 2
    assert 0.0 < r.segments[0][0] <= 0.04 and 2.96 <= r.segments[1][1] < 3.0


def test_no_contrast_means_no_speech():
    # Documented limit: with (almost) no pause the noise percentile lands on the speech
    # itself, so a file with < margin_db of dynamic range is judged speech-free.
    r = energy_vad(_bursts([(0.02, 2.98)]), SR)
    assert r.speech_ratio == 0.0
    assert r.level_db - r.noise_db < 12.0
    r = energy_vad(_bursts([(0.02, 2.98)]), SR, noise_percentile=0.5)  # a lower percentile finds it
    assert r.segments == [(pytest.approx(0.01, abs=0.02), pytest.approx(2.99, abs=0.02))]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_vad_covers_synthetic_speech(seed):
    segs, audio = _utterance(seed)
    r = energy_vad(audio, SR)
    centres = (np.arange(r.mask.size) + 0.5) * r.hop_s
    voiced = np.zeros(r.mask.size, bool)
    for s in segs:
        if s.kind != "pause":
            voiced |= (centres >= s.start) & (centres < s.end)
    recall = (r.mask & voiced).sum() / voiced.sum()
    precision = (r.mask & voiced).sum() / r.mask.sum()
    assert recall > 0.93  # nearly every voiced hop is found
    assert precision > 0.8  # the rest is mostly pauses shorter than min_silence_ms, bridged
    assert 0.3 < r.speech_ratio < 0.95
    assert abs(r.speech_ratio - voiced.mean()) < 0.15
    assert r.segments[0][0] >= 0.0 and r.segments[-1][1] <= 4.0


def test_silence_and_steady_noise_are_not_speech():
    rng = np.random.default_rng(0)
    for audio in (
        np.zeros(3 * SR, np.float32),
        rng.normal(0, 1e-3, 3 * SR).astype(np.float32),  # -60 dBFS hiss, below the floor
        rng.normal(0, 3e-2, 3 * SR).astype(np.float32),  # audible but steady: no contrast
        np.zeros(0, np.float32),
    ):
        r = energy_vad(audio, SR)
        assert r.speech_ratio == 0.0 and r.segments == []
        assert not r.mask.any()


def test_streaming_equals_one_shot():
    _, audio = _utterance(5)
    one = EnergyVAD(SR)
    one.feed(audio)
    ref = one.finish()
    rng = np.random.default_rng(1)
    vad = EnergyVAD(SR)
    pos = 0
    while pos < audio.size:
        n = int(rng.choice([0, 1, 7, 160, 399, 1000, 4096]))
        vad.feed(audio[pos : pos + n])
        pos += n
    got = vad.finish()
    assert np.array_equal(got.mask, ref.mask)
    assert got.segments == ref.segments
    assert np.allclose(vad.energies_db(), one.energies_db(), atol=1e-9)
    assert (got.threshold_db, got.speech_ratio) == pytest.approx((ref.threshold_db, ref.speech_ratio))
    with pytest.raises(RuntimeError):
        vad.feed(audio[:10])


def test_streaming_keeps_only_energies():
    vad = EnergyVAD(SR)
    chunk = np.zeros(SR, np.float32)
    for _ in range(30):
        vad.feed(chunk)
    assert vad._buf.size < 2 * vad.frame  # not the 480k samples fed
    assert vad.finish().mask.size == 3000


def test_gain_reaches_target_without_clipping():
    _, audio = _utterance(2)
    quiet = audio * 0.1  # about -42 dBFS
    gain = loudness_gain_db(rms_dbfs(quiet), -23.0, peak=float(np.abs(quiet).max()))
    out = apply_gain(quiet, gain)
    assert out.dtype == np.float32
    assert abs(rms_dbfs(out) - (-23.0)) < 0.5
    assert np.abs(out).max() <= 0.99 + 1e-6
    # A spiky signal: the peak limits the gain, so the target is not reached but nothing clips.
    spiky = np.zeros(SR, np.float32)
    spiky[::1000] = 0.5
    gain = loudness_gain_db(rms_dbfs(spiky), -23.0, peak=0.5)
    out = apply_gain(spiky, gain)
    assert np.abs(out).max() == pytest.approx(0.99, abs=1e-4)
    assert rms_dbfs(out) < -23.0


def test_gain_caps_and_attenuates():
    assert loudness_gain_db(-120.0) == 30.0  # silence is not blown up
    assert loudness_gain_db(-10.0) == pytest.approx(-13.0)  # too loud: attenuate
    assert loudness_gain_db(rms_dbfs(np.zeros(0))) == 30.0
    assert rms_dbfs(np.full(100, 0.5)) == pytest.approx(20 * np.log10(0.5))
    loud = apply_gain(np.array([0.5, -0.9], np.float32), 6.0)
    assert loud.max() <= 1.0 and loud.min() >= -1.0


@pytest.mark.parametrize("rate", [16000, 22050, 8000])
def test_hop_is_whole_samples_and_reported_with_the_mask(rate):
    # The hop a mask was made with travels with it (VadResult.hop_s, stored by extraction):
    # at 22.05 kHz it is 220 samples, not the nominal 10 ms a reader might assume.
    res = energy_vad(np.zeros(rate // 2, np.float32), rate)
    assert res.hop_s == EnergyVAD(rate).hop_s == hop_seconds(rate) == round(HOP_MS * rate / 1000) / rate
    assert hop_seconds(16000) == 0.01
