"""Decoding encoded still images (JPEG, PNG, BMP, WebP, TIFF, GIF, AVIF, ...) to BGR uint8 arrays.

Before any pixel is decoded the dimensions are read from the header (JPEG SOF, PNG
IHDR, BMP, WebP VP8/VP8L/VP8X, TIFF first IFD, GIF logical screen, AVIF 'ispe'), so an
image larger than the allowed
number of pixels is refused without allocating it. Formats not parsed here fall back to
OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS, 2**30 by default).

``cv2.imdecode(..., IMREAD_COLOR)`` applies the EXIF orientation of JPEGs (checked by
tests/test_sources.py for OpenCV 5.0) and converts grayscale, 16-bit and alpha images
to 8-bit BGR (16-bit values are scaled down by 256; alpha is dropped, not composited).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

_FORMATS = "JPEG/PNG/BMP/WebP/TIFF/GIF/AVIF"


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; width/height are those of the header, 0 when unknown.

    kind: "corrupt", or "too_large" when the image was refused for its size (an ERROR_KINDS value).
    """

    def __init__(self, message: str, width: int = 0, height: int = 0, kind: str = "corrupt"):
        super().__init__(message)
        self.width, self.height, self.kind = width, height, kind


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image -> uint8[H, W, 3] BGR (EXIF orientation applied); raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("cannot decode image: empty file (0 bytes)")
    header = probe_image(data)
    width = height = 0
    if header is not None:
        fmt, width, height, complete = header
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image of {width}x{height} exceeds max_image_pixels ({max_pixels}); raise sources.max_image_pixels "
                "to read it",
                width,
                height,
                kind="too_large",
            )
        if not complete:
            message = f"cannot decode {fmt} image: truncated (no end-of-image marker, {len(data)} bytes)"
            raise ImageDecodeError(message, width, height)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1]
        raise ImageDecodeError(f"cannot decode image: OpenCV refused it ({reason})", width, height) from error
    if image is None:
        what = f"{header[0]} image: corrupt or truncated" if header else f"image: not a {_FORMATS} or truncated"
        raise ImageDecodeError(f"cannot decode {what} ({len(data)} bytes)", width, height)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:  # IMREAD_COLOR guarantees this today
        raise ImageDecodeError(f"cannot decode image: OpenCV returned {image.dtype}{list(image.shape)}, not BGR uint8")
    return image


def probe_image(data: bytes) -> tuple[str, int, int, bool] | None:
    """(format, width, height, complete) from the header, or None when the format is not recognised.

    complete is False for a JPEG without an end-of-image marker after its first scan
    (truncated); for the other formats it is True (their decoders detect truncation).
    Width and height are those stored, before any EXIF rotation (same pixel count).
    """
    try:
        if data.startswith(b"\xff\xd8"):
            return _probe_jpeg(data)
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height, True
        if data.startswith(b"BM") and len(data) >= 26:
            (dib_size,) = struct.unpack("<I", data[14:18])
            fmt = "<HH" if dib_size == 12 else "<ii"
            width, height = struct.unpack(fmt, data[18 : 18 + struct.calcsize(fmt)])
            return "BMP", abs(width), abs(height), True
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _probe_webp(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _probe_tiff(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):  # logical screen size
            width, height = struct.unpack("<HH", data[6:10])
            return "GIF", width, height, True
        if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
            return _probe_avif(data)
    except (struct.error, IndexError, ValueError):
        return None  # a header too short to parse: let the decoder report the file
    return None


def _probe_avif(data: bytes) -> tuple[str, int, int, bool] | None:
    """The largest image spatial extent ('ispe' property: version/flags, then width and height, 32-bit
    big-endian) in the file's meta box: the primary image or its grid."""
    sizes, position = [], data.find(b"ispe", 0, 1 << 16)
    while position >= 4:
        sizes.append(struct.unpack(">II", data[position + 8 : position + 16]))
        position = data.find(b"ispe", position + 4, 1 << 16)
    if not sizes:
        return None
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    return "AVIF", width, height, True


def _probe_jpeg(data: bytes) -> tuple[str, int, int, bool] | None:
    size = None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, "FF D9" can only be the end marker
            if size is None:
                return None
            complete = data.find(b"\xff\xd9", position + 2 + length) >= 0
            return "JPEG", size[0], size[1], complete
        position += 2 + length
    return ("JPEG", size[0], size[1], False) if size else None


def _probe_webp(data: bytes) -> tuple[str, int, int, bool] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    elif chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    else:
        return None
    return "WebP", width, height, True


def _probe_tiff(data: bytes) -> tuple[str, int, int, bool] | None:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8 : 10 if kind == 3 else 12])[0]
    if 256 in found and 257 in found:
        return "TIFF", found[256], found[257], True
    return None
