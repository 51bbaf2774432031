"""Decoding video on the node's NVIDIA GPU (NVDEC) through PyAV's hardware acceleration (``sources.decoder: gpu``).

The decode tasks stay CPU tasks: they demux, and hand the packets to the GPU's video decoder
through FFmpeg's CUDA hwaccel. Ray (2.60) leaves ``CUDA_VISIBLE_DEVICES`` alone for tasks that
reserve no GPU, so a decode task on a GPU node sees the node's GPUs without taking any from the
inference actors; NVDEC is a unit of its own beside the GPU's compute. Each shard is decoded on
one of the node's GPUs chosen by its id (spread over the GPUs, the same one on a re-run). The
decoded frames come back to host memory as NV12 (PyAV copies them down) and go on as the planes
of ``sources.decoder: yuv`` do: the actor converts and resizes them on its device. H.264, HEVC,
VP9 and AV1 decoding is exact, so the planes equal libavcodec's.

Where NVDEC cannot decode a video, the task decodes it on the CPU as ``yuv`` does and says why
(:func:`nvdec_accel`, :func:`open_video`); the summary counts both (``decoding``).
"""

from __future__ import annotations

import os
import zlib

# Formats of frames that NVDEC decoded, once PyAV has copied them to host memory (8, 10 and 16 bit).
NVDEC_FRAME_FORMATS = frozenset({"nv12", "p010le", "p016le"})
# PyAV before 18 copies only the pts of a frame it brings down from the GPU: its colour matrix,
# display matrix (rotation) and key-frame flag are lost, and with them the right colours, the
# displayed orientation and the recovery after a corrupt packet.
MIN_PYAV = 18
_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # one folder per GPU where the NVIDIA driver is loaded


def gpus_on_node() -> int:
    """NVIDIA GPUs this process can use: those CUDA_VISIBLE_DEVICES names, else the driver's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip()])
    try:
        return len(os.listdir(_NVIDIA_GPUS))
    except OSError:
        return 0


def nvdec_accel(shard_id: str):
    """(PyAV HWAccel for CUDA on the GPU this shard goes to, None) or (None, why NVDEC cannot be used here)."""
    import av
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if int(av.__version__.split(".")[0]) < MIN_PYAV:
        return None, f"PyAV {av.__version__} loses frame properties on GPU frames (needs {MIN_PYAV} or newer)"
    if "cuda" not in hwdevices_available():
        return None, "PyAV's FFmpeg has no CUDA hardware device"
    gpus = gpus_on_node()
    if gpus == 0:
        return None, "no NVIDIA GPU on this node"
    device = zlib.crc32(shard_id.encode("utf-8", "surrogatepass")) % gpus
    # primary_ctx: the device's primary CUDA context, made once per process and shared, instead of a new
    # context (hundreds of ms, hundreds of MB of GPU memory) for every video opened
    return HWAccel("cuda", device=str(device), allow_software_fallback=True, options={"primary_ctx": "1"}), None


def open_video(open_file, accel):
    """(file, container, why not NVDEC): the video opened for NVDEC with ``accel``, else in software.

    open_file: () -> a new binary file object of the video (opened again when the first try fails).
    why not NVDEC: None when opened with ``accel`` (whether a stream's decoder then runs on the GPU, its
    codec context's ``is_hwaccel`` says); else why the GPU could not be used. A video that cannot be
    opened at all raises as without NVDEC.
    """
    import av

    why = None
    if accel is not None:
        file = open_file()
        try:
            return file, av.open(file, "r", hwaccel=accel), None
        except (av.FFmpegError, NotImplementedError, OSError) as error:
            why = f"NVDEC could not be opened ({type(error).__name__}: {error})"
            file.close()
        except BaseException:
            file.close()
            raise
    file = open_file()
    try:
        return file, av.open(file, "r"), why
    except BaseException:  # the caller closes the file with the container; without one, here
        file.close()
        raise


def frame_decoded_by_nvdec(codec_context, frame) -> bool:
    """Whether NVDEC decoded ``frame`` (FFmpeg falls back to software for a profile the GPU lacks)."""
    return bool(codec_context.is_hwaccel) and frame.format.name in NVDEC_FRAME_FORMATS
