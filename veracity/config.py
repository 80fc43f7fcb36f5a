"""Typed configuration: one pydantic model per ``params.yaml`` section.

Precedence is ``defaults < params.yaml < CLI overrides`` (DESIGN §5.3). Every model
forbids unknown keys, so a typo in ``params.yaml`` or on the command line fails with a
message that names the key instead of being silently ignored. Each stage writes the
configuration it actually ran with next to its outputs (:func:`write_resolved`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from veracity.contract import DataContract
from veracity.status import ExtractStatus  # re-exported: config's users name it from here

DEFAULT_PARAMS = Path("params.yaml")
RESOLVED_NAME = "config.resolved.yaml"

SYNTHETIC_METHODS = ("faceswap", "reenact", "neural", "lipsync", "voice", "av")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SplitRatios(_Section):
    """Fractions of identities per split; they must sum to 1."""

    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:.4f}")
        return self


class GenerateConfig(_Section):
    """The embedded synthetic audio-visual corpus (``veracity generate``)."""

    seed: int = 1337
    # 30 identities -> 18/6/6 by identity: enough held-out faces and voices for AUC per family.
    n_identities: int = Field(30, ge=3)
    split_ratios: SplitRatios = SplitRatios()
    # Reals and fakes per identity are balanced so a detector sees ~40% real clips.
    real_per_identity: int = Field(4, ge=1)
    fakes_per_method: int = Field(1, ge=0)
    methods: tuple[str, ...] = SYNTHETIC_METHODS
    # Fake methods per identity (null = all). Fewer methods and more identities make the
    # same number of clips from more people: detectors then have to learn manipulations,
    # not faces and voices. Within a split, counts per method differ by at most one and
    # the combinations vary from person to person.
    methods_per_identity: int | None = Field(None, ge=1)
    # Small frames keep the whole DAG inside CI's 2 cores; faces still span ~55% of the height,
    # well above the Haar cascade's 24 px minimum window.
    width: int = Field(128, ge=64, multiple_of=2)
    height: int = Field(128, ge=64, multiple_of=2)
    fps: int = Field(25, ge=5, le=60)
    min_duration_s: float = Field(3.0, gt=0.5)
    max_duration_s: float = Field(4.0, gt=0.5)
    sample_rate: int = 16000
    crf: int = Field(23, ge=0, le=51)
    # Each clip's CRF is drawn from crf +/- crf_jitter: varied compression, as in the wild, and
    # file size then says nothing about the label.
    crf_jitter: int = Field(4, ge=0, le=10)
    audio_bitrate: int = Field(48000, ge=16000)
    # Camera grain added after any manipulation, as a real capture pipeline would.
    grain: float = Field(3.0, ge=0)
    workers: int = Field(2, ge=1)

    # Keys that change how fast the corpus is made, never its bytes.
    EXECUTION_ONLY: ClassVar[set[str]] = {"workers"}

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        unknown = sorted(set(self.methods) - set(SYNTHETIC_METHODS))
        if unknown:
            raise ValueError(f"unknown synthetic methods {unknown}; known: {list(SYNTHETIC_METHODS)}")
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be >= min_duration_s")
        return self


CorpusSource = Literal["synthetic", "csv", "folder", "faceforensics", "dfdc", "fakeavceleb", "celebdf"]


class CorpusConfig(_Section):
    """Where the videos come from and how they become the one manifest (``veracity corpus``)."""

    source: CorpusSource = "synthetic"
    # Root of the raw corpus, tracked by data.dvc. Relative paths are relative to the repo.
    root: str = "data/raw"
    # Split ratios for layouts without an official split (DFDC, FakeAVCeleb, folders).
    split_ratios: SplitRatios = SplitRatios(train=0.7, val=0.15, test=0.15)
    seed: int = 0
    # FaceForensics++ compression level folder: raw (also 'c0'), c23 or c40.
    ff_compression: str = "c23"


class FeatureBounds(_Section):
    """Bounds for the extracted-features suite (``veracity validate --features``)."""

    # At least one model window per usable clip.
    min_frames: int = Field(16, ge=1)
    # Per usable clip, and on average over usable clips (the 90% target).
    min_face_ratio: float = Field(0.5, ge=0, le=1)
    min_mean_face_ratio: float = Field(0.9, ge=0, le=1)
    require_audio: bool = True
    min_speech_ratio: float = Field(0.05, ge=0, le=1)
    min_duration_s: float = Field(1.0, ge=0)
    max_duration_s: float = Field(7200.0, gt=0)
    # Share of clips whose status is not usable.
    max_failure_ratio: float = Field(0.02, ge=0, le=1)


class ValidateConfig(_Section):
    """Bounds for the manifest expectation suite (``veracity validate``)."""

    min_clips: int = Field(10, ge=1)
    # Share of fakes (label == 1) allowed in the whole manifest.
    min_fake_ratio: float = Field(0.2, ge=0, le=1)
    max_fake_ratio: float = Field(0.9, ge=0, le=1)
    # Clips per manipulation method (including 'real'), whole manifest.
    min_per_method: int = Field(5, ge=0)
    max_per_method: int | None = None
    # Every split must hold at least this many clips.
    min_per_split: int = Field(3, ge=0)
    required_splits: tuple[str, ...] = ("train", "val", "test")
    identity_disjoint: bool = True
    check_files: bool = True
    features: FeatureBounds = FeatureBounds()


class ContractConfig(_Section):
    """The data contract (see :mod:`veracity.contract`); read by extraction and training."""

    # 12.5 fps keeps every 2nd frame of 25 fps sources: enough for syllable-rate lip motion.
    fps: float = Field(12.5, gt=0, le=60)
    frames_per_window: int = Field(16, ge=2)
    # 64 px crops keep CPU training inside CI; raise for real data and pretrained backbones.
    face_size: int = Field(64, ge=16)
    face_margin: float = Field(0.25, ge=0, le=2)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    sample_rate: int = Field(16000, ge=8000)

    def build(self) -> DataContract:
        """The frozen :class:`DataContract` these params describe."""
        return DataContract(**self.model_dump())


class ExtractConfig(_Section):
    """Extraction of face crops, audio, VAD and flow (``veracity extract``)."""

    detector: Literal["haar"] = "haar"
    # Detection runs on a copy whose longest side is at most this: 720p costs what 256 px
    # does (6.7 ms vs 9.7 ms at 320 per Haar call, same recall on the benchmark clip).
    detect_max_side: int = Field(256, ge=64)
    # Run the detector on every n-th sampled frame; between detections a track follows the
    # face by the optical flow inside its crop. Measured on 30 corpus clips: every 4th frame
    # keeps crop centres within 0.9 px of per-frame detection at half the extraction time.
    detect_every: int = Field(4, ge=1)
    # In frames larger than detect_max_side, every n-th sampled frame (a multiple of
    # detect_every) is scanned whole, as is every detection while no face is tracked; the
    # detections between look only near the tracked faces, at their scale
    # (HaarFaceDetector.detect_near: 3 to 8 ms against 10 to 30 ms for a whole 720p or
    # 512 px frame). So a face that enters beside a tracked one is found within n frames
    # (16: 1.3 s at 12.5 fps). Smaller frames are scanned whole at every detection: the
    # synthetic corpus's 128 px frames keep the boxes every trained member saw (a local
    # search there saves 3.5 of 7.5 ms, and moves 89% of the boxes by up to 0.2 IoU).
    scan_every: int = Field(16, ge=1)
    # Smallest face searched, as a share of the shorter side; smaller costs more scales.
    min_face_frac: float = Field(0.1, gt=0, lt=1)
    iou_threshold: float = Field(0.3, gt=0, lt=1)
    max_missed: int = Field(4, ge=0)
    # Tracks shorter than this share of the sampled frames are dropped as spurious.
    min_track_frac: float = Field(0.2, ge=0, le=1)
    # Below this share of frames with a face, the clip is 'no_face' (crops still stored).
    min_face_ratio: float = Field(0.5, ge=0, le=1)
    flow: bool = True
    vad_margin_db: float = 12.0
    loudness_target_dbfs: float = -23.0
    # Clips outside these bounds get 'too_short' / 'too_long' / 'too_small'.
    min_duration_s: float = Field(1.0, gt=0)
    max_duration_s: float = Field(7200.0, gt=0)
    min_side: int = Field(32, ge=8)
    # Statuses that still count as usable clips (e.g. add no_audio for FaceForensics++).
    usable_statuses: tuple[ExtractStatus, ...] = ("ok",)
    # The stage fails when more than this share of clips is unusable.
    max_failure_ratio: float = Field(0.02, ge=0, le=1)
    workers: int = Field(2, ge=1)

    EXECUTION_ONLY: ClassVar[set[str]] = {"workers"}

    @model_validator(mode="after")
    def _scans_are_detections(self) -> ExtractConfig:
        if self.scan_every % self.detect_every:
            raise ValueError(f"scan_every ({self.scan_every}) must be a multiple of detect_every "
                             f"({self.detect_every}): a whole-frame scan is one of the detections")
        return self


class MemberConfig(_Section):
    """One ensemble member: which detector, what it learns, and how it is trained."""

    detector: str
    # This member's random seed (initialisation, window draws, augmentation); null takes
    # train.seed. Two members that differ only in seed are a deep ensemble of two.
    seed: int | None = None
    # Keyword overrides passed to create_detector (e.g. backbone, temporal encoder).
    overrides: dict[str, Any] = {}
    # Local weights to start from (never downloaded): a safetensors file of the whole
    # detector, timm backbone weights (file or directory), or a wav2vec2 directory.
    pretrained: str | None = None
    # What the member predicts: the clip label, or one modality's label.
    target: Literal["label", "video_label", "audio_label"] = "label"
    # If set, only these fake methods (plus reals) count as positives; other fakes are left
    # out of the loss (e.g. the lip-sync member learns "out of sync", not "any fake").
    target_methods: tuple[str, ...] | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    label_smoothing: float = Field(0.05, ge=0, lt=0.5)
    # "auto" weighs positives by n_neg / n_pos (self-blended twins count as positives); a
    # number sets it; null turns it off.
    pos_weight: float | Literal["auto"] | None = "auto"
    grad_clip: float | None = 1.0
    # Early stopping: epochs without a better validation AUC before stopping.
    patience: int = Field(4, ge=1)
    # The weights kept are the latest epoch's whose validation AUC is within this of the
    # best: on ~100 validation clips, AUCs that close are a tie, and the later epoch (lower
    # learning rate, more data seen) generalises better. Corpus seed 1's video member kept
    # epoch 3 (val 0.9845) over epoch 6 (0.9840); on 1000 clips of new people the two score
    # AUC 0.976 / 0.986, re-enactment 0.953 / 0.986. 0: the latest epoch with the best AUC.
    select_tolerance: float = Field(0.005, ge=0, lt=1)
    windows_per_clip: int = Field(2, ge=1)
    # Weight of the penalty on frame-to-frame jumps of per-frame scores (0 = off).
    temporal_consistency: float = Field(0.0, ge=0)
    # Weight of per-modality auxiliary losses (fusion models report aux logits).
    aux_weight: float = Field(0.5, ge=0)
    augment: bool = True
    augment_p: float = Field(0.5, ge=0, le=1)
    # SyncNet-style negatives: real windows whose audio is rolled 3-8 frames are added to
    # each batch as fakes. The lip-sync head barely beats chance without them.
    sync_negatives: bool = False
    # Self-blended pseudo-fakes (veracity.augment.self_blend): real-face windows of each
    # batch are appended again, blended with an altered copy of themselves, as video fakes.
    # It teaches the blending trace rather than the training identities.
    self_blend: bool = False
    # Lens softness (veracity.augment.capture_blur): every training window, real, fake or
    # blended, is blurred with probability 0.5 by a sigma up to this many crop pixels, so
    # that sharpness alone stops meaning "real" (0 = off).
    capture_blur: float = Field(0.0, ge=0)
    # Warm start: part -> member whose trained part (same architecture) initialises it,
    # e.g. {video: video_specialist, audio: audio_specialist, sync: lipsync} for a fusion
    # model. Read from the members directory (`veracity train --members-dir`).
    init_from: dict[Literal["video", "audio", "sync"], str] = {}
    # Keep the warm-started parts fixed (weights and norm statistics): only the new layers
    # learn, which is both faster and keeps each part what its specialist learnt.
    freeze_init: bool = False


class TrainConfig(_Section):
    """Training of every ensemble member (``veracity train --member NAME``)."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on CUDA: bf16 where supported, else fp16; CPU always runs fp32.
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    num_workers: int = Field(0, ge=0)
    # Debug mode: 1 epoch on 4 samples, to check a configuration end to end in seconds.
    debug: bool = False
    members: dict[str, MemberConfig] = {}


class EvaluateConfig(_Section):
    """Evaluation of the trained members (``veracity evaluate``)."""

    # Which member plays which role in the quality checks (video-only, audio-only, ...).
    roles: dict[Literal["video", "audio", "fusion", "lipsync"], str] = {}


class MetricsConfig(_Section):
    """How every stage computes the metrics it reports (see :mod:`veracity.metrics`)."""

    # Equal-width bins of every ECE and reliability table (train, evaluate, calibrate and
    # ensemble reports, hence the gate's max_ece): one value, so their ECEs compare. Ten,
    # because a held-out split has about 100 clips: more bins leave a few clips in each and
    # raise the ECE that even a perfectly calibrated model shows (metrics.ece_if_calibrated).
    ece_bins: int = Field(10, ge=1)


class PoolingConfig(_Section):
    """How one member's window scores become one video score (see ``metrics.pool``)."""

    how: Literal["mean", "max", "topk", "softmax"] = "mean"
    k: int = Field(4, ge=1)  # top-k mean: a short manipulated stretch is not diluted by the rest
    beta: float = Field(5.0, gt=0)  # softmax pooling: log-mean-exp / beta (mean at 0, max at inf)


class FusionConfig(_Section):
    """How calibrated member probabilities become one probability."""

    rule: Literal["weighted_mean", "stacking", "noisy_or"] = "stacking"
    members: tuple[str, ...] = ()  # members fused (and bundled); empty = every trained member
    weights: dict[str, float] = {}  # weighted_mean only; a missing member weighs 1
    # L2 penalty of the logistic stacker: validation has ~90 clips for a handful of inputs.
    stacking_l2: float = Field(1.0, ge=0)


class ThresholdConfig(_Section):
    """Three-way decision thresholds fitted on validation (REAL / UNCERTAIN / FAKE)."""

    # Share of real validation clips that may be called FAKE.
    target_fpr: float = Field(0.05, ge=0, lt=1)
    # Share of all validation clips that land between the two thresholds.
    target_uncertain: float = Field(0.10, ge=0, lt=1)


class DisagreementConfig(_Section):
    """When members split in a pattern validation never showed: UNCERTAIN (veracity.decision.Disagreement)."""

    enabled: bool = True
    k: int = Field(3, ge=1)  # neighbours in the member log-odds space
    # Share of validation clips past the bound (split-conformal): the bound new
    # in-distribution clips exceed at most this often.
    rate: float = Field(0.02, gt=0, lt=0.5)
    clip: float = Field(5.0, gt=0)  # member log-odds clipped to +/- this


class CalibrateConfig(_Section):
    """Everything fitted on validation scores (``veracity calibrate``): pooling per member,
    per-member calibrators, the fusion rule and the decision thresholds."""

    pooling: dict[str, PoolingConfig] = {}  # member -> rule; a missing member pools by mean
    # temperature | platt | isotonic | auto (the lowest cross-validated log-loss on val)
    method: Literal["temperature", "platt", "isotonic", "auto"] = "auto"
    folds: int = Field(5, ge=2)  # cross-validation folds for method=auto
    # method=auto considers isotonic only from this many validation clips on (it overfits
    # smaller sets; Niculescu-Mizil & Caruana 2005).
    isotonic_min_clips: int = Field(1000, ge=2)
    fusion: FusionConfig = FusionConfig()
    thresholds: ThresholdConfig = ThresholdConfig()
    disagreement: DisagreementConfig = DisagreementConfig()


class AttackConfig(_Section):
    """Robustness sweeps and gradient attacks on held-out clips (``veracity attack``)."""

    split: str = "test"
    # Frames between the windows scored under each condition (null: half a window, as
    # evaluation and the bundle score). Every condition, clean included, uses the same
    # windows, so the AUC drops compare like with like.
    window_stride: int | None = Field(None, ge=1)
    # Video corruptions: H.264 re-encode of the whole frame (then re-extraction) and
    # corruptions applied to the extracted face crops.
    crf: tuple[int, ...] = (23, 30, 35, 40)
    jpeg_quality: tuple[int, ...] = (90, 50, 20)
    downscale: tuple[float, ...] = (0.75, 0.5, 0.25)  # down by this factor, then back up
    noise_sigma: tuple[float, ...] = (0.02, 0.05, 0.1)  # Gaussian noise, fraction of full range
    blur_sigma: tuple[float, ...] = (0.5, 1.0, 2.0)  # Gaussian blur, pixels of the face crop
    brightness: tuple[float, ...] = (-0.3, -0.15, 0.15, 0.3)  # added to [0, 1] pixels
    # Audio corruptions.
    snr_db: tuple[float, ...] = (30.0, 20.0, 10.0)
    resample_hz: tuple[int, ...] = (8000,)  # down to this rate and back to the contract's
    lowpass_hz: tuple[float, ...] = (4000.0, 2000.0)
    gain_db: tuple[float, ...] = (-20.0, 10.0)
    # Gradient attacks (L-inf): on face crops in [0, 1] pixel units, on the waveform in
    # full-scale units. PGD is costly on CPU: it runs on the first `attack_clips` clips.
    fgsm_eps: tuple[float, ...] = (0.5 / 255, 2 / 255)
    pgd_eps: tuple[float, ...] = (0.5 / 255, 2 / 255)
    pgd_steps: int = Field(5, ge=1)
    audio_eps: tuple[float, ...] = (0.0005, 0.002)
    attack_clips: int = Field(24, ge=2)
    # The corruption and strength printed against gate.max_robustness_drop on the test split
    # (for information: the promotion gate reads the benchmark's re-encode drop).
    gate_corruption: str = "crf"
    gate_strength: float = 35


class ProfileConfig(_Section):
    """The bundle's reference profile (:mod:`veracity.profile`): when an input is out of distribution.

    Statistics are fitted on the train split, the threshold on the held-out splits
    (``threshold_splits``) so that ``target_rate`` of in-distribution people are flagged
    (the coverage it costs).
    """

    enabled: bool = True
    target_rate: float = Field(0.02, gt=0, lt=0.5)  # share of held-out in-distribution people flagged
    # Held out from the statistics; never the train split. New people lie out of profile
    # more often than held-out ones, so the more held-out people set the threshold the better.
    threshold_splits: tuple[str, ...] = Field(("val", "test"), min_length=1)
    method: Literal["mahalanobis", "knn"] = "mahalanobis"  # distance in each member's embedding space
    margin: float = Field(0.25, ge=0)  # fact bands widened by at least this (relative, or per unit)


class RealsConfig(_Section):
    """Authentic clips of people no split has seen, on which the shipped bundle's FAKE cuts are set.

    Validation holds the reals of a few people (40 clips of 20 by default), and a FAKE cut
    set on them misses its false-positive target on new people by chance: one person's
    clips score alike, so the cut rests on the top two or three people. The ensemble stage
    analyses these clips through the bundle's Analyzer (the served path, profile included)
    and sets every FAKE cut (fused, each modality alone, each fallback) on the ones it
    judges; the UNCERTAIN band stays ``calibrate.thresholds.target_uncertain`` of validation.
    """

    # synthetic: the `generate` section with this seed and these people, reals only;
    # folder: every video under `folder` (authentic footage of the deployment's kind; never
    # footage the bundle is evaluated on); none: keep calibrate's validation cuts.
    source: Literal["synthetic", "folder", "none"] = "synthetic"
    seed: int = 2029
    # One clip a person, many people: a person's clips score alike (the benchmark's false
    # positives cluster by person), so the cut's precision grows with people, not clips.
    n_identities: int = Field(300, ge=2)
    per_identity: int = Field(1, ge=1)  # authentic clips of each person
    folder: str | None = None
    workers: int = Field(2, ge=1)  # analysis processes, one bundle each

    # Keys that change how fast the reals are analysed, never the cuts.
    EXECUTION_ONLY: ClassVar[set[str]] = {"workers"}

    @model_validator(mode="after")
    def _check(self) -> RealsConfig:
        if self.source == "folder" and not self.folder:
            raise ValueError("reals.source is folder: set reals.folder to a directory of authentic videos")
        return self

    def corpus(self, generate: GenerateConfig) -> GenerateConfig:
        """The generator config of the synthetic reals: ``generate`` with this seed and these
        people, each with ``per_identity`` authentic clips and no fakes."""
        return GenerateConfig(**{**generate.model_dump(), "seed": self.seed, "n_identities": self.n_identities,
                                 "real_per_identity": self.per_identity, "fakes_per_method": 0,
                                 "methods_per_identity": None})


class EnsembleConfig(_Section):
    """The shipped bundle (``veracity ensemble``)."""

    onnx: bool = True  # export the members that ONNX can express, with a parity check
    onnx_tolerance: float = Field(1e-4, gt=0)  # max abs logit difference accepted
    # Evidence rules: a video without enough face or audio is ABSTAIN, never REAL.
    min_face_ratio: float = Field(0.5, ge=0, le=1)
    min_duration_s: float = Field(1.0, ge=0)
    # A file without usable audio (no stream, or silent): true = ABSTAIN (no_audio / silent);
    # false = judged by the video members alone, on the video-only thresholds calibrate
    # fitted on validation (the report says which modalities were judged). Members that
    # listen never score a file they cannot hear.
    require_audio: bool = False
    # Max abs window-logit difference allowed between the bundle's forward pass and the
    # training run's predictions, and between the written bundle reloaded and the one in
    # memory: beyond it the bundle would not be the model that was evaluated, and the stage
    # fails. Same weights on the same CPU differ by float summation order only (~1e-6).
    consistency_tolerance: float = Field(1e-4, gt=0)
    profile: ProfileConfig = ProfileConfig()
    reals: RealsConfig = RealsConfig()


class RegisterConfig(_Section):
    """MLflow registration and the promotion gate (``veracity register``)."""

    model_name: str = "veracity-detector"
    # The candidate becomes champion only if its held-out AUC is not below the champion's
    # (minus this margin), its ECE is within max_ece and its robustness drop within bound.
    auc_margin: float = Field(0.0, ge=0)


class GateConfig(_Section):
    """The quality bars a champion must meet, judged on the benchmark (people no split has seen).

    Each bar is compared with the benchmark's interval (``benchmark.confidence``), not with
    the point figure alone: a bundle fails a bar only when the whole interval is on the
    wrong side of it. A bundle exactly at a bar then passes with probability >= 97.5% at
    95% confidence, and one whose interval is clear of the bar fails, so the decision does
    not flip from one corpus draw to the next. The ensemble and attack stages print the
    same bars on the test split, for information.
    """

    min_auc: float = Field(0.99, ge=0, le=1)  # ensemble AUC: fails when the interval ends below it
    min_method_auc: float = Field(0.97, ge=0, le=1)  # the ensemble's AUC on each manipulation method
    # ECE after calibration: fails when the interval starts above it. The benchmark also
    # reports the ECE a perfectly calibrated model shows at its size (binned ECE is biased up).
    max_ece: float = Field(0.03, gt=0)
    # Ensemble AUC drop when the benchmark's clips are re-encoded (benchmark.reencode_crf).
    max_robustness_drop: float = Field(0.05, gt=0)
    # The false-positive rate on real clips fails when its interval starts above
    # calibrate.thresholds.target_fpr (the bundle accuses real people more often than it says).


class BenchmarkConfig(_Section):
    """The benchmark (``veracity benchmark``): a second synthetic corpus of people no split
    has seen, every method for every person, scored through the bundle's Analyzer."""

    # The benchmark corpus is the `generate` section with these keys replaced (and every
    # method for every person). Its seed must differ from generate.seed: new faces and voices.
    seed: int = 2027
    # 125 people x (2 real + 6 fakes) = 1000 clips, 250 of them real: an FPR of 0.05 is then
    # measured to about +/- 0.03, where 40 real clips give +/- 0.07.
    n_identities: int = Field(125, ge=3)
    # Robustness on the served path: this many people's clips re-encoded with x264 at this
    # CRF, then analysed again (the AUC drop, paired on the same clips, is a gate bar).
    reencode_crf: int = Field(35, ge=0, le=51)
    reencode_identities: int = Field(32, ge=0)
    bootstrap: int = Field(1000, ge=100)  # draws of people (not clips) for every interval
    confidence: float = Field(0.95, gt=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # float32 either way (analyze.precision): the same calls
    workers: int = Field(2, ge=1)  # analysis processes, one bundle each

    # Keys that change how fast the benchmark runs, never its figures.
    EXECUTION_ONLY: ClassVar[set[str]] = {"workers", "device"}

    def corpus(self, generate: GenerateConfig) -> GenerateConfig:
        """The generator config of the benchmark corpus: ``generate`` with this seed and these people."""
        return GenerateConfig(**{**generate.model_dump(), "seed": self.seed, "n_identities": self.n_identities,
                                 "methods_per_identity": None})


# How the members' forward passes may run (veracity.devices.resolve_precision says what each means).
Precision = Literal["auto", "fp32", "bf16"]


class AnalyzeConfig(_Section):
    """``veracity analyze`` / the service: how a report is built."""

    # Windows per forward pass. Peak memory follows it (each window is 16 crops plus flow,
    # and the members' activations), not the video's length. On CPU 4 windows cost what 16
    # do per window (bench/results/forward_batch.json: 14.3 against 14.5 ms for every
    # member), and a batch is scored during extraction as soon as its 4 windows exist (the
    # first after 3.2 s of video at 12.5 fps), so short files overlap too. Raise it on a GPU.
    batch_size: int = Field(4, ge=1)
    top_frames: int = Field(5, ge=1)  # most suspicious frames listed (and explained)
    segment_merge: bool = True  # merge adjacent windows with the same call into one segment
    # Score each track's whole batches while the file is still being extracted
    # (veracity.stream): the same windows and batches, so the same report, sooner.
    overlap: bool = True
    # What the members' forward passes autocast to (veracity.devices.resolve_precision):
    # fp32 here, so the DAG's figures (benchmark, gate) are the same on a GPU as on a CPU;
    # auto is bf16 on a CUDA GPU that has it (the service's default, VERACITY_PRECISION),
    # bf16 asks for it on CPU too. bench/precision_compare.py measures what it changes.
    precision: Precision = "fp32"


class MonitorConfig(_Section):
    """Drift monitoring (``veracity monitor``, :mod:`monitoring`): a window of the request log
    against the bundle's reference; the ``monitor`` stage runs it on a simulated stream."""

    # The family-wise false-alarm rate of one window: every column test and rate test of a
    # report shares it (Bonferroni), so an unshifted window is flagged at most this often.
    alpha: float = Field(0.01, gt=0, lt=1)
    # A window with fewer judged rows is not judged (too few to see a shift, too easy to
    # see noise); a column with fewer values in the window is left untested.
    min_rows: int = Field(50, ge=10)
    min_column_rows: int = Field(20, ge=5)
    # Expected shares on in-profile traffic (refit them on recent authentic traffic): ABSTAIN
    # for any reason, and out_of_distribution alone (the benchmark's 0.021, its goal 0.03).
    abstain_rate: float = Field(0.05, gt=0, lt=1)
    ood_rate: float = Field(0.03, gt=0, lt=1)
    # The `monitor` stage's simulated stream: new people (this seed, neither generate.seed
    # nor benchmark.seed) from the `generate` section, analysed by the bundle, under `shift`
    # (`none`, or a shift of monitoring.simulate.SHIFTS).
    sim_seed: int = 4711
    sim_people: int = Field(12, ge=3)
    sim_shift: str = "none"
    sim_workers: int = Field(2, ge=1)  # processes that analyse the stream (speed only)


class Params(_Section):
    """The whole ``params.yaml``: one field per stage section."""

    generate: GenerateConfig = GenerateConfig()
    corpus: CorpusConfig = CorpusConfig()
    contract: ContractConfig = ContractConfig()
    extract: ExtractConfig = ExtractConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    metrics: MetricsConfig = MetricsConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    attack: AttackConfig = AttackConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gate: GateConfig = GateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")  # `register` is taken by ABCMeta
    analyze: AnalyzeConfig = AnalyzeConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    monitor: MonitorConfig = MonitorConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


S = TypeVar("S", bound=BaseModel)

# Sections whose params.yaml name clashes with a pydantic/ABC attribute (field name + "_").
_ALIASED = ("validate", "register")


def parse_override(text: str, section: str | None = None) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` into a key path and a YAML-typed value.

    A key without a section prefix is taken relative to ``section`` when one is given.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    if section is not None and path[0] not in Params.model_fields and path[0] not in _ALIASED:
        path = [section, *path]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def _set_in(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p).removesuffix("_") if p in [f"{a}_" for a in _ALIASED] else str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}'")
        else:
            lines.append(f"{origin}: '{key}': {err['msg']}")
    return "\n".join(lines)


def load_params(
    path: Path | str | None = DEFAULT_PARAMS,
    overrides: list[str] | tuple[str, ...] = (),
    section: str | None = None,
) -> Params:
    """Load ``params.yaml`` (if it exists) with CLI overrides applied on top.

    Args:
        path: the params file; a missing default file means "all defaults".
        overrides: ``key=value`` strings, highest precedence.
        section: the stage whose keys may be given without a section prefix.

    Raises:
        ConfigError: unknown keys, bad values or an unreadable file, naming the key.
    """
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        if path.exists():
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: top level must be a mapping of stage sections")
            tree = loaded
            origin = str(path)
        elif path != DEFAULT_PARAMS:
            raise ConfigError(f"params file {path} does not exist")
    for text in overrides:
        key_path, value = parse_override(text, section)
        _set_in(tree, key_path, value)
    if overrides:
        origin = f"{origin} + overrides"
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def section(params: Params, name: str) -> BaseModel:
    """Return one stage's section by its params.yaml name."""
    return getattr(params, f"{name}_" if name in _ALIASED else name)


def to_plain(model: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """A YAML/JSON-ready dict of a config model (tuples become lists)."""
    return model.model_dump(mode="json", by_alias=True, exclude=exclude)


def write_resolved(
    model: BaseModel, out_dir: Path | str, name: str = RESOLVED_NAME, exclude: set[str] | None = None
) -> Path:
    """Write the configuration a stage ran with next to its outputs.

    ``exclude`` drops execution-only keys (worker counts) that do not change the outputs,
    so the written file, like the outputs, does not depend on them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(to_plain(model, exclude), sort_keys=False))
    return target
