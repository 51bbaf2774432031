"""Wiring of the annotation job: Ray Data stages from a JobConfig, run, summary.

    ListInputs (read tasks, streaming listing)
      -> plan_shards (0.5 CPU: videos cut into segments)
      -> prepare_shard (0.7 CPU: decode + resize to uint8 network inputs)
      -> InferenceActor (actor pool: GPU actors, or fractional-CPU actors; see actor_pool)
      -> postprocess_and_write (0.5 CPU, bounded tasks: group people, write the shard's Parquet)
      -> render_shard (optional)
    Each stage hands the next one typed record (pipeline.records), one row at a time
    from Arrow batches whose records' bytes are never copied on the way.
    then, on the driver: progress, the manifest (snapshot, garbage collection),
    track ids of completed videos (outputs.tracks), rendered-video assembly, the run report
    (report.html, outputs.report), summary.json.

Before the pipeline starts, the driver resolves the weights once and ships
them to the actors through the object store (pipeline.shipped_weights), and
waits until the cluster can place the first inference actors: on a cold
autoscaling cluster that is minutes (pipeline.actor_pool).

Incremental and crash-safe (see openpose_ray.outputs.manifest): before the
pipeline starts, the driver reads the output's manifest and hands the listing
the inputs already done in this run's generation; every shard commits itself
after its files are published. Killing the driver or any worker at any moment
loses at most uncommitted work, which the next run does again.

Retries on worker loss are Ray Data's, stated here rather than left implicit:
map tasks are resubmitted without limit when their worker dies
(``max_retries=-1``), inference actors are restarted without limit and their
tasks resubmitted (``max_restarts=-1``, ``max_task_retries=-1``). Exceptions
raised by our own code are retried ``_MAP_RETRIES`` times (after the storage
layer's own retries) and then fail the job, never silently dropping a shard.

Stages get different CPU reservations on purpose: Ray Data fuses adjacent
operators with equal resources into one task, and a fused plan+prepare would
decode all segments of a video in one task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

import ray
from ray.data import ActorPoolStrategy

from .. import __version__
from ..backends import choose_backend
from ..config import check_precision, resolve_precision
from ..config_loader import ConfigError, config_fingerprint
from ..jobconfig import JobConfig, resolve_decoder
from ..models.registry import get_entry
from ..models.weights import resolve_weights
from ..outputs.provenance import Provenance
from ..outputs import manifest
from ..outputs.lock import OutputLock
from ..outputs.report import StageTimeline, write_report_or_warn
from ..outputs.tracks import track_pending_videos
from ..outputs.writer import write_summary
from ..storage import redact, text_form
from .actor_pool import ActorPlan, ClusterView, plan_actors, wait_for_actors
from .listing_source import ListingDatasource
from .shipped_weights import ShippedWeights
from .records import AlreadyDone, Skipped, WrittenShard, from_row, per_row, per_row_class
from .inference_actor import InferenceActor
from .stages import model_input_spec, plan_shards, postprocess_and_write, prepare_shard, render_shard

log = logging.getLogger(__name__)

# CPU reservations per stage (see the module docstring on fusion).
_LIST_CPUS = 0.25
_PLAN_CPUS = 0.5
# A decode task keeps ~1-1.5 cores busy (FFmpeg's slice threads) at idle priority; it reserves
# less than one CPU so that, where the network is fast (a GPU node; the instant network of
# benchmarks/bench_ceiling.py), two decode tasks fit on 2 CPUs beside post-processing (0.5)
# and an actor that only feeds its device (0.1): one at a time left a core idle (a replay of 4
# copies of both videos: 73.7 frames/s with one, 101.8 with two; docs/benchmarks-history.md "Decoding on
# every core").
_DECODE_CPUS = 0.7
# Decode (0.7) + one CPU inference actor (0.5) + post-process (0.5) fit 2 CPUs. Were the three
# to need more than the machine has, Ray Data would run post-processing only once decoding
# is over, and every inferred shard would wait in the object store meanwhile: memory would
# grow with the input (measured: +60 MiB per video segment, docs/benchmarks-history.md "Load").
_POST_CPUS = 0.5
# Post-processing tasks at once: one per this many of the cluster's CPUs (at least one). Ray
# Data hands each operator's unused CPU budget to the most downstream operator first: an
# unbounded post-processing stage, which needs ~1 ms a frame against decoding's ~10, held the
# budget that a second decode task needed (one post task keeps up with ~4 decode tasks even
# when it groups from the full fields, ~4 ms a frame).
_CPUS_PER_POST_TASK = 4
# Ray kills a worker process that has been idle for a second once a node has more workers
# than CPUs; the job's stages (list, plan, decode, infer, post-process) alternate, so workers
# were killed and started again all through a run, each start ~1 s of a core in imports
# (9 starts in a 25 s replay, docs/benchmarks-history.md "Decoding on every core"). An in-process Ray
# keeps idle workers for a minute; for clusters, infra/ray-cluster.yaml sets the same.
LOCAL_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}
_PROGRESS_EVERY_S = 10.0
_SKIPPED_LISTED = 100  # skipped inputs named in the summary (all are counted)
_MAP_RETRIES = 2  # attempts after the first for a map task whose code raised
_ACTOR_INIT_DEATHS = 3  # inference actors that may die while starting (e.g. out of memory) before the job fails


def init_ray(config: JobConfig) -> None:
    """Connect to the configured / submitting cluster, or start Ray in-process."""
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=config.ray.num_cpus, object_store_memory=config.ray.object_store_memory,
                 include_dashboard=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)


def make_provenance(config: JobConfig, weights_sha256: str | None) -> Provenance:
    """The run's provenance; ``weights_sha256``: of the weights' file (ResolvedWeights.file_sha256)."""
    entry = get_entry(config.model.name)
    spec = model_input_spec(config)
    now = datetime.now(timezone.utc)
    return Provenance(
        run_id=f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        model=entry.name,
        weights_sha256=weights_sha256 or "",
        net_size=spec.net_size,
        resize_mode=spec.resize_mode,
        scales=tuple(config.model.scales),
        code_version=__version__,
        config_fingerprint=config_fingerprint(config),
        created_at=now.isoformat(timespec="seconds"),
    )


def ship_weights(config: JobConfig) -> ShippedWeights:
    """Resolve the job's weights here, on the driver, and put them in the object store for the actors."""
    model = config.model
    resolved = resolve_weights(get_entry(model.name), model.weights, sha256=model.weights_sha256, s3=config.s3)
    return ShippedWeights.put(resolved)


def configure_retries(config: JobConfig) -> None:
    """Set the retry policy of the current Ray Data context (see the module docstring)."""
    context = ray.data.DataContext.get_current()
    context.retried_map_errors = True
    context.max_map_retries = _MAP_RETRIES
    context.max_consecutive_actor_init_deaths = _ACTOR_INIT_DEATHS
    # Ray Data fails a pipeline that makes no progress for this long (default 30 min); losing
    # the GPU nodes mid-run and waiting for new ones is that, and gets the job's own bound.
    context.execution_no_progress_timeout_s = max(context.execution_no_progress_timeout_s,
                                                  config.inference.wait_for_actors_s)


# Every stage takes its rows one at a time (as Ray Data's ``map`` would) from Arrow batches, read and
# written without copying the records' bytes (pipeline.records: per_row, per_row_class). A batch is a whole
# block: to cut a block of several rows into batches of one, Ray Data first copies its columns into one
# contiguous buffer (Batcher, try_combine_chunked_columns), ~95 MB a segment.
_ROWS = {"batch_size": None, "batch_format": "pyarrow", "zero_copy_batch": True}


def post_tasks(cluster: ClusterView) -> int:
    """Post-processing tasks at once on ``cluster``: one per _CPUS_PER_POST_TASK CPUs it has or can get."""
    return max(1, int(cluster.obtainable("CPU") // _CPUS_PER_POST_TASK))


def planned_dataset(config: JobConfig, done_ref=None) -> ray.data.Dataset:
    """The job's first two stages: the inputs listed and planned into shards (records of the plan stage).

    done_ref: as :class:`ListingDatasource`'s. benchmarks/bench_ceiling.py decodes after it alone.
    """
    ds = ray.data.read_datasource(ListingDatasource(config, done_ref), num_cpus=_LIST_CPUS)
    return ds.map_batches(per_row(plan_shards), fn_kwargs={"config": config}, num_cpus=_PLAN_CPUS, **_ROWS)


def build_dataset(config: JobConfig, provenance: Provenance, plan: ActorPlan, weights: ShippedWeights,
                  done_ref=None, actor_class: type = InferenceActor, *, post_concurrency: int) -> ray.data.Dataset:
    """The job's Ray Data pipeline (see the module docstring).

    actor_class: the inference stage; benchmarks put a stand-in with InferenceActor's
    constructor here (benchmarks/bench_ceiling.py replays recorded fields), never the job.
    post_concurrency: post-processing tasks at once (:func:`post_tasks`).
    """
    ds = planned_dataset(config, done_ref)
    ds = ds.map_batches(per_row(prepare_shard), fn_kwargs={"config": config}, num_cpus=_DECODE_CPUS, **_ROWS)
    custom = {name: amount for name, amount in plan.bundle.items() if name not in ("CPU", "GPU")}
    ds = ds.map_batches(
        per_row_class(actor_class),
        fn_constructor_kwargs={"config": config, "weights": weights, "device": plan.device,
                               "torch_threads": plan.torch_threads, "peaks_on_device": plan.peaks_on_device},
        compute=ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        num_cpus=plan.bundle["CPU"],
        num_gpus=plan.bundle.get("GPU", 0),
        resources=custom or None,
        **_ROWS,
        # Ray Data restarts a lost actor and retries its tasks without limit by default
        # (max_restarts=-1, max_task_retries=-1), so a vanished GPU node costs time, not rows.
    )
    ds = ds.map_batches(per_row(postprocess_and_write), fn_kwargs={"config": config, "provenance": provenance},
                        num_cpus=_POST_CPUS, concurrency=post_concurrency, **_ROWS)
    if config.write.render_images or config.write.render_videos:
        ds = ds.map_batches(per_row(render_shard), fn_kwargs={"config": config, "provenance": provenance},
                            num_cpus=_POST_CPUS, **_ROWS)
    return ds


def run_job(config: JobConfig, force: bool = False, break_lock: bool = False) -> dict:
    """Run the job to completion; return the summary (also written as summary.json).

    force: annotate every input again, also those the manifest says are done.
    break_lock: take the output's lock even if another run may still hold it
    (outputs.lock; without it a held lock raises LockHeld before anything is written).
    """
    started = time.time()
    init_ray(config)
    configure_retries(config)
    cluster = ClusterView.current()
    plan = plan_actors(config.inference, cluster)
    # inference.precision and sources.decoder "auto" become what they mean on the actors' device, before anything uses them
    # (the fingerprint, the actors, the summary)
    precision = resolve_precision(config.inference.precision, plan.device)
    config = dataclasses.replace(config, inference=dataclasses.replace(config.inference, precision=precision),
                                 sources=dataclasses.replace(config.sources,
                                                             decoder=resolve_decoder(config.sources.decoder, plan.device)))
    try:
        check_precision(config.inference.precision, plan.device)
        if plan.device == "cpu":
            choose_backend(config.inference.backend, "cpu", config.inference.precision)
    except ValueError as exc:
        raise ConfigError(f"inference.{exc} (inference.device {config.inference.device} chose {plan.device}: "
                          f"{plan.why})") from None
    if plan.device == "cuda" and cluster.obtainable("GPU") == 0:
        log.warning("inference on cuda, but no node has a GPU and no autoscaler config offers one: the job waits "
                    "up to %.0f s (inference.wait_for_actors_s) for a GPU node to join", config.inference.wait_for_actors_s)
    weights = ship_weights(config)
    provenance = make_provenance(config, weights.file_sha256)
    log.info("run %s: %d input(s) -> %s; inference on %s (%s), %d-%s actor(s) of %s, peaks on %s", provenance.run_id,
             len(config.input), redact(config.output), plan.device, plan.why, plan.min_actors,
             plan.max_actors or "any", plan.describe_bundle(),
             "the inference device" if plan.peaks_on_device else "CPU workers")
    lock = OutputLock(config.output, config.s3, provenance.run_id, break_lock=break_lock)
    lock.check_takeable()  # a second run stops now, not after waiting for actors; nothing written yet
    waited = wait_for_actors(plan, config.inference.wait_for_actors_s)
    with lock:
        return _annotate(config, force, started, plan, weights, provenance, lock, waited, post_tasks(cluster))


def _annotate(config: JobConfig, force: bool, started: float, plan: ActorPlan, weights: ShippedWeights,
              provenance: Provenance, lock: OutputLock, waited: float, post_concurrency: int) -> dict:
    """The part of :func:`run_job` that reads and writes the output, run while holding its lock.

    waited: seconds the run waited for its first inference actors (for the summary).
    post_concurrency: post-processing tasks at once (:func:`post_tasks`).
    """
    live = manifest.resolve(manifest.load(config.output, config.s3, columns=manifest.INDEX_COLUMNS).records)
    done = manifest.done_index(live, provenance.generation)
    del live
    if force:
        log.info("--force: annotating every input again (%d done in generation %s)", len(done), provenance.generation)
    else:
        log.info("manifest: %d input(s) already done in generation %s", len(done), provenance.generation)
    ds = build_dataset(config, provenance, plan, weights, None if force or not len(done) else ray.put(done),
                       post_concurrency=post_concurrency)

    totals: dict[str, float] = defaultdict(float)
    seconds: dict[str, float] = defaultdict(float)
    skipped: list[dict] = []
    not_nvdec: Counter[str] = Counter()  # why NVDEC did not decode a video shard (sources.decoder gpu): shards
    timeline = StageTimeline(started)  # when each shard went through each stage, for report.html
    last_log = time.time()
    marks = {"start": time.time()}  # when each part of the run ended, for summary["wall_seconds"]
    for row in ds.iter_rows():
        marks.setdefault("first_result", time.time())
        record = from_row(row)
        if isinstance(record, Skipped):
            totals["skipped"] += 1
            if len(skipped) < _SKIPPED_LISTED:
                skipped.append({"uri": text_form(redact(record.uri)), "reason": text_form(record.reason)})
            continue
        if isinstance(record, AlreadyDone):
            totals["already_done"] += record.count
            continue
        if not isinstance(record, WrittenShard):
            raise TypeError(f"the pipeline returned a {type(record).__name__}, not a WrittenShard")
        stats = record.stats
        if record.frames.source_kind == "video":
            totals["video_frames_decoded"] += stats.frames - stats.failed
            totals["video_frames_yuv"] += record.frames.yuv_frames
            totals["video_frames_nvdec"] += record.frames.nvdec_frames
            if record.frames.not_nvdec is not None:
                not_nvdec[record.frames.not_nvdec] += 1
        totals["frames"] += stats.frames
        totals["failed"] += stats.failed
        totals["people"] += stats.people
        totals["inferred"] += stats.inferred
        totals["shards"] += 1
        for stage, value in dataclasses.asdict(stats.seconds).items():
            seconds[stage] += value
        for key, value in stats.inputs.items():
            totals[key] += value
        timeline.add(stats)
        totals["images_rendered"] += stats.media.get("images", 0)
        if time.time() - last_log > _PROGRESS_EVERY_S:
            last_log = time.time()
            log.info("progress: %d shards, %d frames (%d failed), %d people, %.1f frames/s", totals["shards"],
                     totals["frames"], totals["failed"], totals["people"], totals["frames"] / (time.time() - started))

    from .rendering import assemble_pending_videos

    marks["pipeline"] = time.time()
    lock.check()  # finalizing deletes files no record names: never while another run writes
    live, folded = manifest.finalize(config.output, config.s3, config.write.compression)
    marks["manifest"] = time.time()
    tracked = track_pending_videos(live, config)
    marks["tracks"] = time.time()
    videos_written = assemble_pending_videos(manifest.complete_videos(live), config) if config.write.render_videos else []
    marks["videos"] = time.time()
    wall = time.time() - started
    ends = [started, *marks.values()]
    wall_seconds = {name: round(end - before, 2) for name, before, end in zip(marks, ends, ends[1:])}
    summary = {
        "run_id": provenance.run_id,
        "output": redact(config.output),
        "inputs": {"images": int(totals["image_inputs"]), "videos": int(totals["video_inputs"]),
                   "tars": int(totals["tar_inputs"]), "skipped": int(totals["skipped"]),
                   "already_done": int(totals["already_done"])},
        "skipped_inputs": skipped,
        "forced": force,
        "shards": int(totals["shards"]),
        "frames": int(totals["frames"]),
        "frames_failed": int(totals["failed"]),
        "frames_inferred": int(totals["inferred"]),
        "people": int(totals["people"]),
        "manifest": {"generation": provenance.generation, **folded},
        "tracking": tracked,
        "wall_time_s": round(wall, 2),
        # start: Ray, weights, actors placed; first_result: until the first shard is written; pipeline: the
        # rest of the dataset; manifest: snapshot and tidying; tracks: track ids; videos: rendered videos joined
        "wall_seconds": wall_seconds,
        "frames_per_s": round(totals["frames"] / wall, 2) if wall > 0 else 0.0,
        "stage_seconds": {stage: round(value, 2) for stage, value in seconds.items()},
        "tasks_at_once": timeline.tasks_at_once(),  # per stage, shards in it at once: mean and most
        "inference": {"device": plan.device, "precision": config.inference.precision,
                      "peaks_on": "device" if plan.peaks_on_device else "cpu", "actor": plan.bundle,
                      "min_actors": plan.min_actors, "max_actors": plan.max_actors,
                      "waited_for_actors_s": round(waited, 1)},
        # sources.decoder as resolved; video frames decoded by NVDEC (decoder gpu), shipped as YUV planes (made
        # into network inputs by the actors; NVDEC's included) and converted to BGR on the CPU (decoder cpu, or a
        # video that is not 8-bit 4:2:0); why NVDEC did not decode video shards, with how many (at most 10 reasons)
        "decoding": {"decoder": config.sources.decoder, "video_frames_nvdec": int(totals["video_frames_nvdec"]),
                     "video_frames_yuv": int(totals["video_frames_yuv"]),
                     "video_frames_bgr": int(totals["video_frames_decoded"] - totals["video_frames_yuv"]),
                     "not_nvdec": {text_form(redact(why)): shards for why, shards in not_nvdec.most_common(10)}},
        "rendered_images": int(totals["images_rendered"]),
        "rendered_videos": videos_written,
        "provenance": provenance.__dict__ | {"net_size": list(provenance.net_size), "scales": list(provenance.scales)},
    }
    summary["report"] = write_report_or_warn(config, summary, timeline)  # null when it could not be written
    write_summary(config.output, config.s3, summary)
    return summary
