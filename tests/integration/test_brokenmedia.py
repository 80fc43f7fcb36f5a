"""The analyzer on broken and awkward files (tests/brokenmedia.py): a precise outcome, never a crash.

Each case is analysed in process with the session's tiny bundle. The outcome must be one
the case accepts; a case the service would refuse before decoding (``http:*``) must still
get an ABSTAIN with a reason here, never a verdict and never ``error``. Every report is
plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brokenmedia import CASES, JUDGED, Case, make_broken_corpus, outcome

from veracity.analyzer import REASONS, Analyzer, Report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return make_broken_corpus(tmp_path_factory.mktemp("brokenmedia"))


@pytest.fixture(scope="module")
def analyzer(tiny_bundle: Path) -> Analyzer:
    return Analyzer(tiny_bundle, device="cpu")


def test_the_corpus_is_small_and_complete(corpus: dict[str, Case]) -> None:
    assert tuple(corpus) == CASES
    for name, case in corpus.items():
        assert case.path.is_file() and case.path.stat().st_size < 1_000_000, name
        assert case.expect and case.note and case.kind, name
        for e in case.expect:
            assert e == JUDGED or e in {f"abstain:{r}" for r in REASONS} or e in {"http:400", "http:413",
                                                                                   "http:415"}, (name, e)
        assert "abstain:error" not in case.expect
    assert [n for n, c in corpus.items() if "long" in c.kind] == ["long"]


@pytest.mark.parametrize("name", CASES)
def test_each_file_gets_an_outcome_it_accepts(analyzer: Analyzer, corpus: dict[str, Case], name: str) -> None:
    case = corpus[name]
    r: Report = analyzer.analyze(case.path)
    got = outcome(r.verdict, r.reason)
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # plain JSON: no NaN, tuple, numpy or Path
    assert r.reason != "error", r.message
    assert "Traceback" not in r.message and "\n" not in r.message
    if r.verdict == "ABSTAIN":
        assert r.reason in REASONS and r.probability is None and r.message
    else:
        assert r.reason is None and 0.0 <= r.probability <= 1.0 and r.persons
    in_process = {e for e in case.expect if not e.startswith("http:")}
    if in_process:
        assert got in in_process, f"{name}: {got} ({r.message}); expected one of {sorted(in_process)}"
    else:  # only the service's refusals are listed: in process it is still an ABSTAIN, never a verdict
        assert r.verdict == "ABSTAIN", f"{name}: {got} ({r.message})"
    if got == JUDGED:  # what the awkward-but-judgeable files must still get right
        assert r.media["has_audio"] is True and r.timeline, r.media
        assert r.timeline[-1]["end_s"] <= r.media["duration_s"] + 1e-6, (r.timeline, r.media)
        if case.kind == "truncated":  # only what decodes is judged (the header's duration is longer)
            assert r.timeline[-1]["end_s"] <= r.media["n_frames"] / analyzer.contract.fps + 0.1, r.timeline
        else:  # all of the sound is read, resampled to 16 kHz (AAC pads the last frame)
            assert abs(r.media["audio_s"] - r.media["duration_s"]) < 0.1, r.media
        if name == "rotated":
            assert r.media["rotation"] == 90
        if name == "two_people":
            assert len(r.persons) == 2
