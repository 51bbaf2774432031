"""What a GPU machine offers for decoding video on the GPU (issue 25, item 2): a one-minute probe.

Checks, each on its own so that one failure says nothing of the others, and prints one JSON line
starting ``NVDEC_PROBE``:

- the CUDA device torch sees, and the NVIDIA driver (nvidia-smi);
- PyAV's FFmpeg: its version and which NVIDIA decoders it was built with (h264_cuvid, hevc_cuvid,
  vp9_cuvid, av1_cuvid) and whether CUDA is among its hardware device types; for each found, a
  decode of the first frames of ``--video`` through it;
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
    result = {"cuda": probe_cuda(), "pyav": probe_pyav(args.video),
              "torchcodec": probe_module("torchcodec", args.video),
              "PyNvVideoCodec": probe_module("PyNvVideoCodec", args.video)}
    print("NVDEC_PROBE " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
