"""The status vocabulary of Veracity: what extraction says about a clip, and why an analysis abstains.

This module owns every such name; the rest of the package imports them from here and
never restates them (a leaf module: it imports nothing from ``veracity``).

- :data:`ExtractStatus` / :data:`EXTRACT_STATUSES`: every status extraction stores in a
  clip's index row (``index.csv``), in priority order: when a clip has several problems,
  the first one found in this order is its status.
- :data:`BAD_MEDIA_STATUSES`: the media's fault, broken (``missing``, ``corrupt``...) or
  unsuitable (``too_short``, ``no_face``...). Bad data: a share of them is tolerated
  (``extract.max_failure_ratio``), and :class:`veracity.media.decode.MediaError` carries
  one of them.
- :data:`CODE_FAILURE_STATUSES`: our code failed on the clip (``error``), whatever the
  media. Never usable, never within the bad-data allowance.
- :data:`AbstainReason` / :data:`ABSTAIN_REASONS`: why the analyzer answers ``ABSTAIN``:
  every extraction status but ``ok`` (a file the analyzer cannot find is ``missing``, as
  in extraction).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ABSTAIN_REASONS",
    "ANALYZER_REASONS",
    "FRAME_BATCH_REASONS",
    "BAD_MEDIA_STATUSES",
    "CODE_FAILURE_STATUSES",
    "EXTRACT_STATUSES",
    "OK",
    "UNCERTAIN_REASONS",
    "AbstainReason",
    "BadMediaStatus",
    "CodeFailureStatus",
    "ExtractStatus",
    "UncertainReason",
]

CodeFailureStatus = Literal["error"]
BadMediaStatus = Literal[
    "missing", "empty", "corrupt", "unsupported", "no_video", "too_small", "too_short", "too_long",
    "no_face", "no_audio", "silent",
]
# A failure of our code outranks what was found about the media before it (that finding
# may be incomplete); "ok" comes last because it means no problem at all.
ExtractStatus = Literal[CodeFailureStatus, BadMediaStatus, "ok"]
# The analyzer abstains for any extraction problem (its late "too_short" and "no_face"
# checks reuse extraction's names), and on its own for a person outside the bundle's
# reference profile (veracity.profile), or a frame batch from a bundle without video-only
# thresholds (veracity.frames).
AnalyzerReason = Literal["out_of_distribution", "no_thresholds", "member_failed"]
AbstainReason = Literal[CodeFailureStatus, BadMediaStatus, AnalyzerReason]
# The members split in a pattern validation never showed (veracity.decision.Disagreement).
UncertainReason = Literal["member_disagreement"]

OK: Literal["ok"] = "ok"
EXTRACT_STATUSES: tuple[ExtractStatus, ...] = get_args(ExtractStatus)
BAD_MEDIA_STATUSES: tuple[BadMediaStatus, ...] = get_args(BadMediaStatus)
CODE_FAILURE_STATUSES: tuple[CodeFailureStatus, ...] = get_args(CodeFailureStatus)
ABSTAIN_REASONS: tuple[AbstainReason, ...] = get_args(AbstainReason)
ANALYZER_REASONS: tuple[AnalyzerReason, ...] = get_args(AnalyzerReason)
UNCERTAIN_REASONS: tuple[UncertainReason, ...] = get_args(UncertainReason)
# Why a meeting frame batch (veracity.frames) gets ABSTAIN: nothing decodes, too few frames,
# too little face, no video-only thresholds in the bundle, a bug.
FRAME_BATCH_REASONS: tuple[AbstainReason, ...] = ("corrupt", "too_short", "no_face", "no_thresholds", "error")
