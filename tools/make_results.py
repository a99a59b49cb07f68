"""Generate docs/RESULTS.md from the MLflow evaluation runs of `frontalab evaluate` (nothing typed by hand
except the optional analysis in --notes, which is included verbatim and marked as such).

For each label (the latest FINISHED evaluation run with that label): the headline numbers
against the faces issue's gates (for the shipped champions) and targets, the report's plots and input/output pairs (copied next to RESULTS.md),
the training curves and compute of the run that made the checkpoint, and the exact commands.

    python tools/make_results.py [--labels pretrained-thesis,pretrained-cole,full,...] [--champions ...]
                                 [--notes docs/results_notes.md] [--out docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from frontalab.cli import use_services
from frontalab.config import load_config
from frontalab.losses.terms import THESIS, terms_of
from frontalab.naming import (COMMAND_TAG, FACE_SHARE_METRIC, IDENTITY_METRIC, LABEL_TAG, ROLE_EVALUATION, ROLE_TAG,
                              SELECTION_METRIC, SOURCE_RUN_TAG, SPREAD_METRIC, SWEEP_TAG, sweep_experiment)
from frontalab.paths import portable
from frontalab.tracking import store, sweep_runs

REPO = Path(__file__).resolve().parent.parent
# The faces issue's gates (a shipped champion must meet them) and targets: (key, comparison, bound, unit).
GATES = (("output_face_detected", ">=", 0.95, "share"), ("different_people_spread", ">=", 0.7, "ratio"),
         ("auc_outputs", ">=", 0.95, "ratio"))
TARGETS = (("identity_within_threshold", ">=", 0.95, "share"), ("normalized_share", ">=", 0.80, "share"),
           ("mean_abs_yaw", "<=", 5.0, "deg"), ("mean_mouth_opening", "<", "inputs_mean_mouth_opening", "ratio"))
CURVES = (SELECTION_METRIC, FACE_SHARE_METRIC, SPREAD_METRIC, IDENTITY_METRIC, "train/g/total")
REPORT_FILES = ("pairs.png", "identity_distance.png", "pair_distances.png", "roc.png", "yaw.png", "metrics.json")


def auc_interval(m: dict) -> str:
    """The outputs' AUC's 95% interval over people, where the evaluation measured one."""
    low_high = m.get("auc_outputs_ci95")
    return f" ({low_high[0]:.3f}–{low_high[1]:.3f})" if low_high else ""


def latest_evaluation(client, experiment_id: str, label: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{LABEL_TAG}` = '{label}' and "
                              f"tags.`{ROLE_TAG}` = '{ROLE_EVALUATION}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no finished evaluation run labelled {label!r}: run `frontalab evaluate --label {label} …`")
    return runs[0]


def fetch_report(client, run, into: Path) -> dict:
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run.info.run_id, "report", tmp))
        for name in REPORT_FILES:
            shutil.copy(local / name, into / name)
    return json.loads((into / "metrics.json").read_text())


def minutes(run) -> float:
    end = run.info.end_time or int(time.time() * 1000)
    return (end - run.info.start_time) / 60000


def plot_curves(client, sources: dict[str, object], threshold: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, key in zip(axes, CURVES):
        for label, run in sources.items():
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], label=label)
        ax.set(title=key, xlabel="step")
        if key == IDENTITY_METRIC:
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def verdict(value: float, op: str, bound: float, unit: str) -> str:
    met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
    shown = {"share": lambda v: f"{v:.1%}", "deg": lambda v: f"{v:.1f}°", "ratio": lambda v: f"{v:.3f}"}[unit]
    if met:
        return f"met ({shown(value)} {op} {shown(bound)})"
    gap = bound - value if op == ">=" else value - bound
    missed = {"share": f"{gap * 100:.1f} points", "deg": f"{gap:.1f}°", "ratio": f"{gap:.3f}"}[unit]
    return f"**missed by {missed}** ({shown(value)})"


def verdicts(m: dict, checks) -> list[str]:
    """One verdict per check; a bound given as a key is that key's value (the inputs' own number)."""
    return [verdict(m[k], op, m[b] if isinstance(b, str) else b, u) for k, op, b, u in checks]


def header(checks) -> str:
    return " | ".join(f"{k} {op} {b if isinstance(b, str) else f'{b:g}'}" for k, op, b, _ in checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="pretrained-thesis,pretrained-cole,stage3-control,full,no_adversarial,"
                                        "no_adversarial_no_mask,input-64")
    ap.add_argument("--champions", default="pretrained-thesis,pretrained-cole", help="labels the gates apply to")
    ap.add_argument("--experiment", default="frontalab-evaluations")
    ap.add_argument("--notes", default=str(REPO / "docs" / "results_notes.md"), help="hand-written analysis, included verbatim")
    ap.add_argument("--out", default=str(REPO / "docs" / "RESULTS.md"))
    args = ap.parse_args()
    use_services(load_config(None, []))
    client = store.client()
    out = Path(args.out)
    assets = out.parent / "results"
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r}: run `frontalab evaluate` first")
    labels = [s for s in args.labels.split(",") if s]
    champions = [s for s in args.champions.split(",") if s in labels]
    evals = {label: latest_evaluation(client, exp.experiment_id, label) for label in labels}
    metrics = {label: fetch_report(client, run, assets / label) for label, run in evals.items()}
    sources = {label: client.get_run(run.data.tags[SOURCE_RUN_TAG]) for label, run in evals.items()
               if run.data.tags.get(SOURCE_RUN_TAG)}
    plot_curves(client, sources, next(iter(metrics.values()))["threshold"], assets / "training_curves.png")

    lines = ["# Results: does it frontalize?", "",
             f"Generated by `python tools/make_results.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the "
             f"MLflow evaluation runs (experiment `{args.experiment}`); do not edit by hand.", "",
             "Every number below comes from `frontalab evaluate` (people with two or more photos):", "",
             *[f"- `{label}`: {m['n_faces']} faces of {m['n_people']} people in `{portable(run.data.params.get('faces', '?'))}`, "
               f"encoder `{m['encoder']}` (same-identity threshold {m['threshold']:g}); the model trained on "
               f"`{sources[label].data.params.get('data.path', '?') if label in sources else '?'}`"
               for (label, m), run in zip(metrics.items(), evals.values())], "",
             "## Headline numbers", "",
             "| model | within threshold | people normalised | AUC outputs (95% interval over people) / inputs | mean abs yaw out / in | "
             "outputs with a detectable face | different people's spread out / in | faces / people |",
             "|---|---|---|---|---|---|---|---|"]
    for label, m in metrics.items():
        lines.append(f"| {label} | {m['identity_within_threshold']:.1%} | {m['normalized_share']:.1%} | "
                     f"{m['auc_outputs']:.3f}{auc_interval(m)} / {m['auc_inputs']:.3f} | {m['mean_abs_yaw']:.1f}° / "
                     f"{m['inputs_mean_abs_yaw']:.1f}° | {m['output_face_detected']:.1%} | "
                     f"{m['different_people_spread']:.2f} | {m['n_faces']} / {m['n_people']} |")
    lines += ["", f"## Gates (the shipped champions: {', '.join(champions)})", "", f"| model | {header(GATES)} |",
              "|---|" + "---|" * len(GATES)]
    lines += [f"| {label} | " + " | ".join(verdicts(metrics[label], GATES)) + " |" for label in champions]
    lines += ["", "## Targets", "", f"| model | {header(TARGETS)} |", "|---|" + "---|" * len(TARGETS)]
    for label, m in metrics.items():
        # A target "met" by outputs that are not faces (a collapsed mask: a white image) is no success.
        caveat = (f" (but a face is detected in only {m['output_face_detected']:.0%} of the outputs)"
                  if m["output_face_detected"] < 0.5 else "")
        lines.append(f"| {label} | " + " | ".join(v + (caveat if v.startswith("met") else "")
                                              for v in verdicts(m, TARGETS)) + " |")
    lines += ["", "Identity distance input to output (mean / median / p95), pose and expression:", "",
              "| model | distance mean / median / p95 | abs pitch out / in | mouth opening out / in |", "|---|---|---|---|"]
    for label, m in metrics.items():
        lines.append(f"| {label} | {m['identity_distance_mean']:.3f} / {m['identity_distance_median']:.3f} / "
                     f"{m['identity_distance_p95']:.3f} | {m['mean_abs_pitch']:.1f}° / {m['inputs_mean_abs_pitch']:.1f}° | "
                     f"{m['mean_mouth_opening']:.3f} / {m['inputs_mean_mouth_opening']:.3f} |")

    lines += ["", "## Pictures", ""]
    for label in metrics:
        lines += [f"### {label}", "",
                  f"Input | output pairs, one per person: ![pairs](results/{label}/pairs.png) (written here by this "
                  f"script but never committed, since the inputs are dataset photos; also the artifact "
                  f"`report/pairs.png` of MLflow run `{evals[label].info.run_id}`)", "",
                  f"![identity distances](results/{label}/identity_distance.png) ![roc](results/{label}/roc.png)", "",
                  f"![pair distances](results/{label}/pair_distances.png) ![yaw](results/{label}/yaw.png)", ""]

    lines += ["## Training", "", "![training curves](results/training_curves.png)", "",
              "| model | run | sweep | decoder | steps x batch | out size | loss weights | wall time |",
              "|---|---|---|---|---|---|---|---|"]
    for label, run in sources.items():
        p = run.data.params
        keys = [f"loss.{t.key}" for t in terms_of(p.get("model.decoder", THESIS))]
        # The weights that are on; older runs lack newer terms.
        weights = ", ".join(f"{k.split('.')[-1]} {p[k]}" for k in keys if k in p and float(p[k]) != 0)
        lines.append(f"| {label} | `{run.info.run_id}` | {run.data.tags.get(SWEEP_TAG, '-')} | "
                     f"{p.get('model.decoder')} | {p.get('train.steps')} x {p.get('train.batch_size')} | "
                     f"{p.get('model.out_size')} | {weights} | {minutes(run):.0f} min |")
    sweeps = {run.data.tags.get(SWEEP_TAG) for run in sources.values()} - {None}
    lines += ["", "## Compute and commands", "",
              f"- Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU; "
              f"evaluations took " + ", ".join(f"{label} {m['seconds'] / 60:.1f} min" for label, m in metrics.items()) + "."]
    for sweep in sorted(sweeps):
        exp_s = client.get_experiment_by_name(sweep_experiment(sweep))
        parent = sweep_runs.latest_sweep_parent(client, exp_s.experiment_id, sweep) if exp_s else None
        if parent is not None:
            lines.append(f"- Sweep `{sweep}`: {minutes(parent):.0f} min wall for all its trials: "
                         f"`{parent.data.tags.get(COMMAND_TAG, '?')}`")
    for label, run in evals.items():
        lines.append(f"- Evaluation `{label}`: `{run.data.tags.get(COMMAND_TAG, '?')}` "
                     f"(MLflow run `{run.info.run_id}`)")
    notes = Path(args.notes)
    if notes.is_file():
        lines += ["", "## Analysis (written by hand from the numbers above)", "", notes.read_text().strip()]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {assets}/")


if __name__ == "__main__":
    main()
