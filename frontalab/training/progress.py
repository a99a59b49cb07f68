"""What `frontalab train` shows while it runs: the MLflow run's address at its start, then one line per
logged step (losses, speed) and per validation (face share, spread, identity distance), on stderr.

It wraps the trial's tracker, so the loop stays unaware of the terminal; a sweep's trials report to Tune.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from frontalab.naming import FACE_SHARE_METRIC, IDENTITY_METRIC, SELECTION_METRIC, SPREAD_METRIC
from frontalab.tracking import store


class ProgressTracker:
    """The trial's tracker, printing what it is given."""

    def __init__(self, tracker: Any, steps: int, out=sys.stderr):
        self.tracker, self.steps, self.out = tracker, steps, out
        if tracker.run_id:
            experiment = tracker.client.get_run(tracker.run_id).info.experiment_id
            self._print(f"MLflow run {tracker.run_id}: {store.run_url(experiment, tracker.run_id)}")

    def __getattr__(self, name: str) -> Any:  # everything else is the tracker's
        return getattr(self.tracker, name)

    def _print(self, line: str) -> None:
        print(f"frontalab train: {line}", file=self.out, flush=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)
        if "train/g/total" in metrics:
            parts = [f"step {step}/{self.steps}", f"G {metrics['train/g/total']:.4g}"]
            if "train/d/adversarial" in metrics:
                parts.append(f"D {metrics['train/d/adversarial']:.4g}")
            rate = metrics.get("train/steps_per_s", 0.0)
            parts.append(f"{rate:.2f} steps/s")
            if rate > 0:
                parts.append(f"~{(self.steps - step) / rate / 60:.0f} min left")
            self._print("  ".join(parts))
        if SELECTION_METRIC in metrics:
            self._print(f"validation at step {step}: a face in {metrics[FACE_SHARE_METRIC]:.0%} of outputs, "
                        f"spread {metrics[SPREAD_METRIC]:.3f}, identity distance {metrics[IDENTITY_METRIC]:.3f}, "
                        f"score {metrics[SELECTION_METRIC]:.3f}")


def with_progress(factory: Callable[..., Any], steps: int) -> Callable[..., Any]:
    """A tracker factory whose trackers print the run's progress (see `ProgressTracker`)."""
    def open_tracker(**kwargs: Any) -> ProgressTracker:
        return ProgressTracker(factory(**kwargs), steps)

    return open_tracker
