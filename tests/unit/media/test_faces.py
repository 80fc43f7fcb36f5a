"""Face detection, tracking and crops on rendered synthetic talking heads."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from veracity.corpus.synth import face
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.media.faces import (
    NEAR_FACE_PX,
    NEAR_REACH,
    Detection,
    FaceTracker,
    HaarFaceDetector,
    center_box,
    crop_resize,
    iou,
    square_box,
)
from veracity.media.faces import _neighbourhoods as neighbourhoods


def _clip(seed: int, width: int = 128, height: int = 128, duration: float = 2.0) -> list[np.ndarray]:
    ident = sample_identity(f"p{seed}", np.random.default_rng(seed))
    spec = ClipSpec(f"v{seed}", "real", ident, None, duration, 25, width, height, 16000, 23, 3.0, seed)
    return list(render(spec).frames)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _contains(box, x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@pytest.fixture(scope="module")
def detector() -> HaarFaceDetector:
    return HaarFaceDetector()


@pytest.fixture(scope="module")
def two_heads() -> list[np.ndarray]:
    """30 frames of 256x128: two different people side by side."""
    left, right = _clip(11, duration=1.2), _clip(12, duration=1.2)
    return [np.concatenate([a, b], axis=1) for a, b in zip(left, right, strict=True)]


def test_haar_finds_rendered_faces(detector):
    found = total = 0
    for seed in (1, 2, 3, 4):
        for rgb in _clip(seed):
            dets = detector.detect(_gray(rgb))
            total += 1
            if dets:
                found += 1
                # The head starts within +-6% of the frame centre and drifts a few percent.
                assert _contains(dets[0].box, 64, 0.47 * 128)
                assert len(dets) == 1
    assert found / total >= 0.9, f"found {found}/{total}"


def test_haar_box_covers_face_centre(detector):
    # Heads drawn at known poses, so the true face centre and size are known exactly.
    rng = np.random.default_rng(5)
    hits = 0
    for i in range(10):
        ident = sample_identity(f"c{i}", rng)
        h, w = 128, 160
        pose = face.Pose(rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.55) * h,
                         h * rng.uniform(0.25, 0.31), rng.uniform(-4, 4))
        canvas = face.background(h, w, rng)
        face.draw_head(canvas, ident, pose, face.Expression(mouth=0.3, eyes=1.0), face.skin_texture(ident))
        img = np.clip(face.downsample(canvas, (h, w)) + 0.5, 0, 255).astype(np.uint8)
        dets = detector.detect(_gray(img))
        if not dets:
            continue
        hits += 1
        b = dets[0].box
        assert _contains(b, pose.cx, pose.cy)
        assert abs((b[0] + b[2]) / 2 - pose.cx) < 0.15 * pose.scale
        assert abs((b[1] + b[3]) / 2 - pose.cy) < 0.15 * pose.scale
        assert 1.5 < (b[2] - b[0]) / pose.scale < 2.5  # box ~ the face's full height
    assert hits >= 8


def test_haar_maps_boxes_back_from_downscaled_720p(detector):
    rgb = _clip(3, width=256, height=144, duration=0.2)[0]
    small = detector.detect(_gray(rgb))
    big_gray = cv2.resize(_gray(rgb), (1280, 720), interpolation=cv2.INTER_LINEAR)
    big = detector.detect(big_gray)  # shrunk to 320x180 inside, boxes mapped back
    assert len(small) == 1 and len(big) == 1
    expected = tuple(v * 5 for v in small[0].box)
    assert iou(big[0].box, expected) > 0.7
    side_small = small[0].box[2] - small[0].box[0]
    side_big = big[0].box[2] - big[0].box[0]
    assert 4.0 < side_big / side_small < 6.0
    assert all(0 <= v <= 1280 for v in big[0].box)


def test_haar_ignores_blank_and_noise(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((128, 128), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (128, 128), dtype=np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (720, 1280), dtype=np.uint8)) == []
    assert detector.detect(np.zeros((16, 16), np.uint8)) == []  # below the 24 px window


def test_haar_rejects_colour_input_and_missing_cascade(detector, tmp_path):
    with pytest.raises(ValueError, match="uint8 gray"):
        detector.detect(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="cascade"):
        HaarFaceDetector(cascade_path=tmp_path / "missing.xml")


def test_haar_detector_pickles_after_use(detector, two_heads):
    detector.detect(_gray(two_heads[0]))  # loads the cascade
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.detect(_gray(two_heads[0])) == detector.detect(_gray(two_heads[0]))


@pytest.fixture(scope="module")
def two_heads_hd(two_heads) -> np.ndarray:
    """The two people at 5x (1280x640): faces of about 300 px, as in HD footage."""
    return cv2.resize(_gray(two_heads[5]), (1280, 640), interpolation=cv2.INTER_LINEAR)


def test_detect_near_finds_a_tracked_face_where_the_whole_frame_pass_does(detector, two_heads_hd):
    whole = detector.detect(two_heads_hd)
    assert len(whole) == 2
    left, right = sorted((d.box for d in whole), key=lambda b: b[0])
    assert left[2] - left[0] >= 2 * NEAR_FACE_PX  # big enough to be searched shrunk
    # Where the tracker expects it, moved by a tenth of its side (flow's error between detections).
    side = left[2] - left[0]
    expected = (left[0] + 0.1 * side, left[1] - 0.1 * side, left[2] + 0.1 * side, left[3] - 0.1 * side)
    near = detector.detect_near(two_heads_hd, [expected])
    assert len(near) == 1  # the other person is not looked for
    assert iou(near[0].box, left) > 0.7
    both = detector.detect_near(two_heads_hd, [left, right])
    assert len(both) == 2
    assert sorted(iou(d.box, b) > 0.7 for d in both for b in (left, right)) == [False, False, True, True]


def test_detect_near_looks_only_near_the_boxes_and_checks_its_input(detector, two_heads_hd):
    h, w = two_heads_hd.shape
    blank = two_heads_hd.copy()
    blank[:, : w // 2] = 128  # the left person gone: nothing where the box says
    left = sorted((d.box for d in detector.detect(two_heads_hd)), key=lambda b: b[0])[0]
    assert detector.detect_near(blank, [left]) == []
    assert detector.detect_near(two_heads_hd, []) == []
    with pytest.raises(ValueError, match="uint8 gray"):
        detector.detect_near(np.zeros((64, 64, 3), np.uint8), [left])


def test_detect_near_keeps_for_each_box_only_the_hit_that_overlaps_it_most(monkeypatch):
    # The cascade is replaced so the hits are known: a face where the box is, and a part of
    # it at another scale scoring higher (such a hit started a second track for one person).
    detector = HaarFaceDetector()
    box = (400.0, 100.0, 700.0, 400.0)  # 300 px: its neighbourhood is searched shrunk 5x
    k = int(300 // NEAR_FACE_PX)
    x0, y0 = int(400 - NEAR_REACH * 300), int(100 - NEAR_REACH * 300)
    face = ((400 - x0) // k, (100 - y0) // k, 300 // k, 300 // k)
    part = (2, 2, 30, 30)
    monkeypatch.setattr(detector, "_cascade_rects",
                        lambda small, least, most: (np.array([part, face], float), np.array([9.0, 5.0])))
    found = detector.detect_near(np.zeros((640, 1280), np.uint8), [box])
    assert [d.score for d in found] == [5.0] and iou(found[0].box, box) > 0.95
    # No hit overlapping the box (one in the neighbourhood's corner): nothing, not the stray hit.
    corner = (2, 2, 10, 10)
    monkeypatch.setattr(detector, "_cascade_rects", lambda small, least, most: (np.array([corner], float), np.array([9.0])))
    assert detector.detect_near(np.zeros((640, 1280), np.uint8), [box]) == []


def test_neighbourhoods_widen_clip_and_merge_overlapping_boxes():
    pad = NEAR_REACH * 100
    # Two boxes whose neighbourhoods overlap are searched once, as their bounding box.
    (merged, lo, hi), = neighbourhoods([(100, 100, 200, 200), (230, 120, 310, 200)], 1000, 800, NEAR_REACH)
    assert merged == (int(100 - pad), int(100 - pad), int(np.ceil(310 + NEAR_REACH * 80)), int(np.ceil(200 + pad)))
    assert (lo, hi) == (80, 100)
    # A box between two disjoint neighbourhoods joins them into one search.
    (chain, lo, hi), = neighbourhoods([(100, 100, 200, 200), (400, 100, 500, 200), (240, 100, 360, 220)],
                                      1000, 800, NEAR_REACH)
    assert chain == (int(100 - pad), int(100 - NEAR_REACH * 120), int(np.ceil(500 + pad)), int(np.ceil(220 + NEAR_REACH * 120)))
    assert (lo, hi) == (100, 120)
    # Far apart: two searches; at the frame's edge: clipped; an empty box: none.
    apart = neighbourhoods([(0, 0, 100, 100), (800, 600, 1000, 800), (5, 5, 5, 5)], 1000, 800, NEAR_REACH)
    assert [r for r, _, _ in apart] == [(0, 0, int(np.ceil(100 + pad)), int(np.ceil(100 + pad))),
                                        (int(800 - 2 * pad), int(600 - 2 * pad), 1000, 800)]


def test_two_heads_two_stable_tracks_with_dropped_detections(detector, two_heads):
    tracker = FaceTracker()
    rng = np.random.default_rng(0)
    coasted = 0
    for i, rgb in enumerate(two_heads):
        dets = detector.detect(_gray(rgb))
        if i < 3:
            assert len(dets) == 2
        if i >= 3 and rng.random() < 0.3:  # drop one face's detection now and then
            dets = dets[1:]
        faces = tracker.update(dets)
        assert [f.track_id for f in faces] == [0, 1]
        coasted += sum(not f.detected for f in faces)
        by_id = {f.track_id: f.box for f in faces}
        assert (by_id[0][0] + by_id[0][2]) / 2 < 128 < (by_id[1][0] + by_id[1][2]) / 2
    assert coasted > 0
    summary = tracker.summary()
    assert [s["track_id"] for s in summary] == [0, 1]
    for s in summary:
        assert s["n_frames"] == len(two_heads) and s["first_frame"] == 0
        assert s["last_frame"] == len(two_heads) - 1
        assert s["n_detected"] >= 0.6 * len(two_heads)
        assert 50 < s["mean_size"] < 100


def test_tracker_starts_track_for_a_late_face(detector, two_heads):
    tracker = FaceTracker()
    for i, rgb in enumerate(two_heads):
        frame = rgb.copy()
        if i < 10:
            frame[:, 128:] = frame[:4, 128:].mean(axis=(0, 1)).astype(np.uint8)  # right person absent
        faces = tracker.update(detector.detect(_gray(frame)))
        assert [f.track_id for f in faces] == ([0] if i < 10 else [0, 1])
    late = tracker.summary()[1]
    assert late["first_frame"] == 10 and late["n_frames"] == len(two_heads) - 10


def test_tracker_ends_tracks_after_max_missed():
    tracker = FaceTracker(max_missed=2)
    det = Detection((10.0, 10.0, 50.0, 50.0), 1.0)
    assert [f.detected for f in tracker.update([det])] == [True]
    assert [f.detected for f in tracker.update([])] == [False]
    assert [f.detected for f in tracker.update([])] == [False]
    assert tracker.update([]) == []  # third miss > max_missed: ended
    faces = tracker.update([det])  # the same place again is a new track
    assert [f.track_id for f in faces] == [1]
    s = tracker.summary()
    assert s[0]["n_frames"] == 3 and s[0]["n_detected"] == 1 and s[0]["last_frame"] == 2


def test_tracker_smooths_and_matches_by_iou():
    tracker = FaceTracker(smooth=0.5)
    tracker.update([Detection((0.0, 0.0, 40.0, 40.0), 1.0)])
    faces = tracker.update([Detection((4.0, 0.0, 44.0, 40.0), 1.0), Detection((200.0, 0.0, 240.0, 40.0), 1.0)])
    assert [f.track_id for f in faces] == [0, 1]
    assert faces[0].box == pytest.approx((2.0, 0.0, 42.0, 40.0))  # halfway: EMA with 0.5
    assert faces[1].box == (200.0, 0.0, 240.0, 40.0)
    # Crossing order in the list does not swap identities.
    faces = tracker.update([Detection((200.0, 2.0, 240.0, 42.0), 1.0), Detection((6.0, 0.0, 46.0, 40.0), 1.0)])
    assert faces[0].box[0] < 100 < faces[1].box[0]


def test_square_box_is_square_centred_and_scaled():
    box = (30.0, 20.0, 70.0, 80.0)  # 40 x 60, centre (50, 50)
    b0 = square_box(box, 0.0, 128, 128)
    b1 = square_box(box, 0.5, 128, 128)
    for b in (b0, b1):
        assert all(isinstance(v, int) for v in b)
        assert b[2] - b[0] == b[3] - b[1]
        assert abs((b[0] + b[2]) / 2 - 50) <= 0.5 and abs((b[1] + b[3]) / 2 - 50) <= 0.5
    assert b0[2] - b0[0] == 60 and b1[2] - b1[0] == 90
    edge = square_box((0.0, 0.0, 40.0, 40.0), 0.5, 128, 128)  # extends past the frame, stays centred
    assert edge == (-10, -10, 50, 50)
    assert square_box((0.0, 0.0, 100.0, 100.0), 1.0, 128, 96)[2:] == (114, 114)  # capped at 128


def test_center_box_is_centred():
    assert center_box(128, 128, 0.5) == (32, 32, 96, 96)
    x0, y0, x1, y1 = center_box(1280, 720)
    assert x1 - x0 == y1 - y0 == 432
    assert (x0 + x1) / 2 == 640 and (y0 + y1) / 2 == 360


def test_crop_resize_pads_by_edge_replication():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = np.arange(10)[None, :] * 20  # red ramps along x
    rgb[..., 1] = np.arange(10)[:, None] * 20  # green ramps along y
    crop = crop_resize(rgb, (-5, -5, 5, 5), 10)  # same size: no resampling
    assert crop.shape == (10, 10, 3) and crop.dtype == np.uint8
    assert (crop[:5, :5] == rgb[0, 0]).all()  # the corner pixel replicated
    assert (crop[:5, 5:, 0] == rgb[0, :5, 0]).all() and (crop[:5, 5:, 1] == 0).all()
    assert (crop[5:, 5:] == rgb[:5, :5]).all()
    far = crop_resize(rgb, (20, 20, 30, 30), 8)  # wholly outside: the nearest corner
    assert (far == rgb[9, 9]).all()


def test_crop_resize_sizes_and_interpolation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    down = crop_resize(rgb, (10.2, 10.0, 90.0, 89.8), 40)
    up = crop_resize(rgb, (0, 0, 20, 20), 64)
    assert down.shape == (40, 40, 3) and up.shape == (64, 64, 3)
    assert down.dtype == up.dtype == np.uint8
    assert np.array_equal(down, cv2.resize(rgb[10:90, 10:90], (40, 40), interpolation=cv2.INTER_AREA))
    assert crop_resize(rgb[..., 0], (0, 0, 50, 50), 32).shape == (32, 32)
    with pytest.raises(ValueError, match="empty box"):
        crop_resize(rgb, (5, 5, 5, 9), 32)
