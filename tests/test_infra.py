"""infra/: every file parses; the manifests validate against published schemas, hold no inline
secret and agree with the embedded services' settings; every service asks who you are (MLflow's
basic-auth app, Ray's token, both from secrets); the README's commands exist in the CLI.

Offline and fast: no Docker engine or Kubernetes is needed. Schemas are vendored in tests/schemas/
(see its README.md for sources, sizes and licences): the Kubernetes kinds used here (strict schemas
from the kubernetes-validate wheel), KubeRay's RayCluster/RayJob (ray.io/v1, written from the
published API, embedding the same Kubernetes types) and the Compose Specification.
"""

from __future__ import annotations

import base64
import configparser
import fnmatch
import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from frontalab import services
from frontalab.sections import ServicesConfig
from frontalab.services.endpoints import MLFLOW_AUTH_DEFAULT_PERMISSION, MLFLOW_LOGIN_ENV
from frontalab.services.mlflow_server import MLFLOW_AUTH_APP

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE = INFRA / "compose.yaml"
README = INFRA / "README.md"


def _git_ignored(path: Path) -> bool:
    """Matched by infra/.gitignore: a user's real secrets.env, secret.yaml or weights, never part of infra/."""
    rel = path.relative_to(INFRA).as_posix()
    for pattern in (INFRA / ".gitignore").read_text().split():
        if pattern.startswith("#"):
            continue
        if pattern.endswith("/") and (rel.startswith(pattern) or f"/{pattern}" in f"/{rel}"):
            return True
        if fnmatch.fnmatch(rel, pattern) or ("/" not in pattern and fnmatch.fnmatch(path.name, pattern)):
            return True
    return False


def _infra_files(pattern: str, under: Path = INFRA) -> list[Path]:
    return sorted(p for p in under.rglob(pattern) if p.is_file() and not _git_ignored(p) and "__pycache__" not in p.parts)


K8S_FILES = _infra_files("*.yaml", INFRA / "k8s")
DOCKERFILES = sorted([*_infra_files("Dockerfile"), *_infra_files("*.Dockerfile")])
MAIN_DOCKERFILE = INFRA / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow.Dockerfile"

BUCKET = ServicesConfig().bucket
SECRET_NAME = re.compile(r"(^|_)(KEY|ACCESS_KEY_ID|PASSWORD|SECRET|TOKEN|CREDENTIALS?)(_|$)|PASSWORD|SECRET", re.I)
PLACEHOLDER = re.compile(r"^(CHANGE_ME|CHANGEME|REPLACE_ME|<[^>]+>)$")
URL_WITH_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^/\s:@]+:[^/\s@]+@", re.I)
WEIGHT_FILE = re.compile(r"\.(pt|pth|ckpt|onnx|safetensors|h5|pb)$|(^|/)(weights|checkpoints)(/|$)", re.I)
SHELL_SEPARATORS = {";", "&&", "||", "|", "&", "--", "then", "do", "(", "$("}


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in K8S_FILES for d in yaml_docs(p)]


def doc_id(path: Path, doc: dict) -> str:
    return f"{path.relative_to(INFRA)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def pyproject_pins() -> dict[str, str]:
    """name -> version of the `name==version` requirements in pyproject.toml (tomllib needs Python 3.11)."""
    text = (REPO / "pyproject.toml").read_text()
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r'^\s*"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^";\s]+)', text, flags=re.M)}


def project_version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), flags=re.M).group(1)


def walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# ================================================================ every file parses


def _parse_dotenv(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        assert m, f"{path}:{n}: not KEY=VALUE: {line!r}"
        out[m.group(1)] = m.group(2)
    return out


def _parse_markdown(path: Path) -> None:
    fences = [line for line in path.read_text().splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0, f"{path}: unbalanced ``` code fences"


def _parse_ignore(path: Path) -> None:
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "\\" not in line and " " not in line.strip(), f"{path}: odd pattern {line!r}"


def _parse_dockerfile(path: Path) -> None:
    parser = DockerfileParser(path=str(path), cache_content=True)
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions, f"{path}: no instructions"
    assert [i for i in instructions if i != "ARG"][0] == "FROM", f"{path}: the first instruction (after ARGs) must be FROM"
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
             "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT"}
    assert set(instructions) <= known, f"{path}: unknown instructions {set(instructions) - known}"


def parse_infra_file(path: Path) -> None:
    name = path.name
    if name.endswith((".yaml", ".yml")):
        docs = yaml_docs(path)
        assert docs, f"{path}: empty YAML"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every YAML document must be a mapping"
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name == "Dockerfile" or name.endswith(".Dockerfile"):
        _parse_dockerfile(path)
    elif name.endswith(".dockerignore") or name == ".gitignore":
        _parse_ignore(path)
    elif name.endswith(".env.example") or name.endswith(".env"):
        assert _parse_dotenv(path)
    elif name.endswith(".md"):
        _parse_markdown(path)
    elif name.endswith(".sh"):
        subprocess.run(["bash", "-n", str(path)], check=True)
    else:
        pytest.fail(f"{path}: no parser for this kind of file; add one to tests/test_infra.py")


INFRA_FILES = _infra_files("*")


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_infra_file_parses(path):
    parse_infra_file(path)


def test_infra_has_the_promised_files():
    for rel in ("docker/Dockerfile", "compose.yaml", "README.md", "secrets.env.example", "k8s/raycluster.yaml",
                "k8s/rayjob-thesis.yaml", "k8s/rayjob-thesis-workers.yaml", "k8s/mlflow.yaml", "k8s/secret.template.yaml", "k8s/config.yaml"):
        assert (INFRA / rel).is_file(), rel


# ================================================================ schemas


@functools.cache
def schema_bundle() -> tuple[dict, dict]:
    """(roots by 'apiVersion/Kind', $defs) of the vendored Kubernetes and KubeRay schemas."""
    k8s = json.loads(next(SCHEMAS.glob("kubernetes-v*-strict.json")).read_text())
    ray = json.loads((SCHEMAS / "kuberay-v1.json").read_text())
    defs = {**k8s["$defs"], **ray["$defs"]}
    return {**k8s["roots"], **ray["roots"]}, defs


@functools.cache
def k8s_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    roots, defs = schema_bundle()
    key = f"{api_version}/{kind}"
    if key not in roots:
        pytest.fail(f"no vendored schema for {key}: add the kind to tests/schemas/build_kubernetes_schema.py")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **roots[key], "$defs": defs}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(doc: dict) -> list[str]:
    v = k8s_validator(doc["apiVersion"], doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


@pytest.mark.parametrize("path,doc", k8s_docs(), ids=[doc_id(p, d) for p, d in k8s_docs()])
def test_kubernetes_manifest_matches_published_schema(path, doc):
    assert not schema_errors(doc), f"{doc_id(path, doc)} does not validate:\n" + "\n".join(schema_errors(doc))


def test_schemas_catch_mistakes():
    """The validators are not vacuous: a misspelt field or a wrong type is an error."""
    docs = {d["kind"]: d for _, d in k8s_docs()}
    bad_deploy = json.loads(json.dumps(docs["Deployment"]))
    bad_deploy["spec"]["replica"] = 2
    assert schema_errors(bad_deploy)
    bad_ray = json.loads(json.dumps(docs["RayCluster"]))
    bad_ray["spec"]["workerGroupSpecs"][0]["minReplica"] = 0
    assert schema_errors(bad_ray)
    bad_ray = json.loads(json.dumps(docs["RayCluster"]))
    bad_ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert schema_errors(bad_ray), "the pod template inside a RayCluster is checked against Kubernetes' schema"
    bad_job = json.loads(json.dumps(docs["RayJob"]))
    bad_job["spec"]["submissionMode"] = "K8sMode"
    assert schema_errors(bad_job)
    bad_compose = compose()
    bad_compose["services"]["mlflow"]["healthcheck"]["retry"] = 3
    assert list(compose_validator().iter_errors(bad_compose))


@functools.cache
def compose_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_compose_file_matches_the_compose_specification():
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_vendored_schemas_are_small_and_as_recorded():
    readme = (SCHEMAS / "README.md").read_text()
    for path in SCHEMAS.glob("*.json"):
        assert path.stat().st_size < 256 * 1024, f"{path.name} is {path.stat().st_size} bytes: keep vendored schemas small"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in readme, f"{path.name}: sha256 {digest} is not recorded in tests/schemas/README.md"


# ================================================================ Kubernetes: structure and consistency


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield kind, spec["template"]["spec"]
    elif kind == "RayCluster":
        yield from ray_cluster_pods(spec)
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            yield from ray_cluster_pods(spec["rayClusterSpec"])


def ray_cluster_pods(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker:{group['groupName']}", group["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for _, d in k8s_docs() if d["kind"] == "ConfigMap"}


def container_env(container: dict) -> dict[str, tuple[str, Any]]:
    """name -> ('value', v) | ('configmap', v) | ('secret', (secret, key)) | ('other', source)."""
    env: dict[str, tuple[str, Any]] = {}
    cms = configmaps()
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            assert name in cms, f"envFrom names ConfigMap {name!r}, which infra/k8s does not define"
            env.update({k: ("configmap", v) for k, v in cms[name].items()})
        else:
            env[f"<envFrom {sorted(src)}>"] = ("other", src)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = ("value", e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = ("secret", (ref["name"], ref["key"]))
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = ("configmap", cms[ref["name"]][ref["key"]])
        else:
            env[e["name"]] = ("other", e.get("valueFrom"))
    return env


def secret_template() -> dict:
    secrets = [d for p, d in k8s_docs() if d["kind"] == "Secret"]
    assert len(secrets) == 1, "exactly one Secret (the template) is expected"
    return secrets[0]


def test_all_namespaced_objects_live_in_one_namespace():
    namespaces = [d["metadata"]["name"] for _, d in k8s_docs() if d["kind"] == "Namespace"]
    assert namespaces == ["frontalab"]
    for path, doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "frontalab", doc_id(path, doc)


def test_every_container_is_sized_and_non_root():
    for path, doc in k8s_docs():
        for where, pod in pod_specs(doc):
            pod_non_root = pod.get("securityContext", {}).get("runAsNonRoot")
            for c in containers(pod):
                name = f"{doc_id(path, doc)} {where}/{c['name']}"
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}: resources.{part} needs cpu and memory"
                assert pod_non_root or c.get("securityContext", {}).get("runAsNonRoot"), f"{name}: runAsNonRoot"
                assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name
                image = c["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: pin {image}"


def test_raycluster_head_and_gpu_workers():
    (cluster,) = [d for _, d in k8s_docs() if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == pyproject_pins()["ray"], "rayVersion must match the pinned ray"
    assert spec.get("enableInTreeAutoscaling") is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {}), "the head schedules no trials"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, "a GPU worker group is expected"
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"] and g["maxReplicas"] >= 1
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert str(res["requests"]["nvidia.com/gpu"]) == str(res["limits"]["nvidia.com/gpu"]), \
            "extended resources (GPUs) need requests == limits"
    for where, pod in ray_cluster_pods(spec):
        mounts = {m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{where}: Ray's object store needs a larger /dev/shm"


def test_rayjob_runs_the_thesis_sweep_on_that_cluster():
    (cluster,) = [d for _, d in k8s_docs() if d["kind"] == "RayCluster"]
    (job,) = [d for _, d in k8s_docs() if d["kind"] == "RayJob" and d["metadata"]["name"] == "sweep-thesis"]
    spec = job["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert not spec.get("shutdownAfterJobFinishes"), "KubeRay rejects shutdownAfterJobFinishes with clusterSelector"
    entrypoint = spec["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["frontalab", "sweep", "sweeps/thesis.yaml"] and "--address auto" in entrypoint, entrypoint
    # KubeRay pastes the entrypoint into a shell line of the submitter: no operators or expansions.
    assert not re.search(r"[;&|$`<>(){}\\]", entrypoint), f"shell metacharacters in the entrypoint: {entrypoint!r}"
    assert (REPO / argv[2]).is_file(), f"{argv[2]} does not exist (the image's WORKDIR is the repo root)"
    # Its services overrides are the ConfigMap's endpoints, and valid config keys.
    client = configmaps()["frontalab-client"]
    overrides = dict(a.split("=", 1) for a in argv if a.startswith("services."))
    assert overrides == {"services.mlflow_uri": client["MLFLOW_TRACKING_URI"],
                         "services.s3_endpoint": client["MLFLOW_S3_ENDPOINT_URL"]}
    from frontalab.config import load_config

    load_config(None, [f"{k}={v}" for k, v in overrides.items()])

    if "sweep" in _cli_commands():
        args = parse_cli(argv)
        assert args.address == "auto" and args.sweep == "sweeps/thesis.yaml"
        assert set(overrides_of(args)) >= {a for a in argv if a.startswith("services.")}, "overrides were not taken"


def test_the_multi_gpu_rayjob_runs_one_thesis_trial_on_four_gpu_pods():
    """Its trial is one Ray Train job of 4 workers, a GPU each, which the gpu group's pods (one GPU, 8 CPUs each)
    can hold; it submits to the same cluster with the same endpoints as the sweep's job."""
    from frontalab.config import load_sweep

    (cluster,) = [d for _, d in k8s_docs() if d["kind"] == "RayCluster"]
    jobs = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "RayJob"}
    job, sweep_job = jobs["train-thesis-4gpu"], jobs["sweep-thesis"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["frontalab", "sweep"] and "--address" in argv
    assert [a for a in argv if a.startswith("services.")] == \
        [a for a in shlex.split(sweep_job["spec"]["entrypoint"]) if a.startswith("services.")]
    assert job["spec"]["clusterSelector"] == sweep_job["spec"]["clusterSelector"]
    sweep, trial = load_sweep(REPO / argv[2])
    assert sweep.num_samples == 1 and not sweep.search
    r = trial.resources
    assert r.workers == 4 and r.gpu == 1 and trial.train.batch_size % r.workers == 0
    (gpu_group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1 and float(str(limits["cpu"])) >= r.cpu
    assert gpu_group["maxReplicas"] >= r.workers


def test_references_resolve():
    """secretKeyRef -> keys of the Secret template; $(VAR) in args -> the container's env; Services -> pods."""
    secret = secret_template()
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for path, doc in k8s_docs():
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                env = container_env(c)
                for name, (kind, ref) in env.items():
                    if kind == "secret":
                        assert ref[0] == secret["metadata"]["name"] and ref[1] in secret_keys, f"{name}: {ref}"
                for arg in [*c.get("command", []), *c.get("args", [])]:
                    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                        assert var in env, f"{doc_id(path, doc)} {c['name']}: $({var}) is not in its environment"
    pods = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")}
    for path, svc in [(p, d) for p, d in k8s_docs() if d["kind"] == "Service"]:
        target = pods[svc["metadata"]["name"]]
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items(), doc_id(path, svc)
        port_names = {p.get("name") for c in target["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{doc_id(path, svc)}: targetPort {port['targetPort']}"


# ================================================================ no inline secrets


def inline_secrets_k8s(doc: dict) -> list[str]:
    """Places where a Kubernetes object carries a secret value inline (empty when clean)."""
    found = []
    if doc["kind"] == "Secret":
        for key, value in doc.get("stringData", {}).items():
            if not PLACEHOLDER.match(str(value)):
                found.append(f"Secret {doc['metadata']['name']}: stringData.{key} is not a placeholder")
        for key, value in doc.get("data", {}).items():
            if not PLACEHOLDER.match(base64.b64decode(value).decode(errors="replace")):
                found.append(f"Secret {doc['metadata']['name']}: data.{key} is not a placeholder")
    if doc["kind"] == "ConfigMap":
        for key in doc.get("data", {}):
            if SECRET_NAME.search(key):
                found.append(f"ConfigMap {doc['metadata']['name']}: {key} belongs in the Secret")
    for _, pod in pod_specs(doc):
        for c in containers(pod):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {}):
                    found.append(f"{c['name']}: env {e['name']} must come from a secretKeyRef")
    if doc["kind"] in ("RayCluster", "RayJob"):
        opts = (doc["spec"].get("rayClusterSpec", doc["spec"])).get("autoscalerOptions", {})
        for e in opts.get("env", []):
            if SECRET_NAME.search(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {}):
                found.append(f"autoscaler: env {e['name']} must come from a secretKeyRef")
    for where, value in walk_strings(doc):
        if URL_WITH_PASSWORD.search(value):
            found.append(f"{where}: a URL with a password")
    return found


def inline_secrets_compose(doc: dict) -> list[str]:
    found = []
    for name, svc in doc.get("services", {}).items():
        for key in compose_environment(svc):
            if SECRET_NAME.search(key):
                found.append(f"services.{name}.environment.{key}: secrets come from env_file only")
    for where, value in walk_strings(doc):
        if URL_WITH_PASSWORD.search(value):
            found.append(f"{where}: a URL with a password")
        for var in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", value):
            if SECRET_NAME.search(var):
                found.append(f"{where}: ${{{var}}} would be interpolated into the config; use env_file")
    return found


def test_no_inline_secrets_in_kubernetes_manifests():
    found = [f"{doc_id(p, d)}: {f}" for p, d in k8s_docs() for f in inline_secrets_k8s(d)]
    assert not found, "\n".join(found)
    (path,) = [p for p, d in k8s_docs() if d["kind"] == "Secret"]
    assert path.name.endswith(".template.yaml"), "the only Secret in git is a template"


def test_no_inline_secrets_in_compose():
    assert not inline_secrets_compose(compose()), "\n".join(inline_secrets_compose(compose()))
    example = _parse_dotenv(INFRA / "secrets.env.example")
    for key, value in example.items():
        assert PLACEHOLDER.match(value), f"secrets.env.example: {key} must be a placeholder"
    ignored = (INFRA / ".gitignore").read_text().split()
    for svc in compose()["services"].values():
        for env_file in _env_files(svc):
            assert env_file in ignored, f"{env_file} must be git-ignored (infra/.gitignore)"
            assert (INFRA / f"{env_file}.example").is_file(), f"{env_file}.example documents its keys"


def test_secret_checks_catch_inline_values():
    doc = secret_template()
    leaked = json.loads(json.dumps(doc))
    leaked["stringData"]["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert inline_secrets_k8s(leaked)
    (mlflow,) = [d for _, d in k8s_docs() if d["kind"] == "Deployment"]
    leaked = json.loads(json.dumps(mlflow))
    leaked["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "PGPASSWORD", "value": "hunter2hunter2"})
    assert inline_secrets_k8s(leaked)
    leaked = json.loads(json.dumps(mlflow))
    leaked["spec"]["template"]["spec"]["containers"][0]["args"][1] = "postgresql://mlflow:hunter2@db/mlflow"
    assert inline_secrets_k8s(leaked)
    doc = compose()
    doc["services"]["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] = "hunter2hunter2"
    assert inline_secrets_compose(doc)
    doc = compose()
    doc["services"]["mlflow"]["environment"]["PGPASSWORD"] = "${POSTGRES_PASSWORD}"
    assert inline_secrets_compose(doc)


def compose_environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [""])[:2] for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _env_files(svc: dict) -> list[str]:
    files = svc.get("env_file", [])
    files = [files] if isinstance(files, str) else files
    return [f if isinstance(f, str) else f["path"] for f in files]


# ================================================================ compose: structure


def test_compose_services_health_and_order():
    doc = compose()
    svcs = doc["services"]
    one_shot = {n for n, s in svcs.items() if s.get("restart") == "no"}
    assert one_shot == {"bucket-init"}
    for name, svc in svcs.items():
        if name not in one_shot:
            assert "healthcheck" in svc, f"{name}: no healthcheck"
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: pin {image}"
        for dep, cond in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert cond == {"condition": want}, f"{name} -> {dep}: condition {want}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: publish {port} on 127.0.0.1 only"
    order = {"postgres": [], "minio": [], "bucket-init": ["minio"], "mlflow": ["postgres", "bucket-init"],
             "ray-head": ["mlflow"], "ray-gpu-worker": ["ray-head"]}
    assert {n: sorted(s.get("depends_on", {})) for n, s in svcs.items()} == {k: sorted(v) for k, v in order.items()}
    # PostgreSQL keeps its data in a named volume.
    volumes = [v.split(":") for v in svcs["postgres"]["volumes"]]
    assert ["pgdata", "/var/lib/postgresql/data"] in volumes and "pgdata" in doc["volumes"]
    # GPU workers reserve NVIDIA devices.
    devices = svcs["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in svcs["ray-head"], "the head schedules no trials"
    # The bucket-init job creates the configured bucket; its scripts are valid shell.
    assert svcs["bucket-init"]["environment"]["BUCKET"] == BUCKET
    script = svcs["bucket-init"]["command"][0].replace("$$", "$")
    subprocess.run(["sh", "-n", "-c", script], check=True)
    (job,) = [d for _, d in k8s_docs() if d["kind"] == "Job"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in c["env"]}["BUCKET"] == BUCKET
    subprocess.run(["sh", "-n", "-c", c["args"][0]], check=True)


# ================================================================ one source of truth with services.py


def embedded_mlflow_server(tmp_path, monkeypatch) -> tuple[list[str], dict[str, str]]:
    """The argv flags and the environment the embedded services give `mlflow server` with its basic-auth app
    (captured, not started)."""
    captured = {}

    def fake_spawn(paths, name, argv, env, cwd, extra):
        captured.update(argv=argv, env=env)
        return {}

    monkeypatch.setattr(services, "_spawn", fake_spawn)
    cfg = ServicesConfig(state_dir=str(tmp_path), s3_endpoint="http://minio:9000", mlflow_auth=True)
    services._start_mlflow(cfg, services._paths(cfg), services.Credentials("AKEXAMPLE", "sEXAMPLE"))
    argv = captured["argv"]
    flags = argv[argv.index("server") + 1:]
    explicit = {k: v for k, v in captured["env"].items() if os.environ.get(k) != v}
    return flags, {**explicit, **services.MLFLOW_SERVER_ENV}


def flag_values(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def manifest_mlflow_servers() -> list[tuple[str, list[str], dict[str, tuple[str, Any]]]]:
    """(where, server flags, env) of every MLflow server in compose and Kubernetes."""
    out = []
    svc = compose()["services"]["mlflow"]
    cmd = svc["command"]
    env = {k: ("value", v) for k, v in compose_environment(svc).items()}
    env_file_keys = {k for f in _env_files(svc) for k in _parse_dotenv(INFRA / f"{f}.example")}
    env.update({k: ("env_file", None) for k in env_file_keys})
    out.append(("compose", cmd[cmd.index("server") + 1:], env))
    for path, doc in k8s_docs():
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                full = [*c.get("command", []), *c.get("args", [])]
                if full[:2] == ["mlflow", "server"]:
                    cenv = container_env(c)
                    args = [re.sub(r"\$\((\w+)\)", lambda m: cenv[m.group(1)][1], a) for a in full[2:]]
                    out.append((doc_id(path, doc), args, cenv))
    return out


def test_mlflow_server_flags_agree_with_the_embedded_server(tmp_path, monkeypatch):
    flags, server_env = embedded_mlflow_server(tmp_path, monkeypatch)
    embedded = flag_values(flags)
    assert embedded["--artifacts-destination"] == services.bucket_uri(BUCKET, "mlflow")
    servers = manifest_mlflow_servers()
    assert {w.split(":")[0] for w, _, _ in servers} == {"compose", "k8s/mlflow.yaml"}
    for where, args, env in servers:
        got = flag_values(args)
        assert set(embedded) <= set(got), f"{where}: missing {set(embedded) - set(got)}"
        assert set(got) - set(embedded) <= {"--allowed-hosts"}, f"{where}: flags the embedded server lacks"
        assert got["--app-name"] == embedded["--app-name"] == MLFLOW_AUTH_APP, f"{where}: MLflow's basic-auth app"
        assert got["--artifacts-destination"] == embedded["--artifacts-destination"], where
        assert urlsplit(got["--backend-store-uri"]).scheme in ("postgresql", "postgresql+psycopg2"), where
        assert urlsplit(got["--backend-store-uri"]).password is None, f"{where}: the password comes from PGPASSWORD"
        assert got["--host"] == "0.0.0.0", f"{where}: remote clients must reach it"
        # The server's environment: the embedded server's settings and S3 variables, keys from secrets.
        for key, value in server_env.items():
            assert key in env, f"{where}: {key} is not set"
            if key in services.MLFLOW_SERVER_ENV:
                assert env[key][1] == value, f"{where}: {key}={env[key][1]!r}, embedded {value!r}"
            if key in services.S3_CREDENTIAL_ENV:
                assert env[key][0] in ("secret", "env_file"), f"{where}: {key} must come from a secret"
        assert "PGPASSWORD" in env and env["PGPASSWORD"][0] in ("secret", "env_file"), where
        assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"][0] in ("secret", "env_file"), where


def client_env_names(monkeypatch) -> set[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sEXAMPLE")
    cfg = ServicesConfig(s3_endpoint="http://minio:9000", mlflow_uri="http://mlflow:5000")
    names = set(services.client_env(cfg))
    names_spec = services.s3_env_names()
    assert {*names_spec["endpoint"], *names_spec["region"], *names_spec["credentials"]} <= names
    return names


def check_client_env(where: str, env: dict[str, tuple[str, Any]], names: set[str], server_args: list[str]) -> None:
    for name in names:
        assert name in env, f"{where}: {name} is not set (clients of the embedded services get it)"
    kind = {k: v[0] for k, v in env.items()}
    for name in services.S3_CREDENTIAL_ENV:
        assert kind[name] in ("secret", "env_file"), f"{where}: {name} must come from a secret"
    endpoints = {env[n][1] for n in services.S3_ENDPOINT_ENV}
    assert len(endpoints) == 1, f"{where}: the S3 endpoint variables disagree: {endpoints}"
    assert len({env[n][1] for n in services.S3_REGION_ENV}) == 1, where
    # The tracking URI reaches this stack's MLflow server through a Host header the server allows
    # (the same matching as mlflow.server.security_utils.is_allowed_host_header).
    uri = urlsplit(env["MLFLOW_TRACKING_URI"][1])
    got = flag_values(server_args)
    assert str(uri.port) == got["--port"], f"{where}: tracking URI port != the server's --port"
    allowed = got["--allowed-hosts"].split(",")
    assert any(fnmatch.fnmatch(uri.netloc, a) if "*" in a else uri.netloc == a for a in allowed), \
        f"{where}: the MLflow server would refuse Host {uri.netloc!r} (--allowed-hosts)"


def test_client_environment_agrees_with_the_embedded_services(monkeypatch):
    names = client_env_names(monkeypatch)
    servers = {where.split(":")[0]: args for where, args, _ in manifest_mlflow_servers()}
    svcs = compose()["services"]
    for name in ("ray-head", "ray-gpu-worker"):
        svc = svcs[name]
        env = {k: ("value", v) for k, v in compose_environment(svc).items()}
        env.update({k: ("env_file", None) for f in _env_files(svc) for k in _parse_dotenv(INFRA / f"{f}.example")})
        check_client_env(f"compose:{name}", env, names, servers["compose"])
        assert env["MLFLOW_S3_ENDPOINT_URL"][1] == "http://minio:9000"
        assert "9000" in str(svcs["minio"]["ports"]) and env["MLFLOW_TRACKING_URI"][1].startswith("http://mlflow:")
    ray_pods = [(p, d, w, pod) for p, d in k8s_docs() if d["kind"] == "RayCluster" for w, pod in pod_specs(d)]
    assert {w for _, _, w, _ in ray_pods} >= {"head", "worker:gpu"}
    for path, doc, where, pod in ray_pods:
        env = container_env(pod["containers"][0])
        check_client_env(f"{doc_id(path, doc)}:{where}", env, names, servers["k8s/mlflow.yaml"])


# ================================================================ authentication: MLflow's basic-auth app, Ray's token


def mounted_text(where: str, path: str) -> str | None:
    """The content a manifest's MLflow server finds at `path`: a compose config or a mounted ConfigMap key."""
    if where == "compose":
        doc = compose()
        for c in doc["services"]["mlflow"].get("configs", []):
            if isinstance(c, dict) and c.get("target") == path:
                return doc.get("configs", {}).get(c["source"], {}).get("content")
        return None
    for p, doc in k8s_docs():
        if doc_id(p, doc) != where:
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers(pod):
            for m in c.get("volumeMounts", []):
                cm, folder = volumes.get(m["name"], {}).get("configMap"), m["mountPath"].rstrip("/") + "/"
                if cm and path.startswith(folder):
                    return configmaps().get(cm["name"], {}).get(path[len(folder):])
    return None


def from_secret(env: dict[str, tuple[str, Any]], name: str) -> bool:
    return env.get(name, ("unset",))[0] in ("secret", "env_file")


def auth_problems() -> list[str]:
    """Where a manifest lets someone in without a login (empty when every service asks who you are)."""
    found = []
    secret = secret_template()
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    # MLflow: the basic-auth app; its admin and Flask key from secrets; its config file from the manifests.
    for where, args, env in manifest_mlflow_servers():
        got = flag_values(args)
        if got.get("--app-name") != MLFLOW_AUTH_APP:
            found.append(f"{where}: the server does not run --app-name {MLFLOW_AUTH_APP}")
        for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
            if not from_secret(env, name):
                found.append(f"{where}: {name} must come from a secret")
        path = env.get("MLFLOW_AUTH_CONFIG_PATH", ("unset", ""))[1]
        text = mounted_text(where, path) if path else None
        if text is None:
            found.append(f"{where}: MLFLOW_AUTH_CONFIG_PATH={path!r} is not a file the manifests provide")
            continue
        ini = configparser.ConfigParser(interpolation=None)
        ini.read_string(text)
        auth = ini["mlflow"] if ini.has_section("mlflow") else {}
        if auth.get("default_permission") != MLFLOW_AUTH_DEFAULT_PERMISSION:
            found.append(f"{where}: default_permission {auth.get('default_permission')!r}, "
                         f"not {MLFLOW_AUTH_DEFAULT_PERMISSION} (services.MLFLOW_AUTH_DEFAULT_PERMISSION)")
        # Users live in the tracking database (backed up with it); its password comes from PGPASSWORD.
        if auth.get("database_uri") != got.get("--backend-store-uri"):
            found.append(f"{where}: the auth database_uri is not the tracking database")
        if "admin_password" in auth or URL_WITH_PASSWORD.search(text):
            found.append(f"{where}: a password in the auth config; it comes from the secret")
    # Ray: token authentication, the token from secrets; the cluster's processes log in to MLflow from secrets.
    svcs = compose()["services"]
    for name in ("ray-head", "ray-gpu-worker"):
        env = {k: ("value", v) for k, v in compose_environment(svcs[name]).items()}
        env.update({k: ("env_file", None) for f in _env_files(svcs[name]) for k in _parse_dotenv(INFRA / f"{f}.example")})
        if env.get("RAY_AUTH_MODE") != ("value", "token"):
            found.append(f"compose:{name}: RAY_AUTH_MODE is not token")
        for var in ("RAY_AUTH_TOKEN", *MLFLOW_LOGIN_ENV):
            if not from_secret(env, var):
                found.append(f"compose:{name}: {var} must come from secrets.env")
    for path, doc in k8s_docs():
        if doc["kind"] == "RayCluster":
            if doc["spec"].get("authOptions") != {"mode": "token", "secretName": secret["metadata"]["name"]}:
                found.append(f"{doc_id(path, doc)}: authOptions must be token mode with the Secret's token")
            if "auth_token" not in secret_keys:
                found.append("the Secret has no auth_token (KubeRay's key for the Ray token)")
            for where, pod in pod_specs(doc):
                env = container_env(pod["containers"][0])
                found += [f"{doc_id(path, doc)} {where}: {v} must come from the Secret"
                          for v in MLFLOW_LOGIN_ENV if not from_secret(env, v)]
        if doc["kind"] == "RayJob":
            for where, pod in pod_specs(doc):
                env = container_env(pod["containers"][0])
                if env.get("RAY_AUTH_MODE") != ("value", "token") or \
                        env.get("RAY_AUTH_TOKEN") != ("secret", (secret["metadata"]["name"], "auth_token")):
                    found.append(f"{doc_id(path, doc)} {where}: `ray job submit` needs RAY_AUTH_MODE=token and the token")
    return found


def test_every_service_asks_who_you_are():
    assert not auth_problems(), "\n".join(auth_problems())


def test_auth_checks_catch_a_service_without_login(monkeypatch):
    module = sys.modules[__name__]
    docs, doc = k8s_docs(), compose()

    def changed(edit) -> list[str]:
        copy_docs, copy_compose = json.loads(json.dumps([d for _, d in docs])), json.loads(json.dumps(doc))
        edit(dict(zip([d["kind"] + "/" + d["metadata"]["name"] for d in copy_docs], copy_docs)), copy_compose)
        monkeypatch.setattr(module, "k8s_docs", lambda: [(p, d) for (p, _), d in zip(docs, copy_docs)])
        monkeypatch.setattr(module, "compose", lambda: json.loads(json.dumps(copy_compose)))
        return auth_problems()

    def no_auth_app(k, c):
        c["services"]["mlflow"]["command"] = c["services"]["mlflow"]["command"][:-2]
    assert any("--app-name" in f for f in changed(no_auth_app))

    def inline_admin(k, c):
        env = k["Deployment/mlflow"]["spec"]["template"]["spec"]["containers"][0]["env"]
        env[:] = [e for e in env if e["name"] != "MLFLOW_AUTH_ADMIN_PASSWORD"]
        env.append({"name": "MLFLOW_AUTH_ADMIN_PASSWORD", "value": "hunter2hunter2"})
    assert any("MLFLOW_AUTH_ADMIN_PASSWORD" in f for f in changed(inline_admin))

    def open_to_all(k, c):
        k["ConfigMap/mlflow-auth"]["data"]["basic_auth.ini"] += "admin_password = hunter2hunter2\n"
        c["configs"]["mlflow-auth"]["content"] = c["configs"]["mlflow-auth"]["content"].replace("READ", "EDIT")
    found = changed(open_to_all)
    assert any("a password in the auth config" in f for f in found) and any("EDIT" in f for f in found)

    def ray_without_token(k, c):
        del k["RayCluster/frontalab"]["spec"]["authOptions"]
        del c["services"]["ray-head"]["environment"]["RAY_AUTH_MODE"]
    found = changed(ray_without_token)
    assert any("authOptions" in f for f in found) and any("ray-head: RAY_AUTH_MODE" in f for f in found)


def test_trial_image_has_rays_dashboard_and_job_api():
    """ray[default]: the dashboard's HTTP server, which compose's health check, `ray job submit` and RayJob need."""
    runs = " ".join(instructions(MAIN_DOCKERFILE, "RUN"))
    pin = re.escape(pyproject_pins()["ray"])
    assert re.search(rf"\bpip install\b[^&]*[\s\"']ray\[([a-z,]*,)?default(,[a-z,]*)?\]=={pin}\b", runs), \
        "the image must install ray[default] at the pinned version"


def test_bucket_layout_agrees_with_the_embedded_services():
    layout = set(services.BUCKET_LAYOUT.values())
    assert services.bucket_uri(BUCKET, "mlflow") == services.endpoints(ServicesConfig()).artifacts
    texts = {p: p.read_text() for p in [COMPOSE, *K8S_FILES, *DOCKERFILES]}
    readme = README.read_text()
    seen = set()
    for path, text in [*texts.items(), (README, readme)]:
        for bucket, prefix in re.findall(r"s3://([a-z0-9.-]+)/([A-Za-z0-9_-]+)", text):
            assert bucket == BUCKET, f"{path}: bucket {bucket!r}, services use {BUCKET!r}"
            allowed = layout | ({"photos"} if path == README else set())  # raw photos: the user's choice
            assert prefix in allowed, f"{path}: s3://{bucket}/{prefix} is outside services.BUCKET_LAYOUT"
            seen.add(prefix)
    assert layout <= seen, f"README/manifests never mention {layout - seen}"


def test_images_match_the_pinned_versions():
    pins = pyproject_pins()
    version = project_version()
    main = MAIN_DOCKERFILE.read_text()
    for pkg in ("torch", "torchvision"):
        assert f"{pkg}=={pins[pkg]}" in main, f"Dockerfile must install {pkg}=={pins[pkg]} (pyproject.toml)"
    assert f"mlflow[auth]=={pins['mlflow']}" in MLFLOW_DOCKERFILE.read_text(), "the server needs mlflow[auth]"
    images = [s["image"] for s in compose()["services"].values()]
    images += [c["image"] for _, d in k8s_docs() for _, pod in pod_specs(d) for c in containers(pod)]
    for image in images:
        name, tag = image.rsplit("/", 1)[-1].split(":")
        if name == "frontalab":
            assert tag == version, f"{image}: the project is {version}"
        if name == "frontalab-mlflow":
            assert tag == pins["mlflow"], f"{image}: mlflow is pinned to {pins['mlflow']}"


# ================================================================ Dockerfiles


def dockerfile(path: Path) -> DockerfileParser:
    return DockerfileParser(path=str(path), cache_content=True)


def instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in dockerfile(path).structure if i["instruction"] == name]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    df = dockerfile(path)
    # Pinned bases (hadolint DL3006/DL3007), also for COPY --from images.
    for image in [df.baseimage, *re.findall(r"--from=(\S+)", " ".join(instructions(path, "COPY")))]:
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{path.name}: pin {image}"
    # Non-root at run time (DL3002).
    users = instructions(path, "USER")
    assert users, f"{path.name}: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: runs as {user}"
    assert not user.isdigit() or int(user) >= 1000
    # JSON-form CMD/ENTRYPOINT (DL3025); absolute WORKDIR (DL3000); COPY, not ADD (DL3020).
    for name in ("CMD", "ENTRYPOINT"):
        for value in instructions(path, name):
            assert value.startswith("["), f"{path.name}: {name} in exec form"
    assert all(w.startswith("/") for w in instructions(path, "WORKDIR"))
    assert not instructions(path, "ADD"), f"{path.name}: use COPY"
    for run in instructions(path, "RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, f"{path.name}: {run}"
            assert "apt-get update" in run, f"{path.name}: update and install in one RUN (DL3009)"
        if re.search(r"\bpip install\b", run):
            pkgs = [t for t in shlex.split(run.split("pip install", 1)[1].split("&&")[0]) if not t.startswith("-")]
            pkgs = [p for p in pkgs if p != "." and not p.startswith("http")]
            assert all("==" in p for p in pkgs), f"{path.name}: pin every pip package ({pkgs})"
        if "|" in run.replace("||", ""):
            assert any("pipefail" in s for s in instructions(path, "SHELL")), f"{path.name}: SHELL with pipefail"
    # No secrets in the image's environment or build arguments.
    for name in ("ENV", "ARG"):
        for value in instructions(path, name):
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", value):
                assert not SECRET_NAME.search(key), f"{path.name}: {name} {key}"
    # No weights baked in: nothing copied or downloaded looks like a weights file.
    for value in instructions(path, "COPY"):
        for src in [t for t in shlex.split(value) if not t.startswith("--")][:-1]:
            assert not WEIGHT_FILE.search(src), f"{path.name}: COPY {src} bakes weights into the image"
    for run in instructions(path, "RUN"):
        assert not re.search(r"(wget|curl)\b.*\.(pt|pth|ckpt|onnx|safetensors)\b", run), f"{path.name}: {run}"


def test_trial_image_cuda_python_and_no_weights():
    df = dockerfile(MAIN_DOCKERFILE)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(\.\d+)?-[a-z-]*runtime[a-z-]*-ubuntu\d+\.\d+", df.baseimage)
    assert m, f"the trial image needs a CUDA runtime base, got {df.baseimage}"
    index = re.search(r"download\.pytorch\.org/whl/cu(\d+)", MAIN_DOCKERFILE.read_text())
    assert index and index.group(1) == f"{m.group(1)}{m.group(2)}", "torch's CUDA build must match the base's CUDA"
    assert int(m.group(1)) == 13
    runs = " ".join(instructions(MAIN_DOCKERFILE, "RUN"))
    assert re.search(r"python install 3\.11\b", runs) and "--python 3.11" in runs
    assert dockerfile(MLFLOW_DOCKERFILE).baseimage.startswith("python:3.11")
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert "**/*.pt" in ignore and "**/*.ckpt" in ignore, "the build context excludes weights"
    # The last USER comes after the last RUN: nothing later runs as root.
    kinds = [i["instruction"] for i in df.structure]
    assert max(i for i, k in enumerate(kinds) if k == "USER") > max(i for i, k in enumerate(kinds) if k == "RUN")


# ================================================================ the README walkthrough


def readme_invocations(complete_only: bool = False) -> list[list[str]]:
    """Every `frontalab ...` invocation in the README's code, as argv lists: in code blocks (complete
    commands) and, unless `complete_only`, in inline code spans (which may be fragments)."""
    text = README.read_text()
    snippets = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        snippets += re.sub(r"\\\n\s*", " ", block).splitlines()
    if not complete_only:
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        snippets += re.findall(r"`([^`\n]+)`", prose)
    found = []
    for line in snippets:
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:
            continue
        for i, tok in enumerate(tokens):
            if tok != "frontalab" or i + 1 >= len(tokens):
                continue
            prev = tokens[i - 1] if i else None
            at_command = (prev is None or prev in SHELL_SEPARATORS
                          or (i >= 2 and tokens[i - 2] == "exec" and not prev.startswith("-")))
            if at_command and re.fullmatch(r"[a-z][a-z0-9-]*", tokens[i + 1]):
                end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in SHELL_SEPARATORS - {"--"}),
                           len(tokens))
                found.append(tokens[i:end])
    return found


def parse_cli(argv: list[str]):
    """`frontalab`'s own argument parser on argv (argv[0] == "frontalab"); fails the test on a usage error."""
    from frontalab.cli import build_parser

    try:
        return build_parser().parse_args([a for a in argv[1:] if a != "..."])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is a usage error for the CLI")


def overrides_of(args) -> list[str]:
    return [*getattr(args, "items", []), *getattr(args, "overrides", [])]


@functools.cache
def _cli_commands() -> frozenset[str]:
    from frontalab.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return frozenset(sub.choices)


README_COMMANDS = sorted({argv[1] for argv in readme_invocations()})


def test_readme_walkthrough_names_the_steps():
    assert {"sweep", "promote", "prepare", "frontalize"} <= set(README_COMMANDS)
    text = README.read_text().lower()
    for topic in ("facenet weights", "fractional gpus", "--resume", "pg_dump", "s3 sync", "compare"):
        assert topic in text, f"README does not cover {topic!r}"


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_command_exists_in_the_cli(command):
    assert command in _cli_commands(), f"the README names `frontalab {command}`, which the CLI lacks"
    proc = subprocess.run([sys.executable, "-m", "frontalab", command, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    used = {t.split("=", 1)[0] for argv in readme_invocations() if argv[1] == command for t in argv[2:]
            if t.startswith("--")}
    missing = {flag for flag in used if not re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", proc.stdout)}
    assert not missing, f"`frontalab {command}` has no {sorted(missing)} (README uses them)"
    # Each complete invocation parses, and its key=value overrides reach the config (not a path argument).
    for argv in readme_invocations(complete_only=True):
        if argv[1] == command:
            args = parse_cli(argv)
            kv = [t for t in argv[2:] if "=" in t and not t.startswith("-")]
            assert set(kv) <= set(overrides_of(args)), f"`{shlex.join(argv)}`: {kv} are not taken as overrides"


def test_readme_shell_blocks_are_valid_bash():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    proc = subprocess.run(["bash", "-n"], input="\n".join(blocks), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_services_overrides_name_the_stacks_endpoints():
    stack = {compose()["services"]["ray-head"]["environment"]["MLFLOW_TRACKING_URI"],
             configmaps()["frontalab-client"]["MLFLOW_TRACKING_URI"], "http://localhost:5000"}
    s3 = {compose()["services"]["ray-head"]["environment"]["MLFLOW_S3_ENDPOINT_URL"],
          configmaps()["frontalab-client"]["MLFLOW_S3_ENDPOINT_URL"], "http://localhost:9000"}
    for argv in readme_invocations():
        for tok in argv:
            if tok.startswith("services.mlflow_uri="):
                assert tok.split("=", 1)[1] in stack, tok
            if tok.startswith("services.s3_endpoint="):
                assert tok.split("=", 1)[1] in s3, tok
