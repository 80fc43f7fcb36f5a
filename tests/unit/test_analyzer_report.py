"""The CLI's text for a report (veracity.analyzer.report_text): what was judged, and why."""

from __future__ import annotations

from veracity.analyzer import Report, report_text

TH = {"real_below": 0.1, "fake_at": 0.6}


def _members(video: float | None, audio: float | None) -> dict:
    def one(modality: str, p: float | None) -> dict:
        if p is None:
            return {"modality": modality, "judged": False, "logit": None, "probability": None, "reliable": False}
        return {"modality": modality, "judged": True, "logit": 0.0, "probability": p, "reliable": True}

    return {"video": one("video", video), "audio": one("audio", audio)}


def test_a_file_judged_on_video_alone_says_so_and_names_the_member_that_did_not_judge() -> None:
    r = Report(path="mute.mp4", verdict="REAL", probability=0.05, thresholds=TH, members=_members(0.05, None),
               modalities={"video": 0.05}, judged=["video"],
               message="real: calibrated probability of manipulation 0.050 (judged on video alone: the file has no "
                       "audio stream)")
    text = report_text(r)
    assert "verdict: REAL  probability 0.050" in text
    assert "judged on video alone" in text and "audio (audio) did not judge" in text


def test_an_uncertain_call_from_member_disagreement_gives_its_reason() -> None:
    r = Report(path="odd.mp4", verdict="UNCERTAIN", probability=0.97, reason="member_disagreement",
               thresholds=TH, members=_members(0.02, 0.98), modalities={"video": 0.02, "audio": 0.98},
               judged=["audio", "video"], disagreement=1.8,
               message="uncertain: the members disagree in a way validation never showed (video 0.020, audio "
                       "0.980; the fusion alone would say FAKE at 0.970)")
    text = report_text(r)
    assert "why UNCERTAIN: member_disagreement: uncertain: the members disagree" in text
    assert "judged on" not in text  # every modality judged


def test_out_of_profile_lists_only_the_members_that_scored() -> None:
    r = Report(path="cam.mp4", verdict="ABSTAIN", probability=None, reason="out_of_distribution",
               message="out of the bundle's reference profile: face size 289 px is above the profile's 99.5%",
               thresholds=TH, members=_members(0.97, None), judged=["video"])
    text = report_text(r)
    assert "ABSTAIN (out_of_distribution)" in text and "video p=0.970" in text and "audio p=" not in text
