"""Video frames as decoded: YUV 4:2:0 planes and the colour matrix that turns them into RGB.

``sources.decoder: yuv`` ships video frames this way instead of as BGR: 1.5 bytes a pixel
instead of 3 through the object store, and no colour conversion or resize on the CPU (no
swscale): the inference actor converts and resizes on its device (openpose_ray.device_pixels).

The conversion is the standard one (ITU-R BT.601 / 709 / 2020 and SMPTE 240M), which
:func:`colour_of` reads off the frame as FFmpeg's swscale does: the frame's matrix
(BT.601 where it is unspecified) and range (limited where it is unspecified, full for the
``yuvj`` formats). Chroma is sited as swscale's unscaled converter takes it: each chroma
sample covers its 2x2 block of luma. No numpy-free shortcut here: callers hold PyAV frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (Kr, Kb) of each matrix; Kg = 1 - Kr - Kb. FFmpeg's AVColorSpace numbers -> our names.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "smpte240m": (0.212, 0.087),
            "bt2020": (0.2627, 0.0593), "fcc": (0.30, 0.11)}
_AVCOL_SPC = {1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_AVCOL_RANGE_JPEG = 2
# 8-bit 4:2:0 layouts the planes are read from without conversion: planar (libavcodec's software
# decoders) and semi-planar, U and V interleaved (NV12, what hardware decoders hand back).
PLANAR_FORMATS = {"yuv420p": False, "yuvj420p": True}
SEMI_PLANAR_FORMATS = {"nv12"}


@dataclass(frozen=True, eq=False)
class Yuv420:
    """One frame's YUV 4:2:0 planes, in the displayed orientation.

    y: uint8[H, W]; u, v: uint8[(H + 1) // 2, (W + 1) // 2], sample (i, j) covering luma rows
    2i, 2i+1 and columns 2j, 2j+1. matrix: a key of :data:`MATRICES`. full_range: Y and chroma
    span 0-255 (JPEG range) rather than 16-235 / 16-240.
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    matrix: str
    full_range: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.y.shape[1], self.y.shape[0]

    def __post_init__(self) -> None:
        chroma = ((self.y.shape[0] + 1) // 2, (self.y.shape[1] + 1) // 2)
        if self.y.ndim != 2 or self.u.shape != chroma or self.v.shape != chroma:
            raise ValueError(f"not 4:2:0 planes: y {self.y.shape}, u {self.u.shape}, v {self.v.shape}")
        if self.matrix not in MATRICES:
            raise ValueError(f"unknown colour matrix {self.matrix!r}; known: {', '.join(MATRICES)}")


def colour_of(frame) -> tuple[str, bool]:
    """(matrix, full_range) of a PyAV VideoFrame, as swscale reads them (see the module docstring)."""
    matrix = _AVCOL_SPC.get(int(frame.colorspace), "bt601")
    full = int(frame.color_range) == _AVCOL_RANGE_JPEG or PLANAR_FORMATS.get(frame.format.name, False)
    return matrix, bool(full)


def yuv420_of(frame) -> Yuv420 | None:
    """A PyAV VideoFrame's planes as :class:`Yuv420` (copies; stored orientation), or None when the frame is not
    8-bit 4:2:0 (4:2:2, 4:4:4, 10-bit, RGB, grey: the caller converts those on the CPU as before)."""
    name = frame.format.name
    if name not in PLANAR_FORMATS and name not in SEMI_PLANAR_FORMATS:
        return None
    y = _plane(frame.planes[0], frame.planes[0].width, frame.planes[0].height)
    if name in SEMI_PLANAR_FORMATS:
        chroma = frame.planes[1]
        interleaved = _plane(chroma, 2 * ((frame.width + 1) // 2), (frame.height + 1) // 2)
        u, v = np.ascontiguousarray(interleaved[:, 0::2]), np.ascontiguousarray(interleaved[:, 1::2])
    else:
        u = _plane(frame.planes[1], frame.planes[1].width, frame.planes[1].height)
        v = _plane(frame.planes[2], frame.planes[2].width, frame.planes[2].height)
    return Yuv420(y, u, v, *colour_of(frame))


def _plane(plane, width: int, height: int) -> np.ndarray:
    """uint8[height, width] copy of a plane whose rows are ``plane.line_size`` bytes apart."""
    rows = np.frombuffer(plane, np.uint8)[: plane.line_size * height].reshape(height, plane.line_size)
    return rows[:, :width].copy()


def rotated(planes: Yuv420, turns: int) -> Yuv420:
    """``planes`` turned clockwise by ``turns`` quarter turns (decoding.displayed's rule for BGR frames).

    Both sizes must be even (a chroma sample's 2x2 block must stay one block after the turn).
    """
    turns %= 4
    if turns and (planes.y.shape[0] % 2 or planes.y.shape[1] % 2):
        raise ValueError(f"cannot turn 4:2:0 planes of odd size {planes.size}")
    if turns == 0:
        return planes
    y, u, v = (np.ascontiguousarray(np.rot90(plane, -turns)) for plane in (planes.y, planes.u, planes.v))
    return Yuv420(y, u, v, planes.matrix, planes.full_range)
