"""infra/kuberay/: every manifest valid against the schemas of what it is written for, checked offline.

KubeRay's kinds against the CRD schemas of the pinned release (infra/kuberay/schemas, extracted by
scripts/kuberay_schemas.py), with unknown fields refused as ``kubectl apply --validate=strict``
refuses them; Kubernetes' own kinds against their published schemas (the kubernetes-validate
package). Also what no schema knows: the three cluster specs are one, the names fit KubeRay's
limits, the Ray version is the project's, the entrypoint's config loads, no credentials.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
import tomllib
import zoneinfo
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERAY = REPO_ROOT / "infra" / "kuberay"
SCHEMAS = KUBERAY / "schemas"
KUBERNETES_VERSION = "1.33"  # core kinds are checked against this release's schemas
# KubeRay v1.7.0 (ray-operator/controllers/ray/utils/constant.go): a RayCluster's name <= 53 characters,
# a RayJob's 6 fewer (its cluster's suffix), a RayCronJob's 11 fewer again (its RayJobs' suffix)
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36}


def strict(schema: dict) -> dict:
    """A CRD's structural OpenAPI v3 schema as JSON Schema that refuses unknown fields (the API server
    prunes them, or with strict field validation refuses them; a misspelt field is never what you meant)."""
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _schema(kind: str, version: str) -> dict:
    with gzip.open(SCHEMAS / f"{kind}.{version}.json.gz", "rt") as stream:
        return strict(json.load(stream))


def validate(document: dict) -> None:
    """Raise jsonschema.ValidationError (KubeRay kinds) or kubernetes_validate's error (the others)."""
    group, _, version = document["apiVersion"].rpartition("/")
    if group == "ray.io":
        jsonschema.validate(document, _schema(document["kind"], version))
    else:
        import kubernetes_validate

        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def manifests() -> dict[str, list[dict]]:
    return {path.name: list(yaml.safe_load_all(path.read_text())) for path in sorted(KUBERAY.glob("*.yaml"))}


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERAY.glob("*.yaml")))
def test_every_manifest_is_valid_for_the_pinned_releases(name):
    documents = manifests()[name]
    assert documents
    for document in documents:
        validate(document)
        limit = NAME_LIMITS.get(document["kind"])
        assert limit is None or len(document["metadata"]["name"]) <= limit


def test_a_misspelt_field_is_refused_wherever_it_is():
    import kubernetes_validate

    job = manifests()["rayjob.yaml"][0]
    for path, wrong in [(("spec",), "shutdownAfterJobFinish"),  # a RayJob field
                        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0), "resource"),
                        (("spec", "rayClusterSpec", "autoscalerOptions"), "idleTimeoutSecond")]:
        broken = copy.deepcopy(job)
        place = broken
        for step in path:
            place = place[step]
        place[wrong] = 1
        with pytest.raises(jsonschema.ValidationError, match=wrong):
            validate(broken)
    account = manifests()["serviceaccount.yaml"][0]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**account, "automountServiceAcountToken": False})  # sic
    cron = copy.deepcopy(manifests()["raycronjob.yaml"][0])
    cron["spec"]["timeZone"] = ""  # minLength 1
    with pytest.raises(jsonschema.ValidationError):
        validate(cron)


def test_the_schemas_are_the_pinned_releases_and_the_manifests_say_so():
    source = json.loads((SCHEMAS / "SOURCE.json").read_text())
    assert source["kuberay_version"] == "v1.7.0" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert {"RayCluster.v1.json.gz", "RayJob.v1.json.gz", "RayCronJob.v1.json.gz"} <= set(source["schemas"])
    for name in ("raycluster.yaml", "rayjob.yaml", "raycronjob.yaml"):
        assert "v1.7.0" in (KUBERAY / name).read_text().split("apiVersion")[0], name  # the header names the pin


def test_one_cluster_spec_the_projects_ray_and_image():
    found = manifests()
    cluster = found["raycluster.yaml"][0]["spec"]
    assert found["rayjob.yaml"][0]["spec"]["rayClusterSpec"] == cluster
    assert found["raycronjob.yaml"][0]["spec"]["jobTemplate"]["rayClusterSpec"] == cluster
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray[")).split("==")[1]
    assert cluster["rayVersion"] == ray_pin
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images == {f"openpose-ray:{project['version']}"}  # what docker/Dockerfile's instructions tag
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert cluster["autoscalerOptions"]["version"] == "v2" and cluster["enableInTreeAutoscaling"]


def test_the_entrypoints_run_the_shipped_job_with_a_config_that_loads():
    from openpose_ray.config_loader import load_config

    found = manifests()
    for spec in (found["rayjob.yaml"][0]["spec"], found["raycronjob.yaml"][0]["spec"]["jobTemplate"]):
        words = shlex.split(spec["entrypoint"])
        assert words[:2] == ["python", "/app/jobs/annotate.py"] and (REPO_ROOT / "jobs" / "annotate.py").is_file()
        config = words[words.index("--config") + 1]
        assert config.startswith("/app/")
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        loaded = load_config(REPO_ROOT / config.removeprefix("/app/"), overrides)
        assert loaded.output.startswith("s3://") and spec["backoffLimit"] == 0 and spec["shutdownAfterJobFinishes"]
    cron = found["raycronjob.yaml"][0]["spec"]
    assert len(cron["schedule"].split()) == 5 and zoneinfo.ZoneInfo(cron["timeZone"])


def test_no_credentials_in_the_manifests():
    for path in KUBERAY.glob("*.yaml"):
        text = path.read_text()
        # an access key id, or a secret key's value (the variables' names appear in comments, values never)
        assert not re.search(r"AKIA[0-9A-Z]{16}|SECRET_ACCESS_KEY[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{16}", text, re.I), path
    cluster = manifests()["raycluster.yaml"][0]["spec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert "env" not in container  # credentials only through the optional Secret (or the pod's role)
            assert container["envFrom"] == [{"secretRef": {"name": "openpose-ray-s3", "optional": True}}]


def test_the_operator_values_turn_on_raycronjob_and_keep_the_charts_other_gates():
    values = yaml.safe_load((KUBERAY / "helm" / "operator-values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates["RayCronJob"] is True
    # kuberay-operator 1.7.0's values.yaml: the gates on by default stay on
    assert all(gates[name] for name in ("RayClusterStatusConditions", "RayJobDeletionPolicy"))
