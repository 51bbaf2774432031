"""Extract the OpenAPI v3 schemas of KubeRay's custom resources for tests/test_kuberay_manifests.py.

The manifests in infra/kuberay/ are written for one KubeRay release (KUBERAY_VERSION in
infra/kuberay/schemas/SOURCE.json). Its CustomResourceDefinitions (ray.io_rayclusters.yaml,
ray.io_rayjobs.yaml, ray.io_raycronjobs.yaml; Apache-2.0, (c) the KubeRay authors) hold each
kind's schema; this script copies each version's ``openAPIV3Schema`` unchanged into
infra/kuberay/schemas/<kind>.<version>.json.gz and records where they came from, so that the tests
validate the manifests offline against exactly what the pinned operator's API server accepts.

From a clone of https://github.com/ray-project/kuberay at the release tag::

    git -C kuberay checkout v1.7.0
    python scripts/kuberay_schemas.py --crds kuberay/ray-operator/config/crd/bases --version v1.7.0 \
        --commit "$(git -C kuberay rev-parse 'v1.7.0^{commit}')"

or from the Helm chart of the release (``helm pull kuberay/kuberay-operator --version 1.7.0 --untar``:
``--crds kuberay-operator/crds``). Raising the pinned release: run it for the new tag, then run the
tests (tests/test_kuberay_manifests.py) and fix what the new schemas refuse.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import yaml

KINDS = ("rayclusters", "rayjobs", "raycronjobs")
OUT = Path(__file__).resolve().parent.parent / "infra" / "kuberay" / "schemas"


def extract(crds: Path, version: str, out: Path = OUT, commit: str | None = None) -> dict:
    """Write each kind's schemas under ``out``; returns what SOURCE.json records."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for plural in KINDS:
        path = crds / f"ray.io_{plural}.yaml"
        text = path.read_bytes()
        crd = yaml.safe_load(text)
        kind = crd["spec"]["names"]["kind"]
        for served in crd["spec"]["versions"]:
            name = f"{kind}.{served['name']}.json.gz"
            body = json.dumps(served["schema"]["openAPIV3Schema"], sort_keys=True, separators=(",", ":"))
            # mtime 0: the same CRD gives the same bytes, so a refresh without changes changes nothing
            with gzip.GzipFile(out / name, "wb", compresslevel=9, mtime=0) as stream:
                stream.write(body.encode())
            files[name] = {"crd": path.name, "crd_sha256": hashlib.sha256(text).hexdigest(),
                           "group": crd["spec"]["group"], "kind": kind, "version": served["name"]}
    source = {"kuberay_version": version, "source": "https://github.com/ray-project/kuberay "
              f"(tag {version}, ray-operator/config/crd/bases)", "licence": "Apache-2.0, (c) the KubeRay authors",
              "commit": commit, "made_by": "python scripts/kuberay_schemas.py", "schemas": files}
    (out / "SOURCE.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crds", type=Path, required=True, help="folder holding ray.io_<kind>.yaml of the release")
    parser.add_argument("--version", required=True, help="the release's tag, e.g. v1.7.0")
    parser.add_argument("--commit", help="the tag's commit (git rev-parse TAG^{commit}), recorded in SOURCE.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    source = extract(args.crds, args.version, args.out, args.commit)
    print(f"wrote {len(source['schemas'])} schemas of KubeRay {args.version} to {args.out}")


if __name__ == "__main__":
    main()
