"""The command line's contract: exit statuses (one per documented failure, one line, no traceback unless
``--debug``) and a sweep's status, run as a user runs them (real processes, real services)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from conftest import free_port, run_cli, service_overrides
from frontalab.training.step import NAN_AT_ENV

REPO = Path(__file__).resolve().parent.parent
QUICK = str(REPO / "sweeps" / "quick.yaml")


def one_line_failure(out, status: int) -> str:
    assert out.returncode == status, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("frontalab ")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def test_help_lists_every_exit_status():
    from frontalab.cli import EXIT_STATUS

    out = run_cli("--help")
    for status, (meaning, _) in EXIT_STATUS.items():
        assert f"{status:3d}  {meaning}" in out.stdout


def test_dataset_missing_or_unprepared(tmp_path):
    line = one_line_failure(run_cli("train", f"data.path={tmp_path / 'nowhere'}", "tracking.enabled=false",
                                    check=False), 5)
    assert "nowhere not found" in line
    (tmp_path / "half").mkdir()
    line = one_line_failure(run_cli("train", f"data.path={tmp_path / 'half'}", "tracking.enabled=false",
                                    check=False), 5)
    assert "manifest.json" in line and "frontalab prepare" in line


def test_a_missing_dataset_names_the_datasets_beside_it(tmp_path):
    """`frontalab train` right after `make demo`: the default data.path is not the demo's dataset, whose
    name the one-line failure gives (exit 5)."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text("{}")
    (tmp_path / "half").mkdir()  # no manifest: not a dataset
    line = one_line_failure(run_cli("train", f"data.path={tmp_path / 'faces'}", "tracking.enabled=false",
                                    check=False), 5)
    assert f"datasets there: {tmp_path / 'demo'} (train on one: data.path=URI)" in line, line
    assert "half" not in line


def test_a_missing_s3_dataset_names_the_prepared_ones(embedded_services):
    """As after `make demo`: s3://BUCKET/datasets/demo prepared, the default path beside it missing."""
    from frontalab import services

    cfg, endpoints = embedded_services
    demo = f"datasets/demo-{uuid.uuid4().hex[:6]}"
    services.s3_client(cfg).put_object(Bucket=endpoints.bucket, Key=f"{demo}/manifest.json", Body=b"{}")
    missing = f"s3://{endpoints.bucket}/datasets/faces-{uuid.uuid4().hex[:6]}"
    line = one_line_failure(run_cli("train", f"data.path={missing}", "tracking.enabled=false",
                                    *service_overrides(cfg), check=False), 5)
    assert f"{missing} not found; datasets there:" in line and f"s3://{endpoints.bucket}/{demo}" in line, line


def test_cuda_where_there_is_none_and_debug_shows_the_traceback(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ("train", "train.device=cuda", f"data.path={tmp_path}", "tracking.enabled=false")
    line = one_line_failure(run_cli(*args, check=False), 7)
    assert "train.device=cuda" in line and "0 CUDA device" in line
    debug = run_cli("--debug", *args, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DeviceUnavailable" in debug.stderr


@pytest.mark.slow  # waits out the 30 s a remote endpoint is given to answer
def test_service_unreachable(tmp_path):
    """A remote stack named by the standard variables that does not answer: one line, no embedded fallback."""
    dead = f"http://127.0.0.1:{free_port()}"
    out = run_cli("promote", "some-sweep", check=False, timeout=180,
                  env={"FRONTALAB_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": dead, "MLFLOW_S3_ENDPOINT_URL": dead,
                       "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert dead in one_line_failure(out, 3)
    assert not list(tmp_path.rglob("*.pid"))


def test_model_uri_not_found(embedded_services, tmp_path):
    from conftest import png_header

    cfg, _ = embedded_services
    (tmp_path / "photo.png").write_bytes(png_header(64, 64))
    for person in ("a", "b"):  # evaluate's faces (checked first): folder-per-person, 2+ photos each
        (tmp_path / "faces" / person).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "faces" / person / f"{i}.png").write_bytes(png_header(64, 64))
    sets = [a for o in service_overrides(cfg) for a in ("--set", o)]
    out = run_cli("frontalize", "--model", f"models:/nobody-{uuid.uuid4().hex[:6]}@champion", str(tmp_path / "photo.png"),
                  str(tmp_path / "out"), *sets, check=False)
    assert "nobody-" in one_line_failure(out, 6)
    out = run_cli("evaluate", "--model", "models:/nobody@champion", "--faces", str(tmp_path / "faces"),
                  *service_overrides(cfg),
                  check=False)
    assert "models:/nobody@champion" in one_line_failure(out, 6)


# ---------------------------------------------------------------- sweeps


def parent_run(endpoints, sweep: str):
    from mlflow import MlflowClient

    from frontalab.naming import SWEEP_TAG, sweep_experiment

    client = MlflowClient(endpoints.mlflow)
    exp = client.get_experiment_by_name(sweep_experiment(sweep))
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_id for r in runs]
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def one_trial_sweep(name: str, dataset: Path, cfg, *extra: str) -> list[str]:
    return ["sweep", QUICK, "--name", name, f"base.data.path={dataset}", "base.train.steps=4", "base.train.batch_size=4",
            "base.train.val_faces=4", "base.train.val_every=4", "base.train.checkpoint_every=4",
            "base.train.log_every=1", "search.loss.texture={grid:[10]}", "search.train.g_steps_per_d={grid:[1]}",
            "scheduler.name=fifo", "max_failures=0", "resources.cpu=1", *service_overrides(cfg), *extra]


@pytest.mark.slow  # a one-trial sweep on embedded Ray: ~60 s
def test_sweep_with_a_failed_trial_exits_1_naming_it(embedded_services, small_dataset):
    cfg, endpoints = embedded_services
    name = f"t{uuid.uuid4().hex[:6]}-nan"
    out = run_cli(*one_trial_sweep(name, small_dataset, cfg), check=False, timeout=900, env={NAN_AT_ENV: "2"})
    assert out.returncode == 1, out.stderr[-4000:]
    summary = json.loads(out.stdout)
    assert summary["errors"] == 1 and len(summary["errored_trials"]) == 1
    failed = summary["errored_trials"][0]
    assert "NonFiniteLoss" in failed["error"]
    assert f"1 of 1 trials ended in error: {failed['trial']}" in out.stderr
    parent, trials = parent_run(endpoints, name)
    assert parent.info.status == "FINISHED"  # the sweep itself ran to its end
    assert [t.info.status for t in trials] == ["FAILED"]


@pytest.mark.slow  # ~30 s
def test_a_sweep_that_fails_itself_ends_its_parent_run_failed(embedded_services, small_dataset):
    """Past its checks (`test_a_doomed_sweep_ends_before_it_starts`), the sweep itself fails: Tune cannot make its
    storage folder. Exit 1, and the parent run, which exists by then, ends FAILED."""
    cfg, endpoints = embedded_services
    name = f"t{uuid.uuid4().hex[:6]}-broken"
    out = run_cli(*one_trial_sweep(name, small_dataset, cfg, "storage=/proc/frontalab-sweeps"), check=False,
                  timeout=600)
    assert out.returncode == 1 and "/proc/frontalab-sweeps" in out.stderr, out.stderr[-4000:]
    assert parent_run(endpoints, name)[0].info.status == "FAILED"
