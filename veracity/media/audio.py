"""Voice activity detection and loudness normalisation for the audio branch.

The VAD is energy based with an adaptive threshold: the noise floor is a low percentile
of the short-time energies of the file itself, and speech is whatever rises
``margin_db`` above it (and above an absolute floor, so digital silence or a faint hiss
is never speech). Short speech islands are dropped and short pauses between words are
bridged, the usual hangover smoothing of energy VADs (e.g. ITU-T G.729 Annex B, whose
full feature set is more than a clean, close-talk deepfake corpus needs).

:class:`EnergyVAD` is streaming: audio is fed in chunks as it is decoded and only one
energy per hop is kept (a 10-minute file costs ~60k floats, not 9.6M samples).
Hop ``k`` stands for the interval ``[k * hop_s, (k + 1) * hop_s)``; its analysis frame
is centred on that interval, so segment times need no offset correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12  # energy floor: digital silence reads -120 dB instead of -inf
FLOOR_DB = -120.0
# Time resolution of the VAD mask: 10 ms, the usual speech-analysis hop (160 samples at
# 16 kHz, the log-mel hop of the audio models). Extraction stores the hop it used with the
# mask (features.ClipRecord.vad_hop_s); a reader of a stored mask takes it from there.
HOP_MS = 10.0


@dataclass
class VadResult:
    """Speech activity of one file.

    Attributes:
        mask: bool per hop, True where speech.
        hop_s: hop duration in seconds (mask[k] covers ``[k * hop_s, (k + 1) * hop_s)``).
        segments: speech intervals ``(start_s, end_s)``, sorted and disjoint.
        speech_ratio: fraction of hops that are speech.
        threshold_db: energy threshold used (dBFS).
        noise_db: estimated noise floor (low percentile of hop energies, dBFS).
        level_db: loud level (high percentile of hop energies, dBFS).
    """

    mask: np.ndarray
    hop_s: float
    segments: list[tuple[float, float]]
    speech_ratio: float
    threshold_db: float
    noise_db: float
    level_db: float


def _samples(ms: float, sample_rate: int) -> int:
    return max(1, int(round(ms * sample_rate / 1000.0)))


def hop_seconds(sample_rate: int, hop_ms: float = HOP_MS) -> float:
    """The hop :class:`EnergyVAD` uses at ``sample_rate``: ``hop_ms`` rounded to whole samples.

    Args:
        sample_rate: audio rate in Hz.
        hop_ms: the nominal hop.

    Returns:
        Seconds per hop (exactly 0.01 at 16 kHz; 220 / 22050 s at 22.05 kHz).
    """
    return _samples(hop_ms, sample_rate) / int(sample_rate)


class EnergyVAD:
    """Streaming energy VAD with an adaptive threshold.

    Call :meth:`feed` with consecutive chunks of mono audio, then :meth:`finish`.

    Args:
        sample_rate: audio rate in Hz (the data contract's; no default of its own).
        frame_ms: analysis window; 25 ms spans a few pitch periods of any voice.
        hop_ms: time resolution of the mask (:data:`HOP_MS`; the result states the exact
            hop in seconds, see :func:`hop_seconds`).
        margin_db: how far above the noise floor speech must be.
        min_speech_ms: shorter speech islands are dropped (clicks, plosive-only blips).
        min_silence_ms: shorter pauses inside speech are bridged (between syllables).
        abs_floor_db: energies below this (dBFS) are never speech.
        noise_percentile: percentile of hop energies taken as the noise floor.
        level_percentile: percentile of hop energies reported as the loud level.
    """

    def __init__(
        self,
        sample_rate: int,
        frame_ms: float = 25.0,
        hop_ms: float = HOP_MS,
        margin_db: float = 12.0,
        min_speech_ms: float = 60,
        min_silence_ms: float = 150,
        abs_floor_db: float = -55.0,
        noise_percentile: float = 10.0,
        level_percentile: float = 95.0,
    ):
        self.sample_rate = int(sample_rate)
        self.frame = _samples(frame_ms, sample_rate)
        self.hop = _samples(hop_ms, sample_rate)
        if self.frame < self.hop:
            raise ValueError(f"frame_ms ({frame_ms}) must be >= hop_ms ({hop_ms})")
        self.hop_s = hop_seconds(self.sample_rate, hop_ms)
        self.margin_db = float(margin_db)
        self.min_speech_hops = int(round(min_speech_ms / 1000.0 / self.hop_s))
        self.min_silence_hops = int(round(min_silence_ms / 1000.0 / self.hop_s))
        self.abs_floor_db = float(abs_floor_db)
        self.noise_percentile = float(noise_percentile)
        self.level_percentile = float(level_percentile)
        # Frame k covers padded-stream samples [k*hop, k*hop + frame), where the padded
        # stream is `lead` virtual zeros then the audio: the frame is centred on hop k.
        self._lead = self.frame // 2 - self.hop // 2
        self._buf = np.zeros(self._lead, dtype=np.float64)  # squares from _buf_start on
        self._buf_start = 0  # padded-stream index of _buf[0]
        self._k = 0  # next hop to compute
        self._n = 0  # real samples received
        self._sums: list[np.ndarray] = []
        self._finished = False

    def _drain(self, upto_k: int) -> None:
        """Compute frame sums for hops [_k, upto_k) from the buffer, then trim it."""
        if upto_k <= self._k:
            return
        off = self._k * self.hop - self._buf_start
        span = self._buf[off : off + (upto_k - self._k - 1) * self.hop + self.frame]
        windows = np.lib.stride_tricks.sliding_window_view(span, self.frame)[:: self.hop]
        self._sums.append(windows.sum(axis=1))
        self._k = upto_k
        keep = self._k * self.hop - self._buf_start
        self._buf = self._buf[keep:].copy()
        self._buf_start += keep

    def feed(self, chunk: np.ndarray) -> None:
        """Add the next samples.

        Args:
            chunk: mono samples in [-1, 1] (any float or int dtype already scaled).

        Raises:
            RuntimeError: after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("feed() after finish()")
        x = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        self._buf = np.concatenate([self._buf, x * x])
        self._n += x.size
        received = self._lead + self._n  # padded-stream samples available
        ready = (received - self.frame) // self.hop + 1 if received >= self.frame else 0
        self._drain(ready)

    def energies_db(self) -> np.ndarray:
        """Per-hop energies (dBFS) computed so far (all of them after :meth:`finish`)."""
        sums = np.concatenate(self._sums) if self._sums else np.zeros(0)
        k = np.arange(sums.size)
        start = np.clip(k * self.hop - self._lead, 0, self._n)
        end = np.clip(k * self.hop - self._lead + self.frame, 0, self._n)
        # Edge frames average over the real samples they hold, not over virtual zeros.
        count = np.maximum(end - start, 1)
        return 10.0 * np.log10(sums / count + _EPS)

    def finish(self) -> VadResult:
        """Close the stream and decide speech per hop.

        Returns:
            The :class:`VadResult`; an empty or silent input has no segments and ratio 0.
        """
        if not self._finished:
            n_hops = -(-self._n // self.hop)
            need = (n_hops - 1) * self.hop + self.frame - (self._buf_start + self._buf.size)
            if n_hops > 0 and need > 0:
                self._buf = np.concatenate([self._buf, np.zeros(need)])
            self._drain(n_hops)
            self._buf = np.zeros(0)
            self._finished = True
        e = self.energies_db()
        if e.size == 0:
            return VadResult(np.zeros(0, bool), self.hop_s, [], 0.0, self.abs_floor_db, FLOOR_DB, FLOOR_DB)
        noise = float(np.percentile(e, self.noise_percentile))
        level = float(np.percentile(e, self.level_percentile))
        # A steady signal (level - noise < margin) has no speech/pause contrast and so
        # gets no speech: an energy VAD cannot tell a steady hum from talk without pauses.
        threshold = max(noise + self.margin_db, self.abs_floor_db)
        mask = e > threshold
        mask = _fill_short(mask, False, self.min_silence_hops)  # bridge short pauses first
        mask = _fill_short(mask, True, self.min_speech_hops)  # then drop short islands
        return VadResult(
            mask=mask,
            hop_s=self.hop_s,
            segments=_segments(mask, self.hop_s, self._n / self.sample_rate),
            speech_ratio=float(mask.mean()),
            threshold_db=threshold,
            noise_db=noise,
            level_db=level,
        )


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values as (start, end, value)."""
    if mask.size == 0:
        return []
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    bounds = np.concatenate([[0], change, [mask.size]])
    return [(int(a), int(b), bool(mask[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _fill_short(mask: np.ndarray, value: bool, min_len: int) -> np.ndarray:
    """Flip runs of ``value`` shorter than ``min_len`` hops.

    For pauses (value False) only interior runs are bridged: leading or trailing
    silence is not speech however short.
    """
    out = mask.copy()
    if min_len <= 1:
        return out
    runs = _runs(mask)
    for i, (a, b, v) in enumerate(runs):
        if v != value or b - a >= min_len:
            continue
        if not value and (i == 0 or i == len(runs) - 1):
            continue
        out[a:b] = not value
    return out


def _segments(mask: np.ndarray, hop_s: float, duration: float) -> list[tuple[float, float]]:
    return [
        (round(a * hop_s, 6), round(min(b * hop_s, duration), 6))
        for a, b, v in _runs(mask)
        if v
    ]


def frame_energy_db(
    audio: np.ndarray, sample_rate: int, frame_ms: float = 25.0, hop_ms: float = HOP_MS
) -> np.ndarray:
    """Short-time energy per hop, in dBFS (a full-scale sine reads about -3 dB).

    Args:
        audio: mono samples in [-1, 1].
        sample_rate: audio rate in Hz.
        frame_ms: analysis window centred on each hop.
        hop_ms: hop; the result has ``ceil(len(audio) / hop)`` values.

    Returns:
        float64 energies, -120 dB for digital silence.
    """
    vad = EnergyVAD(sample_rate, frame_ms, hop_ms)
    _feed_chunked(vad, audio)
    vad.finish()
    return vad.energies_db()


def energy_vad(audio: np.ndarray, sample_rate: int, **kw) -> VadResult:
    """One-shot :class:`EnergyVAD` over a whole signal.

    Args:
        audio: mono samples in [-1, 1].
        sample_rate: audio rate in Hz.
        **kw: any other :class:`EnergyVAD` argument.

    Returns:
        The :class:`VadResult`.
    """
    vad = EnergyVAD(sample_rate, **kw)
    _feed_chunked(vad, audio)
    return vad.finish()


def _feed_chunked(vad: EnergyVAD, audio: np.ndarray, chunk_s: float = 10.0) -> None:
    # Chunks bound the float64 temporaries (a 10-min file at once would need ~0.2 GB) and are
    # faster than one huge feed; the energies do not depend on how the audio is cut.
    x = np.asarray(audio).reshape(-1)
    step = max(1, int(chunk_s * vad.sample_rate))
    for i in range(0, x.size, step):
        vad.feed(x[i : i + step])


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dBFS (-120 for empty or silent input).

    Args:
        audio: samples in [-1, 1].

    Returns:
        ``20 * log10(rms)``.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return FLOOR_DB
    return float(10.0 * np.log10(np.mean(x * x) + _EPS))


def loudness_gain_db(
    rms_db: float, target_dbfs: float = -23.0, peak: float | None = None, max_gain_db: float = 30.0
) -> float:
    """Gain that brings a signal's RMS to a target level without clipping.

    Args:
        rms_db: the signal's RMS in dBFS (e.g. :func:`rms_dbfs` of its speech).
        target_dbfs: wanted RMS level; -23 dBFS leaves headroom for speech peaks.
        peak: the signal's largest absolute sample; when given, the gain keeps it <= 0.99.
        max_gain_db: cap on amplification, so near-silence is not blown up into noise.

    Returns:
        Gain in dB (negative to attenuate).
    """
    gain = target_dbfs - rms_db
    if peak is not None and peak > 0:
        gain = min(gain, 20.0 * np.log10(0.99 / peak))
    return float(min(gain, max_gain_db))


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale audio by a gain in dB.

    Args:
        audio: samples in [-1, 1].
        gain_db: gain in dB.

    Returns:
        float32 samples clipped to [-1, 1].
    """
    x = np.asarray(audio, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))
    return np.clip(x, -1.0, 1.0)
