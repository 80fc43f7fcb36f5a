"""veracity.media.decode: probing, timestamp sampling, lazy conversions, audio, bad files.

All media are tiny files written here with PyAV (or ``encode.write_mp4``) into tmp_path.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from veracity.media.decode import (
    SHRINK_FIRST,
    FrameReader,
    MediaError,
    SampledFrame,
    SkipPlan,
    decode_only,
    even_crop_box,
    iter_audio,
    probe,
    read_audio,
)
from veracity.media.encode import write_mp4
from veracity.status import BAD_MEDIA_STATUSES

W, H = 96, 64


def _pattern(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth colour pattern (chroma varies everywhere) with frame ``i``'s number in it.

    The top-left block is flat gray at level 20 + 10*i, so a decoded frame's index can be
    read back from its luma whatever the sampling did.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        (
            128 + 100 * np.sin(xx / 9.0 + i * 0.3),
            128 + 90 * np.cos(yy / 7.0),
            128 + 80 * np.sin((xx + yy) / 11.0),
        ),
        axis=-1,
    )
    img = img.astype(np.uint8)
    img[4:20, 4:20] = 20 + 10 * i
    return img


def _index_of(sf: SampledFrame) -> int:
    return round((float(sf.gray()[8:16, 8:16].mean()) - 20) / 10)


def _write_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    rate: int = 25,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    container_options: dict[str, str] | None = None,
    colorspace: int | None = None,
    color_range: int | None = None,
) -> Path:
    """Write RGB frames with PyAV, with the knobs encode.write_mp4 does not expose."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            s.time_base = time_base
            s.codec_context.time_base = time_base
        if rotation:
            s.set_display_rotation(rotation)  # counter-clockwise degrees (PyAV 18)
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
        if color_range is not None:
            s.codec_context.color_range = color_range
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = pts[i] if pts is not None else i
            if time_base is not None:
                f.time_base = time_base
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def _write_audio_only(path: Path, rate: int, layout: str, seconds: float, freq: float) -> Path:
    """An AAC-in-MP4 file with no video: a tone of ``freq`` Hz on every channel."""
    n = int(rate * seconds)
    tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        s.layout = layout
        nch = av.AudioLayout(layout).nb_channels
        for start in range(0, n, 1024):
            block = np.ascontiguousarray(np.repeat(tone[None, start : start + 1024], nch, 0))
            f = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            f.sample_rate = rate
            f.pts = start
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames at 25 fps (0.8 s), 96x64, H.264 + a 440 Hz AAC tone, via write_mp4."""
    path = tmp_path_factory.mktemp("decode") / "clip.mp4"
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(12800) / 16000)
    return write_mp4(path, [_pattern(i) for i in range(20)], fps=25, audio=tone)


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "video_only.mp4"
    return write_mp4(path, [_pattern(i) for i in range(5)], fps=25)


# ------------------------------------------------------------------------------- probing


def test_probe_describes_a_normal_clip(clip: Path) -> None:
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.has_video and info.has_audio and not info.is_still_image
    assert (info.video_codec, info.audio_codec, info.pix_fmt) == ("h264", "aac", "yuv420p")
    assert info.avg_fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(0.8, abs=0.05)
    assert (info.audio_rate, info.audio_channels) == (16000, 1)
    assert info.size_bytes == clip.stat().st_size
    assert info.num_frames == 20


def test_media_error_carries_status_and_clean_message() -> None:
    err = MediaError("corrupt", "cannot open container: bad")
    assert (err.status, str(err)) == ("corrupt", "cannot open container: bad")
    assert err.message == str(err)
    assert set(BAD_MEDIA_STATUSES) >= {"missing", "empty", "corrupt", "unsupported", "no_video"}
    with pytest.raises(ValueError):
        MediaError("weird", "not a status")


@pytest.mark.parametrize("status", ["ok", "error"])
def test_media_error_refuses_statuses_that_do_not_blame_the_media(status: str) -> None:
    # "error" is a failure of our code: a MediaError carrying it would pass a bug off as bad data.
    with pytest.raises(ValueError, match="unknown media status"):
        MediaError(status, "not the media's fault")


@pytest.mark.parametrize(
    ("content", "status", "says"),
    [
        (b"", "empty", "empty"),
        (os.urandom(4096), "corrupt", "Invalid data found"),
        (b"this is not a video, only text\n" * 40, "corrupt", "Invalid data found"),
    ],
    ids=["empty", "random-bytes", "text"],
)
def test_probe_rejects_bad_files(tmp_path: Path, content: bytes, status: str, says: str) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.status == status
    assert says in str(caught.value)
    assert "Traceback" not in str(caught.value) and "Errno" not in str(caught.value)
    with pytest.raises(MediaError):  # the reader and the audio path wrap the same way
        FrameReader(path, fps=5)
    with pytest.raises(MediaError):
        iter_audio(path)


def test_missing_file_is_missing(tmp_path: Path) -> None:
    for call in (probe, lambda p: FrameReader(p, fps=5), decode_only, iter_audio):
        with pytest.raises(MediaError) as caught:
            call(tmp_path / "nope.mp4")
        assert caught.value.status == "missing"


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_still_image_renamed_mp4_is_unsupported(tmp_path: Path, ext: str) -> None:
    image = tmp_path / f"picture{ext}"
    assert cv2.imwrite(str(image), _pattern(0))
    renamed = image.rename(tmp_path / "picture.mp4")
    with pytest.raises(MediaError) as caught:
        probe(renamed)
    assert caught.value.status == "unsupported"
    assert "a still image, not a video" in str(caught.value)
    info = probe(renamed, require_video=False)
    assert info.is_still_image and not info.has_video


def test_gif_is_a_video_unless_it_has_one_frame(tmp_path: Path) -> None:
    # The gif demuxer serves both; probe counts frames to tell them apart (and must set up
    # the decoder's threading before that first decode: PyAV refuses it afterwards).
    one = _write_video(tmp_path / "one.gif", [_pattern(0)], codec="gif", fmt="gif", pix_fmt="rgb8")
    with pytest.raises(MediaError) as caught:
        probe(one)
    assert caught.value.status == "unsupported"
    anim = _write_video(
        tmp_path / "anim.gif",
        [_pattern(i) for i in range(5)],
        codec="gif",
        fmt="gif",
        pix_fmt="rgb8",
    )
    reader = FrameReader(anim, fps=25, threads=True)
    got = [(sf.index, _index_of(sf), sf.crop_rgb(0, 0, 8, 8).shape) for sf in reader]
    assert got == [(i, i, (8, 8, 3)) for i in range(5)]


def test_audio_only_file_has_no_video(tmp_path: Path) -> None:
    path = _write_audio_only(tmp_path / "voice.m4a.mp4", 16000, "mono", 0.5, 300.0)
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.status == "no_video"
    info = probe(path, require_video=False)
    assert info.has_audio and not info.has_video and info.width is None


def test_truncated_mp4_without_moov_is_corrupt(clip: Path, tmp_path: Path) -> None:
    # write_mp4 puts the moov atom at the end, so the first half has none: FFmpeg refuses it.
    half = tmp_path / "half.mp4"
    data = clip.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as caught:
        probe(half)
    assert caught.value.status == "corrupt"
    assert str(caught.value) == "cannot open container: Invalid data found when processing input"


def test_truncated_faststart_mp4_yields_what_it_has(tmp_path: Path) -> None:
    # With the moov atom first (faststart), a cut file still opens: the reader must give the
    # frames that are there, stop cleanly, and do so the same way every time.
    full = _write_video(
        tmp_path / "full.mp4",
        [_pattern(i % 20) for i in range(50)],
        container_options={"movflags": "faststart"},
    )
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])
    counts = []
    for _ in range(2):
        reader = FrameReader(cut, fps=25)
        times = [sf.time for sf in reader]
        assert isinstance(reader.errors, list)
        assert 0 < len(times) < 50
        assert np.all(np.diff(times) > 0)
        assert reader.decoded == len(times)
        counts.append(len(times))
    assert counts[0] == counts[1] == decode_only(cut)


# ------------------------------------------------------------------------------ sampling


def test_25fps_sampled_at_12_5_gives_every_second_frame(clip: Path) -> None:
    reader = FrameReader(clip, fps=12.5)
    samples = [(sf.index, sf.time, _index_of(sf)) for sf in reader]
    assert [s[0] for s in samples] == list(range(10))
    assert [s[2] for s in samples] == list(range(0, 20, 2))  # the frames' own content
    assert [s[1] for s in samples] == pytest.approx([0.08 * k for k in range(10)], abs=1e-9)
    assert reader.decoded == 20 and reader.sampled == 10 and reader.errors == []


def test_sampling_faster_than_the_source_never_duplicates(clip: Path) -> None:
    for fps in (25, 60):
        got = [_index_of(sf) for sf in FrameReader(clip, fps=fps)]
        assert got == list(range(20))


def test_max_frames_stops_decoding_early(clip: Path) -> None:
    reader = FrameReader(clip, fps=12.5, max_frames=3)
    assert [round(sf.time, 6) for sf in reader] == [0.0, 0.08, 0.16]
    assert reader.decoded == 5  # frames 0..4; nothing after the last sample was decoded


def _samples(reader: FrameReader) -> list[tuple[float, bytes]]:
    return [(sf.time, b"".join(bytes(p) for p in sf.frame.planes)) for sf in reader]


def _reference_pts(path: Path) -> set[int]:
    """The pts of the frames FFmpeg decodes with every non-reference frame skipped."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        return {f.pts for f in c.decode(s)}


def test_skip_plan_decides_from_timestamps_and_counts_what_ffmpeg_dropped() -> None:
    plan = SkipPlan(12.5, Fraction(1, 25))  # 25 fps read at 12.5: every second frame sampled
    assert not plan.unsampled(1, 0)  # no first frame yet: nothing is skipped
    plan.t0 = 0.0
    assert plan.unsampled(1, 0) and plan.unsampled(3, 2)  # between two grid points
    assert not plan.unsampled(2, 1) and not plan.unsampled(4, 3)  # on a grid point: sampled
    assert not plan.unsampled(3, 1)  # a missed predecessor only makes a frame look sampled
    assert not plan.unsampled(1, -1)  # a predecessor before the first frame (pre-roll)
    for pts in (1, 3, 5):
        plan.asked(pts)
    assert plan.dropped_before(3) == 1  # 1 was dropped; 3 came out, so it was a reference
    assert plan.dropped_before(None) == 1  # at the end, 5 never came out
    plan.disorder()
    assert not plan.unsampled(1, 0)  # output went back in time: timestamps decide nothing


def test_unsampled_non_reference_frames_are_not_decoded_and_the_samples_do_not_change(tmp_path: Path) -> None:
    # x264's default preset makes B-frames that no other frame refers to: at 12.5 fps from
    # 25, those that fall between two samples need not be decoded at all.
    path = write_mp4(tmp_path / "b.mp4", [_pattern(i % 20) for i in range(75)], fps=25)
    with av.open(str(path)) as c:
        every = [f.pts for f in c.decode(c.streams.video[0])]
    refs = _reference_pts(path)
    assert 0 < len(refs) < len(every)  # the clip has non-reference frames
    for fps, sampled in ((12.5, every[::2]), (5, every[::5]), (25, every)):
        on, off = FrameReader(path, fps=fps), FrameReader(path, fps=fps, skip_unsampled=False)
        got = _samples(on)
        assert got == _samples(off)  # same frames, same pixels, same times
        assert on.decoded == off.decoded == len(every) and off.skipped == 0
        # Every skipped frame is an unsampled non-reference one; all but those met before
        # the first frame came out of the decoder (the sampling grid starts there) are.
        skippable = len(set(every) - refs - set(sampled))
        assert skippable - 4 <= on.skipped <= skippable
        assert _samples(on) == got and on.skipped >= skippable - 4  # a second pass: the file reopened
    assert on.skipped == 0  # 25 fps samples every frame


def _reference_sampling(times: list[float], fps: float) -> list[float]:
    """The sampling rule as stated: keep a frame at/after the target, then advance the
    target by 1/fps past it."""
    kept, target = [], times[0]
    for t in times:
        if t >= target - 1e-9:
            kept.append(t)
            while target <= t + 1e-9:
                target += 1.0 / fps
    return kept


def test_variable_frame_rate_is_sampled_by_timestamps(tmp_path: Path) -> None:
    pts_ms = [0, 40, 80, 200, 210, 220, 500, 900, 1000, 1033]
    path = _write_video(
        tmp_path / "vfr.mp4",
        [_pattern(i) for i in range(len(pts_ms))],
        pts=pts_ms,
        time_base=Fraction(1, 1000),
    )
    all_times = [sf.time for sf in FrameReader(path, fps=1000)]
    assert all_times == pytest.approx([t / 1000 for t in pts_ms], abs=1e-9)  # true pts
    for fps in (10.0, 4.0, 25.0):
        reader = FrameReader(path, fps=fps)
        got = [(sf.time, _index_of(sf)) for sf in reader]
        times = [t for t, _ in got]
        assert times == pytest.approx(_reference_sampling(all_times, fps), abs=1e-9)
        # The content is the frame that really had that timestamp.
        assert [pts_ms[i] / 1000 for _, i in got] == pytest.approx(times, abs=1e-9)
        # At most one sample per 1/fps slot of the grid.
        slots = [int(np.floor(t * fps + 1e-6)) for t in times]
        assert len(set(slots)) == len(slots)
        # Skipping unsampled non-reference frames changes nothing on uneven timestamps.
        assert _samples(FrameReader(path, fps=fps)) == _samples(FrameReader(path, fps=fps, skip_unsampled=False))
    assert [sf.time for sf in FrameReader(path, fps=10)] == pytest.approx([0, 0.2, 0.5, 0.9, 1.0])


# --------------------------------------------------------------------------- conversions


def test_gray_matches_rgb_luma_and_y_plane_is_a_view(clip: Path) -> None:
    sf = next(iter(FrameReader(clip, fps=5)))
    y = sf.y_plane()
    assert y.shape == (H, W) and y.dtype == np.uint8 and not y.flags.writeable
    assert np.shares_memory(y, np.frombuffer(sf.frame.planes[0], dtype=np.uint8))  # zero-copy
    gray = sf.gray()
    assert gray.shape == (H, W) and gray.dtype == np.uint8
    luma = cv2.cvtColor(np.ascontiguousarray(sf.rgb()), cv2.COLOR_RGB2GRAY)
    assert np.abs(gray.astype(int) - luma).mean() < 1.5
    # limited range (16..235) expanded to full: gray is the Y plane through one lookup
    assert y.min() >= 16 and y.max() <= 235
    expected = np.clip(np.round((y.astype(float) - 16) * 255 / 219), 0, 255)
    assert np.abs(gray.astype(int) - expected).max() == 0


def test_gray_of_full_range_video_is_the_plane_itself(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "full.mp4", [_pattern(i) for i in range(3)], pix_fmt="yuvj420p")
    sf = next(iter(FrameReader(path, fps=25)))
    assert sf.frame.format.name == "yuvj420p"
    assert np.shares_memory(sf.gray(), np.frombuffer(sf.frame.planes[0], dtype=np.uint8))
    luma = cv2.cvtColor(np.ascontiguousarray(sf.rgb()), cv2.COLOR_RGB2GRAY)
    assert np.abs(sf.gray().astype(int) - luma).mean() < 1.5


def _padded_reference(rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """rgb[y0:y1, x0:x1] with out-of-frame pixels filled by edge replication."""
    rows = np.clip(np.arange(y0, y1), 0, rgb.shape[0] - 1)
    cols = np.clip(np.arange(x0, x1), 0, rgb.shape[1] - 1)
    return rgb[rows[:, None], cols[None, :]]


def _check_crops(
    sf: SampledFrame, boxes: list[tuple[int, int, int, int]], regions_only: bool = True
) -> None:
    crops = [sf.crop_rgb(*box) for box in boxes]
    if regions_only:
        assert sf._rgb is None  # the crops converted regions only, never the whole frame
    rgb = sf.rgb()
    for box, crop in zip(boxes, crops, strict=True):
        x0, y0, x1, y1 = box
        assert crop.shape == (y1 - y0, x1 - x0, 3) and crop.dtype == np.uint8
        assert crop.flags.writeable and crop.flags.c_contiguous
        diff = np.abs(crop.astype(int) - _padded_reference(rgb, *box))
        assert diff.mean() < 3, (box, diff.mean())


def _boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    return [
        (0, 0, w, h),  # whole frame
        (3, 5, 40, 33),  # odd corners
        (1, 2, 2, 3),  # one pixel at odd coordinates
        (w - 7, h - 5, w, h),  # touching the right/bottom edges
        (-7, -3, 20, 15),  # partly outside, top-left
        (w - 10, h - 9, w + 13, h + 6),  # partly outside, bottom-right
        (w + 5, -20, w + 9, -10),  # wholly outside: the corner pixel replicated
    ]


def test_crop_rgb_equals_the_rgb_region(clip: Path) -> None:
    sf = next(iter(FrameReader(clip, fps=5)))
    _check_crops(sf, _boxes(W, H))
    with pytest.raises(ValueError):
        sf.crop_rgb(10, 10, 10, 20)


@pytest.mark.parametrize(
    ("colorspace", "color_range"),
    [(1, None), (None, 2), (1, 2)],
    ids=["bt709", "full-range", "bt709-full-range"],
)
def test_crop_rgb_follows_the_frame_colour_matrix(
    tmp_path: Path, colorspace: int | None, color_range: int | None
) -> None:
    # swscale converts rgb() with the matrix/range the stream declares; crop_rgb must agree.
    path = _write_video(
        tmp_path / "cs.mp4",
        [_pattern(0)],
        colorspace=colorspace,
        color_range=color_range,
    )
    sf = next(iter(FrameReader(path, fps=25)))
    if colorspace is not None:
        assert sf.frame.colorspace == colorspace
    _check_crops(sf, _boxes(W, H))


@pytest.mark.parametrize(
    ("colorspace", "color_range", "rotation"),
    [(None, None, None), (1, None, None), (1, 2, None), (None, None, 90)],
    ids=["bt601", "bt709", "bt709-full-range", "rotated"],
)
def test_crop_resized_averages_large_even_boxes_in_yuv_and_matches_converting_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, colorspace: int | None, color_range: int | None,
    rotation: int | None,
) -> None:
    size = 8  # boxes over SHRINK_FIRST * 8 px take the YUV path
    path = _write_video(tmp_path / "big.mp4", [_pattern(0, 120, 200)], colorspace=colorspace,
                        color_range=color_range, rotation=rotation)
    sf = next(iter(FrameReader(path, fps=25)))
    w, h = sf.width, sf.height

    def reference(box: tuple[int, int, int, int]) -> np.ndarray:
        return cv2.resize(SampledFrame.crop_rgb(sf, *box), (size, size), interpolation=cv2.INTER_AREA)

    large = [(10, 20, 90, 100), (0, 0, 60, 60), (w - 40, h - 40, w, h), (4, 2, 38, 36)]
    assert min(x1 - x0 for x0, _, x1, _ in large) > SHRINK_FIRST * size
    refs = [reference(b) for b in large]
    sf._rgb = None  # the reference's own conversion must not steer the path under test

    def refused(*_: object) -> None:
        raise AssertionError("a large even box inside the frame was converted before averaging")

    monkeypatch.setattr(SampledFrame, "crop_rgb", refused)
    for box, ref in zip(large, refs, strict=True):
        got = sf.crop_resized(*box, size)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - ref)
        # Rounding in the two orders (and a dark block where the colour leaves the RGB cube).
        assert diff.max() <= 3 and diff.mean() < 0.6, (box, diff.max(), diff.mean())
    assert sf._rgb is None
    monkeypatch.undo()
    # Odd edges, small boxes and boxes past the frame: exactly the conversion-first result.
    small = (10, 20, 10 + SHRINK_FIRST * size, 20 + SHRINK_FIRST * size)
    for box in [(11, 20, 91, 100), (10, 21, 90, 101), small, (-6, -4, 60, 62), (w - 50, 8, w + 10, 68)]:
        assert np.array_equal(sf.crop_resized(*box, size), reference(box)), box
    with pytest.raises(ValueError, match="empty crop box"):
        sf.crop_resized(40, 10, 40, 90, size)


@pytest.mark.parametrize("side", [SHRINK_FIRST * 32 + 1, SHRINK_FIRST * 32 + 2, SHRINK_FIRST * 32 + 9])
@pytest.mark.parametrize("corner", [(101, 33), (100, 32), (-7, 5), (2, -3)])
def test_a_large_crop_box_gets_even_edges_within_a_pixel_and_stays_square(side: int, corner: tuple[int, int]) -> None:
    box = (*corner, corner[0] + side, corner[1] + side)
    out = even_crop_box(box, 32)
    x0, y0, x1, y1 = out
    assert not any(v % 2 for v in out) and x1 - x0 == y1 - y0
    assert all(abs(a - b) <= 1 for a, b in zip(out, box, strict=True))


def test_a_crop_box_up_to_shrink_first_times_the_crop_is_left_as_it_is() -> None:
    box = (3, 5, 3 + SHRINK_FIRST * 64, 5 + SHRINK_FIRST * 64)
    assert even_crop_box(box, 64) == box
    assert even_crop_box((3, 5, 131, 133), 64) == (3, 5, 131, 133)  # the 128 px corpus's largest
    assert even_crop_box((1, 1, 1 + SHRINK_FIRST * 8 + 1, 1 + SHRINK_FIRST * 8 + 1), 8) == (0, 0, 34, 34)


def test_odd_sized_yuv420p(tmp_path: Path) -> None:
    # x264 refuses odd sizes in 4:2:0; FFV1 (in Matroska) takes them, with chroma planes of
    # ceil(W/2) x ceil(H/2). swscale interpolates chroma for such frames, so crop_rgb cuts
    # them from rgb() (exactly), while gray() still reads the Y plane.
    frames = [_pattern(i, 61, 97) for i in range(3)]
    path = _write_video(tmp_path / "odd.mkv", frames, codec="ffv1", fmt="matroska")
    info = probe(path)
    assert (info.width, info.height, info.pix_fmt) == (97, 61, "yuv420p")
    sf = next(iter(FrameReader(path, fps=25)))
    assert (sf.width, sf.height) == (97, 61)
    assert np.shares_memory(sf.y_plane(), np.frombuffer(sf.frame.planes[0], dtype=np.uint8))
    luma = cv2.cvtColor(np.ascontiguousarray(sf.rgb()), cv2.COLOR_RGB2GRAY)
    assert sf.gray().shape == (61, 97) and np.abs(sf.gray().astype(int) - luma).mean() < 1.5
    assert np.abs(sf.rgb().astype(int) - frames[0]).mean() < 3  # lossless but for 4:2:0
    for box in _boxes(97, 61) + [(95, 59, 97, 61), (96, 60, 97, 61)]:
        crop = sf.crop_rgb(*box)
        assert np.array_equal(crop, _padded_reference(sf.rgb(), *box))


def test_odd_sized_yuv444p_goes_through_swscale(tmp_path: Path) -> None:
    # x264 accepts odd sizes in 4:4:4; that format takes the generic (rgb() slice) path.
    frames = [_pattern(i, 61, 97) for i in range(3)]
    path = _write_video(tmp_path / "odd444.mp4", frames, pix_fmt="yuv444p")
    sf = next(iter(FrameReader(path, fps=25)))
    assert sf.frame.format.name == "yuv444p" and (sf.width, sf.height) == (97, 61)
    assert sf.rgb().shape == (61, 97, 3)
    assert np.abs(sf.rgb().astype(int) - frames[0]).mean() < 6
    luma = cv2.cvtColor(np.ascontiguousarray(sf.rgb()), cv2.COLOR_RGB2GRAY)
    assert np.abs(sf.gray().astype(int) - luma).mean() < 1.5
    for box in _boxes(97, 61):
        crop = sf.crop_rgb(*box)
        assert np.abs(crop.astype(int) - _padded_reference(sf.rgb(), *box)).max() == 0


# ------------------------------------------------------------------------------- rotation

# Where the stored top-left corner ends up on screen, for a frame turned `deg` degrees
# counter-clockwise (FFmpeg's display matrix convention, as ffmpeg/ffplay autorotate).
_CORNER = {0: "top-left", 90: "bottom-left", 180: "bottom-right", 270: "top-right"}


@pytest.mark.parametrize("deg", [0, 90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path: Path, deg: int) -> None:
    sw, sh = 64, 32  # stored landscape
    stored = _pattern(0, sh, sw)
    stored[:8, :8] = (255, 0, 0)  # a red marker in the stored top-left corner
    path = _write_video(tmp_path / f"rot{deg}.mp4", [stored] * 3, rotation=deg or None)
    info = probe(path)
    dw, dh = (sh, sw) if deg in (90, 270) else (sw, sh)
    assert (info.rotation, info.width, info.height) == (deg, dw, dh)

    sf = next(iter(FrameReader(path, fps=25)))
    assert (sf.width, sf.height, sf.rotation) == (dw, dh, deg)
    # Check the crops first, while rgb() is not cached: they map display boxes to the
    # stored frame and rotate back.
    _check_crops(sf, _boxes(dw, dh))
    rgb = sf.rgb()
    assert rgb.shape == (dh, dw, 3) and sf.gray().shape == (dh, dw)
    corners = {
        "top-left": rgb[1:7, 1:7],
        "top-right": rgb[1:7, -7:-1],
        "bottom-left": rgb[-7:-1, 1:7],
        "bottom-right": rgb[-7:-1, -7:-1],
    }
    red = [
        name for name, px in corners.items() if px[..., 0].mean() > 200 and px[..., 1].mean() < 60
    ]
    assert red == [_CORNER[deg]]
    luma = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    assert np.abs(sf.gray().astype(int) - luma).mean() < 1.5
    # y_plane() is rotated the same way (a strided view)
    assert np.abs(sf.y_plane().astype(int) - sf.gray()).mean() < 20


# ---------------------------------------------------------------------------------- audio


@pytest.mark.parametrize(("rate", "layout"), [(44100, "stereo"), (48000, "5.1"), (8000, "mono")])
def test_audio_is_resampled_to_16k_mono(tmp_path: Path, rate: int, layout: str) -> None:
    path = _write_audio_only(tmp_path / "tone.mp4", rate, layout, seconds=1.0, freq=440.0)
    audio = read_audio(path, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC adds up to a frame of padding (1024 samples at the source rate)
    assert len(audio) / 16000 == pytest.approx(1.0, abs=1024 / rate + 0.01)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(440.0, abs=3.0)
    # the downmix does not amplify: a 0.5 tone on every channel stays about 0.5
    assert 0.4 < np.abs(audio[2000:-2000]).max() <= 0.6


def test_iter_audio_streams_fixed_size_chunks(clip: Path) -> None:
    chunks = list(iter_audio(clip, sample_rate=16000, chunk_seconds=0.25))
    assert all(len(c) == 4000 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 4000
    assert all(c.dtype == np.float32 for c in chunks)
    whole = read_audio(clip)
    assert np.array_equal(np.concatenate(chunks), whole)
    assert len(whole) / 16000 == pytest.approx(0.8, abs=0.08)


def test_iter_audio_without_audio_raises_no_audio_at_call(silent_clip: Path) -> None:
    with pytest.raises(MediaError) as caught:
        iter_audio(silent_clip)  # not even iterated: the check is eager
    assert caught.value.status == "no_audio"


# -------------------------------------------------------------------- decode-only, memory


def test_decode_only_counts_every_frame(clip: Path) -> None:
    assert decode_only(clip) == 20
    assert decode_only(clip, threads=False) == 20
    reader = FrameReader(clip, fps=1)
    assert len(list(reader)) == 1 and reader.decoded == 20


def test_reader_can_be_iterated_again_and_closed(clip: Path) -> None:
    with FrameReader(clip, fps=12.5) as reader:
        first = [sf.time for sf in reader]
        second = [sf.time for sf in reader]  # reopens the file
    assert first == second and len(first) == 10
    FrameReader(clip, fps=5).close()  # never iterated: close() releases the file


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def test_memory_stays_bounded_over_a_long_clip(tmp_path: Path) -> None:
    n, h, w = 300, 240, 320
    path = write_mp4(
        tmp_path / "long.mp4",
        (_pattern(i % 20, h, w) for i in range(n)),
        fps=25,
        preset="ultrafast",
    )
    all_frames_rgb = n * h * w * 3  # 69 MB
    refs = []
    gc.collect()
    base = _rss_bytes()
    rss_growth = 0
    tracemalloc.start()
    try:
        for sf in FrameReader(path, fps=25):
            sf.rgb()
            sf.gray()
            sf.crop_rgb(10, 10, 90, 90)
            refs.append(weakref.ref(sf))
            if base is not None:
                rss_growth = max(rss_growth, _rss_bytes() - base)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(refs) == n
    # Every frame was converted, yet what numpy allocated peaked at a few frames' worth.
    assert peak < 10 * h * w * 3 < all_frames_rgb / 20
    # tracemalloc cannot see FFmpeg's buffers (decoded frames, swscale output behind
    # rgb()), so watch the process too: keeping every frame would add > 200 MB here;
    # streaming adds a few MB (decoder threads and their frame pool).
    if base is not None:
        assert rss_growth < all_frames_rgb / 4
    # The reader keeps no sample alive once the consumer lets go of it.
    del sf
    assert all(r() is None for r in refs)
