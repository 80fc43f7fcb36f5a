"""What a file is, from its first bytes: never from its name or a client's Content-Type.

:func:`sniff` sorts the head of a file into ``video`` (a container FFmpeg can hold video
in), ``image``, ``audio``, ``text``, ``empty`` or ``unknown``. The service refuses what
cannot be a video before decoding anything; ``unknown`` binary is left to FFmpeg, which
knows more containers than this table (a file it cannot open becomes ``corrupt``).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_BYTES = 4096  # enough for every signature below, and for the text check


@dataclass(frozen=True)
class Sniffed:
    """The kind of a file and the format that decided it (e.g. ``video``/``mp4``)."""

    kind: str
    format: str


_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ")


def sniff(head: bytes) -> Sniffed:
    """Classify a file by its first bytes (pass at least :data:`HEAD_BYTES` when available)."""
    if not head:
        return Sniffed("empty", "empty")
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return Sniffed("audio", "m4a")
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
            return Sniffed("image", brand.decode("latin-1").strip())
        return Sniffed("video", "mp4")  # mp4, mov (qt), 3gp, ...
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return Sniffed("video", "mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "matroska")
    if head.startswith(b"RIFF") and len(head) >= 12:
        sub = head[8:12]
        if sub == b"AVI ":
            return Sniffed("video", "avi")
        if sub == b"WAVE":
            return Sniffed("audio", "wav")
        if sub == b"WEBP":
            return Sniffed("image", "webp")
    if head.startswith(b"FLV"):
        return Sniffed("video", "flv")
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return Sniffed("video", "asf")
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return Sniffed("video", "mpeg")
    if len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return Sniffed("video", "mpegts")
    if head.startswith(b"OggS"):
        return Sniffed("video", "ogg")  # Ogg holds Theora video as well as Vorbis/Opus audio
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "png")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed("image", "gif")
    if head.startswith(b"BM") and len(head) >= 14:
        return Sniffed("image", "bmp")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Sniffed("image", "tiff")
    if head.startswith(b"ID3") or _mpeg_audio_frame(head):
        return Sniffed("audio", "mp3")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "flac")
    if _is_text(head):
        return Sniffed("text", "text")
    return Sniffed("unknown", "unknown")


def _mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG audio frame header: sync bits, and no reserved version, layer, bitrate or rate."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 0x3, (head[1] >> 1) & 0x3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0x3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the head is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))
