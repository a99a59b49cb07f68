"""Every name the platform writes for others to find again, in one place.

MLflow experiments, run tags, roles, registered models and their aliases, the metric trials are
ranked by, and the encoders' config names. Code that writes or searches one of them imports it
from here, so a name is spelled once. (The strings are part of the stored data: changing one
orphans the runs and models that carry the old one.)
"""

from __future__ import annotations

# ---------------------------------------------------------------- encoders (config `encoder.name`)

DLIB_RESNET = "dlib-resnet"
ENCODER_NAMES = (DLIB_RESNET, "facenet-vggface2", "facenet-casia")
# The independent judge (`frontalab.evaluation.judge`): evaluation only, never one of ENCODER_NAMES.
JUDGE_ENCODER = "hse-faceres"

# ---------------------------------------------------------------- metrics

# The metric the shipped sweep files and `promote` rank trials by (higher is better).
# Validation logs `frontalab.measure.summarise_outputs`' numbers under this prefix: the evaluation's names.
VALIDATION_PREFIX = "val/"
SELECTION_METRIC = VALIDATION_PREFIX + "frontalization_score"
SELECTION_MODE = "max"
FACE_SHARE_METRIC = VALIDATION_PREFIX + "output_face_detected"
SPREAD_METRIC = VALIDATION_PREFIX + "different_people_spread"
IDENTITY_METRIC = VALIDATION_PREFIX + "identity_distance_mean"  # by the trial's own encoder

# ---------------------------------------------------------------- experiments

ASSETS_EXPERIMENT = "frontalab-assets"  # the runs that hold registered assets (the landmark student)
# The MLflow UI opens an experiment with this tag on its training-runs view.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def sweep_experiment(sweep: str) -> str:
    """The MLflow experiment of sweep ``sweep``: its parent run and one child run per trial."""
    return f"sweep-{sweep}"


def evaluation_run(label: str) -> str:
    return f"eval-{label}"


# ---------------------------------------------------------------- run tags

TAG_PREFIX = "frontalab."
ROLE_TAG = "frontalab.role"  # what a run that is no trial is: one of the roles below
ROLE_SWEEP, ROLE_EVALUATION, ROLE_ASSET = "sweep", "evaluation", "asset"
COMMAND_TAG = "frontalab.command"  # the command line that created the run
SWEEP_TAG = "frontalab.sweep"
TUNE_EXPERIMENT_TAG = "frontalab.tune_experiment"  # on a sweep's parent: the Tune experiment it ran last (--resume)
TRIAL_TAG = "frontalab.trial_id"  # a trial's child run is found again by its Tune trial id
TRIAL_NAME_TAG = "frontalab.trial_name"
LABEL_TAG = "frontalab.label"  # an evaluation's label
STATUS_REASON_TAG = "frontalab.status_reason"
TRACKING_INCOMPLETE_TAG = "frontalab.tracking_incomplete"
STOPPED_EARLY_TAG = "frontalab.stopped_early_at"
WORKER_NODES_TAG = "ray.worker_node_ids"  # a data-parallel trial's workers' nodes, in rank order
NODE_TAG = "ray.node_id"  # the node a sweep's trial runs on
PARENT_RUN_TAG = "mlflow.parentRunId"
# What made a trial's run: `promote` copies the first four into the registered version's lineage.
COMMIT_TAG, CONFIG_HASH_TAG, DATASET_HASH_TAG, ENCODER_TAG = "git_commit", "config_hash", "dataset_hash", "encoder"
LINEAGE_TAGS = (CONFIG_HASH_TAG, DATASET_HASH_TAG, COMMIT_TAG, ENCODER_TAG)
HOST_TAG, DECODER_TAG = "host", "decoder"
VERSION_RUN_TAG = "run_id"  # on a registered version: the training run its checkpoint comes from
ASSET_SHA_TAG = "sha256"  # on a registered asset's run and version: its file's digest
# On an evaluation run: the model evaluated, and the training run of its checkpoint.
MODEL_URI_TAG, MODEL_NAME_TAG, MODEL_VERSION_TAG, SOURCE_RUN_TAG = "model_uri", "model_name", "model_version", "source_run"
# MLflow's own context tags (the UI's User, Source and Description), which `MlflowClient.create_run` leaves unset.
USER_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG = "mlflow.user", "mlflow.source.name", "mlflow.source.type"
GIT_COMMIT_TAG, NOTE_TAG = "mlflow.source.git.commit", "mlflow.note.content"


def trial_run_name(config: dict, index: str) -> str:
    """A trial run's name: its sampled values (``loss.texture=100 train.g_steps_per_d=2``, or an ablation arm's
    name), then Tune's trial number, so the runs table says what each trial tried."""
    def shown(value) -> str:
        if isinstance(value, dict):
            return str(value.get("name", value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    values = [shown(v) if isinstance(v, dict) else f"{k}={shown(v)}" for k, v in sorted(config.items())]
    return f"{' '.join(values) or 'trial'} #{index.lstrip('0') or '0'}"


def bundle_tag(key: str) -> str:
    """The tag naming a sweep trial's named bundle (an ablation arm) of search key ``key``."""
    return f"{TAG_PREFIX}{key}"


# ---------------------------------------------------------------- registered models

MODEL_NAME = "frontalizer"  # `promote`'s default registered model
CHAMPION, PREVIOUS = "champion", "previous"  # its aliases
LANDMARK_MODEL = "landmarks68"  # the landmark student, registered on first use
