"""Speech-like audio from a source-filter model, and the mouth motion it implies.

An utterance is planned as words of syllables (optional consonant onset + vowel).
Voiced sound is additive synthesis of glottal harmonics shaped by the vowel's formants;
consonants are shaped noise. The same plan gives the mouth opening per video frame, so
a real clip's lips move with what is heard. The "vocoder" re-synthesises audio from a
smoothed magnitude spectrogram with Griffin-Lim phase, leaving the phase and
spectral-envelope artifacts that neural vocoders are known for (ASVspoof).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from veracity.corpus.synth.identity import Identity

# (F1, F2, F3) in Hz for an adult low voice, and how far the jaw opens.
VOWELS = {
    "a": ((730, 1090, 2440), 1.00),
    "e": ((530, 1840, 2480), 0.60),
    "i": ((290, 2250, 3000), 0.28),
    "o": ((570, 840, 2410), 0.75),
    "u": ((320, 870, 2240), 0.38),
}
_BANDWIDTHS = (90.0, 110.0, 170.0)


@dataclass(frozen=True)
class Segment:
    """A stretch of an utterance: 'vowel', 'fricative', 'plosive' or 'pause'."""

    kind: str
    start: float
    end: float
    vowel: str = ""
    level: float = 1.0  # syllable stress: louder syllables also open the jaw wider


def plan_utterance(duration: float, rng: np.random.Generator) -> list[Segment]:
    """Draw syllables and pauses that fill ``duration`` seconds (leading silence included)."""
    segs: list[Segment] = []
    t = float(rng.uniform(0.05, 0.35))
    segs.append(Segment("pause", 0.0, t))
    vowels = list(VOWELS)
    while t < duration - 0.25:
        for _ in range(int(rng.integers(1, 4))):  # syllables in a word
            if rng.random() < 0.7:
                kind = "fricative" if rng.random() < 0.5 else "plosive"
                dur = float(rng.uniform(0.05, 0.10) if kind == "fricative" else rng.uniform(0.04, 0.07))
                segs.append(Segment(kind, t, t + dur))
                t += dur
            dur = float(rng.uniform(0.09, 0.22))
            segs.append(
                Segment("vowel", t, t + dur, vowels[int(rng.integers(len(vowels)))], float(rng.uniform(0.6, 1.0)))
            )
            t += dur
        gap = float(rng.uniform(0.06, 0.25) if rng.random() < 0.8 else rng.uniform(0.3, 0.5))
        segs.append(Segment("pause", t, t + gap))
        t += gap
    return [s for s in segs if s.start < duration]


def _ramp_envelope(n: int, sr: int, segs: list[Segment], kinds: tuple[str, ...], ramp_s: float = 0.015) -> np.ndarray:
    env = np.zeros(n, dtype=np.float32)
    r = max(1, int(ramp_s * sr))
    for s in segs:
        if s.kind not in kinds:
            continue
        a, b = int(s.start * sr), min(n, int(s.end * sr))
        if b - a < 2:
            continue
        # Open vowels are intrinsically louder than close ones (by a few dB in real speech).
        gain = s.level * (0.55 + 0.45 * VOWELS[s.vowel][1]) if s.kind == "vowel" else 1.0
        seg = np.full(b - a, gain, dtype=np.float32)
        k = min(r, (b - a) // 2)
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k, dtype=np.float32))
        seg[:k] *= ramp
        seg[-k:] *= ramp[::-1]
        env[a:b] = np.maximum(env[a:b], seg)
    return env


def synthesize(
    segs: list[Segment], duration: float, voice: Identity, rng: np.random.Generator, sr: int = 16000
) -> np.ndarray:
    """Render an utterance plan with one identity's voice (float32 mono, peak ~0.5)."""
    n = int(round(duration * sr))
    t = np.arange(n, dtype=np.float64) / sr
    hop = 80  # 5 ms control rate
    tc = np.arange(0, n + hop, hop) / sr

    # Pitch: declination over the phrase, slow intonation and a little jitter.
    phase_off = rng.uniform(0, 2 * np.pi)
    f0c = voice.f0 * (1.0 - 0.08 * tc / max(duration, 1e-3) + 0.06 * np.sin(2 * np.pi * 0.7 * tc + phase_off))
    f0c *= 1.0 + 0.01 * rng.standard_normal(len(tc))
    # Formant targets per control step, glided between vowels.
    formants = np.zeros((len(tc), 3))
    cur = np.array(VOWELS["e"][0], dtype=np.float64)
    for s in segs:
        if s.kind == "vowel":
            target = np.array(VOWELS[s.vowel][0], dtype=np.float64) * rng.uniform(0.95, 1.05, 3)
            a, b = np.searchsorted(tc, s.start), np.searchsorted(tc, s.end)
            formants[a:b] = target
            cur = target
        else:
            a, b = np.searchsorted(tc, s.start), np.searchsorted(tc, s.end)
            formants[a:b] = cur
    formants[formants[:, 0] == 0] = cur
    formants = signal.savgol_filter(formants, 9, 2, axis=0) * voice.formant_scale

    f0 = np.interp(t, tc, f0c)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    kmax = int(7600 // (voice.f0 * 0.85))
    voiced = np.zeros(n, dtype=np.float64)
    bw = np.array(_BANDWIDTHS)
    for k in range(1, kmax + 1):
        fk = k * f0c  # harmonic frequency at control rate
        amp = k ** (-voice.spectral_tilt) * 8.0
        gain = np.zeros_like(fk)
        for j in range(3):
            gain += 1.0 / (1.0 + ((fk - formants[:, j]) / bw[j]) ** 2) * (1.0 / (j + 1))
        gain = amp * (gain + 0.02) * (fk < 7600)
        voiced += np.interp(t, tc, gain) * np.sin(k * phase)
    # Flatten the short-time loudness that formant positions happen to give, so loudness
    # follows the planned envelope (stress x openness) and not which harmonic F1 hits.
    win = np.hanning(int(0.03 * sr))
    local = np.sqrt(signal.fftconvolve(voiced**2, win / win.sum(), mode="same").clip(min=0)) + 1e-3
    voiced = voiced / local
    voiced /= np.max(np.abs(voiced)) + 1e-9

    vowel_env = _ramp_envelope(n, sr, segs, ("vowel",))
    noise = rng.standard_normal(n)
    breath = voice.breathiness * signal.lfilter(*signal.butter(2, [1000, 6000], "bandpass", fs=sr), noise)
    out = (voiced + breath) * vowel_env

    fric_env = _ramp_envelope(n, sr, segs, ("fricative",), 0.01)
    lo = float(rng.uniform(2500, 4500))
    fric = signal.lfilter(*signal.butter(2, [lo, 7500], "bandpass", fs=sr), rng.standard_normal(n))
    out += 0.15 * fric * fric_env  # fricatives sit 10-20 dB below vowels
    burst_env = np.zeros(n, dtype=np.float32)
    for s in segs:
        if s.kind == "plosive":  # closure then a short release burst
            a = int((s.start + 0.7 * (s.end - s.start)) * sr)
            b = min(n, a + int(0.015 * sr))
            burst_env[a:b] = np.hanning(max(b - a, 1))[: b - a]
    out += 0.3 * signal.lfilter(*signal.butter(2, 1500, "highpass", fs=sr), rng.standard_normal(n)) * burst_env

    # A short random room response so recordings are not dry.
    ir_len = int(rng.uniform(0.02, 0.08) * sr)
    ir = rng.standard_normal(ir_len) * np.exp(-np.arange(ir_len) / (ir_len / 5))
    ir[0] = 1.0 / float(rng.uniform(0.08, 0.25))
    out = signal.fftconvolve(out, ir / np.abs(ir).sum() * 4.0)[:n]
    out /= np.max(np.abs(out)) + 1e-9
    return (0.5 * out).astype(np.float32)


def mouth_track(segs: list[Segment], duration: float, fps: int, rng: np.random.Generator) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame implied by an utterance plan.

    Vowels open the jaw by their openness, fricatives barely, plosives close it; the
    jaw moves with a ~40 ms lag like a real articulator.
    """
    n_frames = int(round(duration * fps))
    sub = 8  # evaluate at 8x the frame rate, then average into frames
    tt = (np.arange(n_frames * sub) + 0.5) / (fps * sub)
    target = np.zeros_like(tt)
    for s in segs:
        m = (tt >= s.start) & (tt < s.end)
        if s.kind == "vowel":
            target[m] = VOWELS[s.vowel][1] * s.level
        elif s.kind == "fricative":
            target[m] = 0.15
    alpha = 1.0 - np.exp(-1.0 / (0.04 * fps * sub))
    out = signal.lfilter([alpha], [1, alpha - 1], target)
    return np.clip(out.reshape(n_frames, sub).mean(axis=1), 0.0, 1.0).astype(np.float32)


def vocode(audio: np.ndarray, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """Re-synthesise audio the way a cheap neural vocoder would.

    The magnitude spectrogram is smoothed across frequency (an envelope with few bands
    loses harmonic detail) and the phase is rebuilt with a few Griffin-Lim iterations
    from a random start, which leaves phasiness and smeared harmonics.
    """
    nfft, hop = 512, 128
    _, _, z = signal.stft(audio, fs=sr, nperseg=nfft, noverlap=nfft - hop)
    mag = np.abs(z)
    bands = int(rng.integers(28, 56))
    kernel = np.hanning(max(3, (mag.shape[0] // bands) | 1))
    kernel /= kernel.sum()
    # Mix smoothed envelope with the original so pitch survives but fine structure blurs.
    smooth = signal.convolve(mag, kernel[:, None], mode="same")
    keep = float(rng.uniform(0.3, 0.6))
    mag = keep * mag + (1 - keep) * smooth
    # Band limit: many vocoders at 16 kHz roll off early.
    freqs = np.linspace(0, sr / 2, mag.shape[0])
    mag *= 1.0 / (1.0 + (freqs / float(rng.uniform(4500, 7000))) ** 8)[:, None]
    angles = np.exp(2j * np.pi * rng.random(mag.shape))
    n = len(audio)
    y = np.zeros(n)
    for _ in range(int(rng.integers(6, 16))):
        _, y = signal.istft(mag * angles, fs=sr, nperseg=nfft, noverlap=nfft - hop)
        y = y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))
        _, _, z = signal.stft(y, fs=sr, nperseg=nfft, noverlap=nfft - hop)
        angles = np.exp(1j * np.angle(z))
    y /= np.max(np.abs(y)) + 1e-9
    return (0.5 * y).astype(np.float32)


def finish(audio: np.ndarray, rng: np.random.Generator, target_rms: float) -> np.ndarray:
    """Add a recording noise floor and set loudness (same treatment for every class)."""
    snr_db = float(rng.uniform(25, 40))
    rms = float(np.sqrt(np.mean(audio**2))) + 1e-9
    noisy = audio + rng.standard_normal(len(audio)).astype(np.float32) * rms / (10 ** (snr_db / 20))
    noisy *= target_rms / (float(np.sqrt(np.mean(noisy**2))) + 1e-9)
    return np.clip(noisy, -0.99, 0.99).astype(np.float32)
