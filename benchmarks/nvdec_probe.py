"""What a GPU machine offers for decoding video on the GPU (issue 25, item 2): a one-minute probe.

Checks, each on its own so that one failure says nothing of the others, and prints one JSON line
starting ``NVDEC_PROBE``:

- the CUDA device torch sees, and the NVIDIA driver (nvidia-smi);
- PyAV's FFmpeg: its version and which NVIDIA decoders it was built with (h264_cuvid, hevc_cuvid,
  vp9_cuvid, av1_cuvid) and whether CUDA is among its hardware device types; for each found, a
  decode of the first frames of ``--video`` through it;
- the job's own way (``sources.decoder: gpu``, openpose_ray.sources.nvdec): the whole of ``--video``
  through PyAV's CUDA hwaccel, frames/s, the frames NVDEC decoded, whether the frames kept their
  colour matrix, range and key-frame flags, and their planes against CPU decoding (equal or not);
- torchcodec and PyNvVideoCodec (NVIDIA's Python bindings): importable or not (with the error), their
  versions, and, where importable, a decode of the first frames of ``--video`` on the GPU with the
  time per frame.

    python benchmarks/nvdec_probe.py --video street_720p_h264.avi [--json probe.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import time
import traceback
from pathlib import Path

_CUVID = ("h264_cuvid", "hevc_cuvid", "vp9_cuvid", "av1_cuvid")
_FRAMES = 60


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def probe_cuda() -> dict:
    out: dict = {}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.cuda.is_available()
        if out["cuda"]:
            out["device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not fail
        out["error"] = _error(exc)
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
        out["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return out


def probe_pyav(video: Path) -> dict:
    out: dict = {}
    try:
        import av

        out["av"] = av.__version__
        out["ffmpeg"] = getattr(av, "ffmpeg_version_info", None)
        out["cuvid_decoders"] = {}
        for name in _CUVID:
            try:
                av.codec.Codec(name, "r")
                out["cuvid_decoders"][name] = True
            except Exception:  # noqa: BLE001 - not built in
                out["cuvid_decoders"][name] = False
        try:
            from av.codec.hwaccel import hwdevices_available

            out["hwdevices"] = list(hwdevices_available())
        except Exception as exc:  # noqa: BLE001 - older PyAV: no hwaccel module
            out["hwdevices"] = _error(exc)
        if out["cuvid_decoders"].get("h264_cuvid"):
            out["h264_cuvid_decode"] = _time_pyav_cuvid(av, video)
    except Exception as exc:  # noqa: BLE001
        out["error"] = _error(exc)
    return out


def _time_pyav_cuvid(av, video: Path) -> dict:
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            codec = av.CodecContext.create("h264_cuvid", "r")
            codec.extradata = stream.codec_context.extradata
            start, frames = time.perf_counter(), 0
            for packet in container.demux(stream):
                frames += len(codec.decode(packet))
                if frames >= _FRAMES:
                    break
            return {"frames": frames, "ms_per_frame": round(1000 * (time.perf_counter() - start) / max(frames, 1), 2)}
    except Exception as exc:  # noqa: BLE001
        return {"error": _error(exc)}


def probe_job_nvdec(video: Path) -> dict:
    """The video decoded as the job's decode tasks do under sources.decoder gpu, against CPU decoding."""
    try:
        import sys

        import av
        import numpy as np

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from openpose_ray.sources.nvdec import frame_decoded_by_nvdec, nvdec_accel, open_video
        from openpose_ray.sources.yuv import yuv420_of

        accel, why = nvdec_accel("probe")
        if accel is None:
            return {"nvdec": False, "why": why}
        start = time.perf_counter()
        file, container, why = open_video(lambda: open(video, "rb"), accel)
        with file, container:
            stream = container.streams.video[0]
            out = {"opened": why or "with NVDEC", "is_hwaccel": bool(stream.codec_context.is_hwaccel)}
            codec = stream.codec_context
            frames = [(frame, frame_decoded_by_nvdec(codec, frame)) for frame in container.decode(stream)]
        seconds = time.perf_counter() - start
        with av.open(str(video)) as container:
            software = list(container.decode(video=0))
        same = [all(np.array_equal(getattr(yuv420_of(a), p), getattr(yuv420_of(b), p)) for p in "yuv")
                for (a, _), b in zip(frames, software) if yuv420_of(a) is not None]
        out.update({"frames": len(frames), "by_nvdec": sum(hw for _, hw in frames),
                    "frames_per_s_with_open": round(len(frames) / seconds, 1),
                    "formats": sorted({f.format.name for f, _ in frames}),
                    "colorspace_kept": [f.colorspace for f, _ in frames[:1]] == [software[0].colorspace],
                    "key_frames": [sum(f.key_frame for f, _ in frames), sum(f.key_frame for f in software)],
                    "planes_equal_to_cpu": f"{sum(same)} of {len(software)}"})
        return out
    except Exception as exc:  # noqa: BLE001
        return {"error": _error(exc), "trace": traceback.format_exc().splitlines()[-3:]}


def probe_module(name: str, video: Path) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        return {"importable": False, "error": _error(exc)}
    out = {"importable": True, "version": getattr(module, "__version__", None)}
    try:
        if name == "torchcodec":
            from torchcodec.decoders import VideoDecoder

            decoder = VideoDecoder(str(video), device="cuda")
            start = time.perf_counter()
            frames = [decoder[i] for i in range(min(_FRAMES, len(decoder)))]
            out["decode"] = {"frames": len(frames), "device": str(frames[0].device), "shape": list(frames[0].shape),
                             "ms_per_frame": round(1000 * (time.perf_counter() - start) / len(frames), 2)}
        elif name == "PyNvVideoCodec":
            decoder = module.SimpleDecoder(str(video), gpu_id=0)
            start = time.perf_counter()
            count = min(_FRAMES, len(decoder))
            frames = [decoder[i] for i in range(count)]
            out["decode"] = {"frames": len(frames),
                             "ms_per_frame": round(1000 * (time.perf_counter() - start) / max(count, 1), 2)}
    except Exception as exc:  # noqa: BLE001
        out["decode_error"] = _error(exc)
        out["trace"] = traceback.format_exc().splitlines()[-3:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, type=Path, help="an H.264 video to decode")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = {"cuda": probe_cuda(), "pyav": probe_pyav(args.video), "job_nvdec": probe_job_nvdec(args.video),
              "torchcodec": probe_module("torchcodec", args.video),
              "PyNvVideoCodec": probe_module("PyNvVideoCodec", args.video)}
    print("NVDEC_PROBE " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
