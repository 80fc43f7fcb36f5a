"""File kinds from first bytes, whatever the name says."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from veracity.media.sniff import sniff


@pytest.mark.parametrize(("head", "kind", "fmt"), [
    (b"", "empty", "empty"),
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video", "mp4"),
    (b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00", "audio", "m4a"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video", "matroska"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", "video", "avi"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio", "wav"),
    (b"ID3\x04\x00\x00\x00\x00", "audio", "mp3"),
    (bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(60), "audio", "mp3"),  # MPEG-1 layer III, 128 kb/s, 44.1 kHz
    (bytes([0xFF, 0xFF, 0xFF, 0xFF]) + bytes(60), "unknown", "unknown"),  # sync bits, reserved fields
    (b"hello, this is text\n" * 10, "text", "text"),
])
def test_signatures(head: bytes, kind: str, fmt: str) -> None:
    s = sniff(head)
    assert (s.kind, s.format) == (kind, fmt)


def test_real_images_are_images() -> None:
    img = np.zeros((16, 16, 3), np.uint8)
    assert sniff(cv2.imencode(".jpg", img)[1].tobytes()).format == "jpeg"
    assert sniff(cv2.imencode(".png", img)[1].tobytes()).format == "png"


def test_random_bytes_are_unknown_not_text() -> None:
    assert sniff(bytes(range(256)) * 8).kind == "unknown"


def test_a_real_mp4_is_a_video(tiny_corpus) -> None:
    clip = sorted((tiny_corpus / "videos").glob("*.mp4"))[0]
    assert sniff(clip.read_bytes()[:4096]).kind == "video"
