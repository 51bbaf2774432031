"""Hand-built image files for tests: encoded images, a PNG with a forged size, a JPEG with EXIF orientation."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def forged_png(width: int, height: int) -> bytes:
    """An 8x8 PNG whose IHDR (with a valid CRC) claims width x height."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), ".png"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag (big-endian TIFF)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encode(image, ".jpg")
    return data[:2] + app1 + data[2:]
