"""Hand-built media files for tests: encoded images, a PNG with a forged size, a JPEG with EXIF
orientation, a short clip of a real video."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

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


def video_clip(source: Path, target: Path, frames: int, width: int, fps: int = 25, key_frame_every: int = 8) -> Path:
    """The first ``frames`` frames of ``source`` scaled to ``width`` (even height), as H.264 in MP4.

    A real scene at a fraction of the decoding cost, for tests that run the job several times.
    A key frame every ``key_frame_every`` frames: segments of a multiple of it start at key
    frames, as a camera's GOP of a second or two does at the job's segment sizes.
    """
    import av

    with av.open(str(source)) as container, av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(key_frame_every), "keyint_min": str(key_frame_every), "sc_threshold": "0"}
        for index, frame in enumerate(container.decode(video=0)):
            if index == frames:
                break
            image = frame.to_ndarray(format="bgr24")
            height = int(round(image.shape[0] * width / image.shape[1] / 2)) * 2
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            if index == 0:
                stream.width, stream.height = width, height
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target



def rotated_clip(source: Path, target: Path, pix_fmt: str = "yuv444p") -> Path:
    """``source`` (an H.264 MP4) as a phone stores portrait video: the pixels turned 90 degrees
    counter-clockwise, and a display matrix in the track header that turns them back, so players
    (and the job) show ``source``'s frames. Near-lossless (H.264 at qp 0, 4:4:4 unless ``pix_fmt``
    says otherwise; PyAV cannot set a display matrix, so the identity matrix of the written file's
    tkhd box is replaced).
    """
    import av

    with av.open(str(source)) as container, av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.pix_fmt = pix_fmt
        for index, frame in enumerate(container.decode(video=0)):
            image = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="bgr24")))  # counter-clockwise
            if index == 0:
                stream.width, stream.height = image.shape[1], image.shape[0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(target.read_bytes())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    assert at > 0, "no identity matrix in the track header"
    # [a b u; c d v; x y w] = [0 1 0; -1 0 0; 0 0 1]: shown turned 90 degrees clockwise
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    target.write_bytes(bytes(data))
    return target
