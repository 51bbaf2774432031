"""The inference actor pool: its shape from the config and the cluster, and the wait for its first actors.

A GPU cluster usually starts cold: ``ray up infra/ray-cluster.yaml`` gives a
head node and GPU worker types with ``min_workers: 0``. So the job never
decides from the GPUs present when it starts:

- device "auto" is cuda when the cluster has a GPU now *or* its autoscaler can
  start nodes with GPUs (a node type of the autoscaler's cluster config offers
  "GPU"), else cpu. A cold GPU cluster therefore waits for its GPU nodes; it
  never quietly annotates on CPU.
- The pool's largest size (``inference.max_actors`` null) counts the GPUs the
  autoscaler may still add: the sum over node types of max workers x GPUs per
  node, capped by the cluster's max_workers / max resources. The driver reads
  the autoscaler's config from Ray's GCS where the autoscaler publishes it
  (``get_max_resources_from_cluster_config``: autoscaler v2, e.g. KubeRay), else
  from ``~/ray_bootstrap_config.yaml``, which ``ray up`` puts on the head node
  with every node type's resources filled in (where ``ray job submit`` runs the
  driver). Without either (a fixed cluster, an in-process Ray) it is the GPUs
  present. Ray Data grows the pool up to it as nodes join.
- Before the pipeline starts, the driver asks Ray for ``min_actors`` actors'
  resources with a placement group, which is resource demand the autoscaler
  acts on, and waits until Ray can place them (:func:`wait_for_actors`),
  logging every minute and failing after ``inference.wait_for_actors_s``
  with the resources that never appeared. No input is listed and no output
  written before (the driver has only resolved the weights and read the
  output's manifest).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from ..jobconfig import InferencePoolConfig

log = logging.getLogger(__name__)

_FIRST_LOOK_S = 2.0  # a cluster that has the resources places the actors at once: say nothing before this
_LOG_EVERY_S = 60.0
_UNBOUNDED = 1 << 30  # what Ray reports for a node type without a max_workers limit is larger


@dataclass(frozen=True)
class ClusterView:
    """What the driver knows of the cluster's resources.

    total: resources of the alive nodes now ({"CPU": 8.0, "GPU": 1.0, ...}).
    nodes: each alive node's total resources.
    autoscaler_max: the most of each resource the autoscaler could provide,
        None when the cluster has no autoscaler config (a fixed cluster, an
        in-process Ray).
    """

    total: dict[str, float]
    nodes: tuple[dict[str, float], ...]
    autoscaler_max: dict[str, float] | None

    @classmethod
    def current(cls) -> "ClusterView":
        nodes = tuple(dict(node["Resources"]) for node in ray.nodes() if node.get("Alive"))
        return cls(dict(ray.cluster_resources()), nodes, _autoscaler_max_resources())

    def obtainable(self, resource: str) -> float:
        """The most of ``resource`` the cluster has now or can get from its autoscaler."""
        return max(self.total.get(resource, 0.0), (self.autoscaler_max or {}).get(resource, 0.0))


LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")  # where `ray up` puts the autoscaler's config on the head


def _autoscaler_max_resources() -> dict[str, float] | None:
    maximum = None
    try:  # private API; Ray 2.60's v1 autoscaler does not publish it (None), v2 does
        from ray._private.state import state

        maximum = state.get_max_resources_from_cluster_config()
    except Exception as exc:  # noqa: BLE001 - an optional insight, never a reason to fail the job
        log.debug("cannot read the autoscaler's cluster config from the GCS: %s", exc)
    if maximum is not None:
        return {name: float(value) for name, value in maximum.items()}
    path = LAUNCHER_CONFIG.expanduser()
    if not path.is_file():
        return None
    try:
        import yaml

        return max_resources_from_launcher_config(yaml.safe_load(path.read_text()))
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot read the autoscaler's config %s: %s", path, exc)
        return None


def max_resources_from_launcher_config(config: dict) -> dict[str, float]:
    """The most of each resource a cluster-launcher config (``ray up`` YAML) lets the autoscaler provide.

    Per resource: the head node's, plus the sum over worker node types of
    max_workers x the type's resources, capped at the cluster's max_workers
    nodes of the richest type. Node types without declared resources count
    for nothing (``ray up`` fills them in for AWS, GCP and Azure instance types).
    """
    types = config.get("available_node_types") or {}
    head = types.get(config.get("head_node_type"), {}).get("resources") or {}
    total: dict[str, float] = {name: float(amount) for name, amount in head.items()}
    richest: dict[str, float] = {}
    for name, node_type in types.items():
        if name == config.get("head_node_type"):
            continue
        resources = node_type.get("resources") or {}
        for resource, amount in resources.items():
            # Ray's default for a node type's max_workers is the cluster's (whose own default is 2)
            count = int(node_type.get("max_workers", config.get("max_workers", 2)))
            total[resource] = total.get(resource, 0.0) + float(amount) * count
            richest[resource] = max(richest.get(resource, 0.0), float(amount))
    cluster_max = config.get("max_workers")
    if cluster_max is not None:
        for resource, amount in richest.items():
            total[resource] = min(total[resource], float(head.get(resource, 0)) + amount * int(cluster_max))
    return total


@dataclass(frozen=True)
class ActorPlan:
    """The shape of the inference actor pool.

    device: "cuda" or "cpu"; bundle: Ray resources of one actor; min_actors,
    max_actors: pool size (max_actors None: no limit, the autoscaler decides);
    torch_threads: intra-op threads of a CPU actor; peaks_on_device: find
    peaks in the actor; why: how the device and the size were chosen (logged).
    """

    device: str
    bundle: dict[str, float]
    min_actors: int
    max_actors: int | None
    torch_threads: int
    peaks_on_device: bool
    why: str

    def describe_bundle(self) -> str:
        return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in self.bundle.items()) + "}"


def plan_actors(pool: InferencePoolConfig, cluster: ClusterView) -> ActorPlan:
    """The actor pool for ``pool`` on ``cluster`` (see the module docstring for the rules)."""
    gpus_most = cluster.obtainable("GPU")
    device, why = pool.device, f"inference.device {pool.device}"
    if device == "auto":
        if cluster.total.get("GPU", 0) > 0:
            device, why = "cuda", "device auto: the cluster has GPUs"
        elif gpus_most > 0:
            device, why = "cuda", "device auto: the autoscaler can start GPU nodes"
        else:
            device, why = "cpu", "device auto: no GPU in the cluster and none the autoscaler can start"
    cpus = cluster.total.get("CPU", 1.0)
    bundle = {"CPU": pool.cpus_per_actor}
    if device == "cuda":
        bundle["GPU"] = pool.gpus_per_actor
        limits = {"GPU": gpus_most / pool.gpus_per_actor} if gpus_most > 0 else {}
    else:
        limits = {"CPU": max(1.0, cpus // 2)}
    bundle.update(pool.actor_resources)
    for name, amount in pool.actor_resources.items():
        if cluster.obtainable(name) > 0:  # a resource no node has yet bounds nothing we can know
            limits[name] = cluster.obtainable(name) / amount
    if pool.max_actors is not None:
        max_actors, size_why = pool.max_actors, "inference.max_actors"
    elif limits and min(limits.values()) < _UNBOUNDED:
        name = min(limits, key=limits.get)
        max_actors = max(pool.min_actors, int(limits[name]))
        size_why = f"the cluster's {name} (now or via the autoscaler)"
    else:
        max_actors, size_why = None, "no limit known: the autoscaler decides"
    min_actors = pool.min_actors if max_actors is None else min(pool.min_actors, max_actors)
    # A CPU actor's torch threads get an equal share of the cores (Ray would otherwise
    # leave a fractional-CPU actor one thread).
    threads = max(1, int(cpus // (max_actors or 1)))
    peaks_on_device = pool.peaks_on == "device" or (pool.peaks_on == "auto" and device == "cuda")
    return ActorPlan(device, bundle, min_actors, max_actors, threads, peaks_on_device, f"{why}; pool size from {size_why}")


class ActorsUnavailable(RuntimeError):
    """The cluster did not offer the inference actors' resources in time."""


def wait_for_actors(plan: ActorPlan, timeout_s: float, *, log_every_s: float = _LOG_EVERY_S) -> float:
    """Ask Ray for ``plan.min_actors`` actors' resources and wait until they can be placed.

    Returns the seconds waited. Raises :class:`ActorsUnavailable` after
    ``timeout_s``, naming what never appeared. The placement group is the
    request (the autoscaler sees it as pending demand) and is removed before
    returning, so the actors themselves can take its place.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    started = time.monotonic()
    group = placement_group([plan.bundle] * plan.min_actors, strategy="PACK", name="openpose-ray-inference-wait")
    try:
        wait = min(_FIRST_LOOK_S, timeout_s)
        while not group.wait(timeout_seconds=wait):
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise ActorsUnavailable(_unavailable_message(plan, timeout_s, ClusterView.current()))
            log.warning("waiting for %d inference actor(s) needing %s; the autoscaler has been asked "
                        "(%.0f s of at most %.0f s, inference.wait_for_actors_s)", plan.min_actors,
                        plan.describe_bundle(), waited, timeout_s)
            wait = min(log_every_s, timeout_s - waited)
    finally:
        remove_placement_group(group)
    waited = time.monotonic() - started
    if waited > _FIRST_LOOK_S:
        log.info("the cluster offers the inference actors' resources after %.0f s", waited)
    return waited


def _unavailable_message(plan: ActorPlan, timeout_s: float, cluster: ClusterView) -> str:
    fits_nowhere = [name for name, amount in plan.bundle.items()
                    if not any(node.get(name, 0.0) >= amount for node in cluster.nodes)]
    if fits_nowhere:
        missing = ", ".join(f"{name}: {plan.bundle[name]:g}" for name in fits_nowhere)
        reason = f"no node of the cluster has {missing}"
        if cluster.autoscaler_max is not None:
            never = [name for name in fits_nowhere if cluster.autoscaler_max.get(name, 0.0) <= 0]
            reason += (f", and no node type of the autoscaler offers {', '.join(never)}" if never
                       else "; the autoscaler did not start such a node (quota, capacity or spot prices?)")
    elif not any(all(node.get(name, 0.0) >= amount for name, amount in plan.bundle.items()) for node in cluster.nodes):
        reason = "no single node has all of them together"
    else:
        reason = "nodes with these resources exist, but other work holds them"
    nodes = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(node.items()) if not k.startswith("node:")
                                and not k.endswith("memory")) for node in cluster.nodes)
    return (f"no inference actor could be placed within {timeout_s:g} s (inference.wait_for_actors_s): "
            f"{plan.min_actors} actor(s) need {plan.describe_bundle()} each ({plan.device}); {reason}. "
            f"Nodes now: [{nodes}]. Check inference.device, gpus_per_actor, cpus_per_actor and actor_resources "
            "against the cluster's node types, or wait longer.")
