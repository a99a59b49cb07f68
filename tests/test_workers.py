"""One trial on many workers (`frontalab.training.workers`, `frontalab.training.distributed`): the collectives that
let a worker see the whole batch, and a 2-worker Ray Train trial (gloo) that trains as the 1-worker trial does."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port, run_cli, service_overrides


def _collectives(rank: int, port: int, out: str) -> None:
    """Worker ``rank`` of 2 over gloo, in double precision: its half of a batch of 4 against the whole batch."""
    from torch import nn

    from frontalab.losses.identity import identity_relation_loss
    from frontalab.models.parallel import synced_batch_norm
    from frontalab.training.distributed import average_gradients, mean_over_workers

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    x, w = torch.randn(4, 3, 5, 5) * 3 + 1, torch.randn(4, 3, 5, 5)
    e_in, e_out = torch.randn(4, 8), torch.randn(4, 8)
    whole = nn.BatchNorm2d(3)
    with torch.no_grad():
        whole.weight.uniform_()
        whole.bias.uniform_()
    synced = synced_batch_norm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    synced.load_state_dict(whole.state_dict())
    # One worker: the whole batch. Two: each its half, losses the means of halves, gradients averaged.
    xw, ew = x.clone().requires_grad_(), e_out.clone().requires_grad_()
    yw = whole(xw)
    whole_relation = identity_relation_loss(e_in, ew)  # before the process group: one worker's
    ((yw * w).mean() + whole_relation).backward()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    half = slice(2 * rank, 2 * rank + 2)
    xs, es = x[half].clone().requires_grad_(), e_out[half].clone().requires_grad_()
    ys = synced(xs)
    loss = (ys * w[half]).mean() + identity_relation_loss(e_in[half], es)
    loss.backward()
    average_gradients(synced.parameters())
    for t in (xs.grad, es.grad):
        t /= 2  # what the parameters before them would receive, averaged over the workers
    mean = mean_over_workers({"loss": loss})["loss"]
    torch.save({"y": (yw[half] - ys).abs().max(), "gx": (xw.grad[half] - xs.grad).abs().max(),
                "ge": (ew.grad[half] - es.grad).abs().max(),
                "gw": max((a.grad - b.grad).abs().max() for a, b in zip(whole.parameters(), synced.parameters())),
                "stats": max((a - b).abs().max() for a, b in zip(whole.buffers(), synced.buffers())),
                "loss": (mean - ((yw * w).mean() + whole_relation)).abs()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_collectives_give_each_worker_the_whole_batch_with_its_gradients(tmp_path):
    """BatchNorm over 2 workers is BatchNorm over the whole batch (output, gradients, running statistics); the
    identity relation pairs the whole batch's rows and sends each worker its rows' gradient; the mean loss is the
    whole batch's. Double precision, so agreement means equality."""
    mp.spawn(_collectives, args=(free_port(), str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        found = torch.load(tmp_path / f"out.{rank}")
        assert all(v < 1e-12 for v in found.values()), (rank, [(k, float(v)) for k, v in found.items() if v >= 1e-12])


def history(client, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    steps = [p.step for p in points]
    assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {sorted(steps)}"
    return {p.step: p.value for p in points}


@pytest.mark.slow
def test_two_workers_train_as_one_worker_does(small_dataset, services_env, tmp_path):
    """`frontalab train resources.workers=2` (Ray Train, gloo, embedded Ray) at global batch 4 against the same
    trial on one worker, 20 steps, G and D, identity relation and BatchNorm: the first step's losses are the
    one-worker losses; the workers end with identical weights; every step is in MLflow once, from one run;
    the weights after 20 steps are as close to the one worker's as the one worker is to itself on 2 threads
    (float rounding in a GAN's updates grows, docs/SCALE.md); and the run resumes on one worker."""
    from mlflow import MlflowClient

    from frontalab.training.checkpoints import load_checkpoint

    cfg, _ = services_env
    common = ["model.out_size=64", f"data.path={small_dataset}", "train.batch_size=4", "train.val_faces=4",
              "train.steps=20", "train.log_every=1", "train.val_every=10", "train.checkpoint_every=10",
              "train.g_steps_per_d=2", "loss.adversarial=1", "loss.identity_relation=5", "train.seed=1",
              "tracking.experiment=test-workers", "tracking.system_metrics=false", *service_overrides(cfg)]

    def train(name: str, *extra: str) -> dict:
        out = run_cli("train", *common, f"train.checkpoint_dir={tmp_path / name}", *extra, timeout=600)
        return json.loads(out.stdout)

    one, two = train("one", "train.workers=1"), train("two", "resources.workers=2", "train.workers=1")
    train("threads", "train.workers=2")  # the floor: the one-worker trial against itself on 2 threads
    assert one["status"] == two["status"] == "FINISHED" and two["step"] == 20
    client = MlflowClient()
    keys = [k for k in client.get_run(one["run_id"]).data.metrics if k.startswith(("train/g/", "train/d/"))]
    assert "train/g/identity_relation" in keys and "train/d/adversarial" in keys
    for key in keys:
        a, b = history(client, one["run_id"], key), history(client, two["run_id"], key)
        assert sorted(b) == sorted(a) and max(b) == 20, key  # every step once, D's from its first update
        first = min(a)  # from the same initial weights and the same 4 faces: float rounding only
        assert abs(a[first] - b[first]) <= 1e-5 * abs(a[first]) + 1e-6, (key, a[first], b[first])
    runs = client.search_runs([client.get_experiment_by_name("test-workers").experiment_id],
                              filter_string=f"tags.mlflow.runName = '{client.get_run(two['run_id']).info.run_name}'")
    assert len(runs) == 1  # rank 1 tracked nothing

    def final(name: str) -> dict:
        return load_checkpoint(sorted((tmp_path / name).rglob("step-000020.pt"))[0])

    def distance(a: dict, b: dict) -> float:
        va, vb = (torch.cat([t.double().flatten() for k, t in sorted(c["G"].items()) if t.is_floating_point()])
                  for c in (a, b))
        return float((va - vb).norm() / va.norm())

    ck_one, ck_two, ck_threads = final("one"), final("two"), final("threads")
    assert len(ck_two["worker_weights"]) == 2 and len(set(ck_two["worker_weights"])) == 1
    assert len(ck_two["worker_rng"]) == 2
    floor = distance(ck_one, ck_threads)
    assert 0 < distance(ck_one, ck_two) < 3 * floor, (distance(ck_one, ck_two), floor)

    more = json.loads(run_cli("train", *common, f"train.checkpoint_dir={tmp_path / 'two'}", "train.steps=22",
                              "--resume", timeout=600).stdout)
    assert more["run_id"] == two["run_id"] and more["step"] == 22


@pytest.fixture(scope="module")
def cluster(embedded_services, tmp_path_factory):
    """A Ray head (2 CPUs) and one worker node (1 CPU): separate `ray start` processes on 127.0.0.1. The head has
    room for a trial's two workers once the worker node is gone."""
    from frontalab import services
    from frontalab.testing import LocalCluster

    c = LocalCluster(workers=1, cpus_per_node=1, head_cpus=2, env=services.client_env(embedded_services[0]),
                     state_dir=tmp_path_factory.mktemp("ray-cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow  # ~4 min
def test_a_sweep_of_two_worker_trials_on_two_nodes_survives_a_killed_node(cluster, embedded_services, small_dataset,
                                                                          tmp_path):
    """Two ASHA trials, each of two workers spread over the head and the worker node (half a CPU each). The worker
    node is killed mid-trial: Ray Train starts the trial's workers again on the head, from the last checkpoint, in
    the same MLflow run, and every step is logged once."""
    nodes = cluster.node_ids()
    import signal

    from test_sweep import assert_every_step_once, finish, start_sweep, sweep_args, sweep_runs, tags, history, wait_for

    cfg, endpoints = embedded_services
    name, steps = f"w{os.getpid()}-workers", 40
    log = tmp_path / "sweep.log"
    args = sweep_args(name, small_dataset, cfg, steps=steps, trials=2, ckpt_every=10, val_every=10, max_failures=1)
    args = [a for a in args if a not in ("scheduler.name=fifo", "resources.cpu=1", "max_concurrent=2")]
    proc = start_sweep(args + ["scheduler.name=asha", "scheduler.grace_period=20", "max_concurrent=1",
                               "resources.workers=2", "resources.cpu=0.5", "resources.placement=spread",
                               "--address", cluster.address], log, env=cluster.driver_env())
    try:
        def past_a_checkpoint():
            try:
                _, children = sweep_runs(endpoints, name)
            except Exception:
                return None
            for c in children:
                got = history(endpoints, c["info"]["run_id"], "train/g/total")
                if got and got[-1] >= 15:
                    return c
            assert proc.poll() is None, log.read_text()[-3000:]
            return None

        victim = wait_for("a trial past its first checkpoint", past_a_checkpoint, 400)
        assert set(tags(victim)["ray.worker_node_ids"].split(",")) == {nodes["head"], nodes["w1"]}, "spread"
        assert cluster.kill_node("w1") and not cluster.pids("w1")
        summary = finish(proc, log, timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert summary["trials"] == 2 and summary["errors"] == 0, summary
    parents, children = sweep_runs(endpoints, name)
    assert len(children) == 2, "a restarted trial continues its own run"
    run = next(c for c in children if c["info"]["run_id"] == victim["info"]["run_id"])
    assert run["info"]["status"] == "FINISHED"
    assert_every_step_once(endpoints, run, steps, 5)
    for c in children:
        assert c["info"]["status"] == "FINISHED"
        got = history(endpoints, c["info"]["run_id"], "train/g/total")
        assert len(got) == len(set(got)) and got == sorted(got)
        assert "frontalab.stopped_early_at" in tags(c) or got[-1] == steps
    assert parents[0]["info"]["status"] == "FINISHED"


@pytest.mark.slow  # ~40 s
def test_a_non_finite_loss_on_two_workers_fails_the_run_once_with_its_reason(small_dataset, services_env, tmp_path):
    """Every worker meets the same NaN (the losses are the workers' mean), so the trial stops at once, FAILED with
    the reason, and Ray Train does not start it again into the same NaN."""
    from mlflow import MlflowClient

    from frontalab.naming import STATUS_REASON_TAG
    from frontalab.training.step import NAN_AT_ENV

    cfg, _ = services_env
    out = run_cli("train", "model.out_size=64", f"data.path={small_dataset}", "train.batch_size=4", "train.val_faces=2",
                  "train.steps=6", "train.log_every=1", "resources.workers=2", "resources.max_failures=2",
                  f"train.checkpoint_dir={tmp_path / 'nan'}", "tracking.experiment=test-workers-nan",
                  *service_overrides(cfg), check=False, timeout=600, env={NAN_AT_ENV: "3"})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "FAILED: non-finite generator loss at step 3" in out.stderr
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("test-workers-nan").experiment_id])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags[STATUS_REASON_TAG]
    history = [p.step for p in client.get_metric_history(run.info.run_id, "train/g/total")]
    assert history == sorted(set(history)) and max(history) < 3, "not started again into the same NaN"


@pytest.mark.slow  # ~3 min
def test_pbt_restarts_a_two_worker_trial_as_a_whole_from_another_trials_checkpoint(embedded_services, small_dataset):
    """PBT exploits: a trial's workers stop with it, its placement group is freed, and it starts again on two new
    workers from the better trial's checkpoint, which reaches them through Ray's object store."""
    from test_sweep import results_table, summary_of, sweep_args, sweep_runs

    cfg, endpoints = embedded_services
    name = f"w{os.getpid()}-pbt"
    args = [a for a in sweep_args(name, small_dataset, cfg, steps=30, trials=2, ckpt_every=10, val_every=10)
            if a != "scheduler.name=fifo"]
    out = run_cli(*args, "scheduler.name=pbt", "scheduler.perturbation_interval=10",
               "scheduler.mutations={loss.texture: {choice: [5, 80]}}", "resources.workers=2", "resources.cpu=0.5",
               timeout=900)
    summary = summary_of(out.stdout)
    assert summary["trials"] == 2 and summary["errors"] == 0, summary
    parents, children = sweep_runs(endpoints, name)
    assert len(children) == 2 and all(c["info"]["status"] == "FINISHED" for c in children)
    # The trials start at texture 10 and 20; PBT's exploit gives the worse one the better one's value, perturbed
    # (x0.8, x1.2, or resampled to 5 or 80), which only a restarted trial can hold at its end.
    table = results_table(endpoints, parents[0]["info"]["run_id"])
    final = dict(zip(table["trial_id"], table["config/loss.texture"]))
    assert set(final.values()) != {10, 20}, final
