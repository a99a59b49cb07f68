"""Structured, validated configuration: the whole config, composed of its sections.

A config is composed from the dataclasses of `frontalab.sections` and the loss section below, then a YAML
file, then dotlist overrides (``loss.alpha_geo=160 model.out_size=64``). OmegaConf rejects unknown keys and
wrong types; `validate` then checks ranges and choices declared next to each field. Every failure is a
`ConfigError` naming the key, which the CLI turns into exit status 2.

The sections that depend on the shared library are here: the model's decoder is one of the papers' systems
(`frontalab.losses.papers`), and the loss section's weights are made from the loss terms' table
(`frontalab.losses.terms`): a term's row holds its weight's default, so a weight with no term cannot be written
and a new term needs nothing here.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from frontalab.losses.papers import PAPERS, paper
from frontalab.losses.terms import TERMS, THESIS
from frontalab.naming import JUDGE_ENCODER, SELECTION_METRIC, SELECTION_MODE
from frontalab.sections import (ConfigError, DataConfig, EncoderConfig, EvaluateConfig, LandmarksConfig,
                                PrepareConfig, PromoteConfig, ResourcesConfig, ServicesConfig,
                                TrackingConfig, TrainConfig, setting)


@dataclass
class ModelConfig:
    decoder: str = setting(THESIS, choices=tuple(PAPERS), doc="thesis (Wang 2019) or cole (Cole et al. 2017)")
    out_size: int = setting(320, choices=(64, 128, 160, 320),
                            doc="output side in pixels; decoder depth and width follow from it")
    mask: bool = setting(True, doc="thesis attention-mask branch (F_O = M*F_N + (1-M)*1)")
    norm: str = setting("batch", choices=("batch", "instance", "none"), doc="normalisation inside residual blocks")
    width: int = setting(1, lo=1, hi=8, doc="thesis decoder: channel multiplier of Table 3.1 (1 = the thesis; at 64 "
                                            "px its widths are 48..6 channels, too few for detail)")
    input_texture: bool = setting(False,
                                  doc="our departure (false = the papers): the decoder also sees the input warped to "
                                      "the canonical landmarks (the texture term's I*) through U-Net skips and draws "
                                      "its texture as a residual over it, so outputs keep the person's own face")
    test_views: int = setting(6, choices=(1, 2, 6),
                              doc="encoder views averaged when frontalizing (frontalize, evaluate, serving; training "
                                  "and validation use one): 1 = the input chip, 2 = and its mirror image, 6 = both "
                                  "also zoomed by 0.93 and 1.07")
    cole_hidden: int = setting(256, lo=1, doc="width of Cole's feature MLP and landmark MLP")
    cole_channels: int = setting(256, lo=8,
                                 doc="channels of Cole's texture volume (the paper: 256 at S/4), halved by each "
                                     "transposed conv; its FC layer holds cole_hidden x (S/4)^2 x this")


@dataclass
class LossOptions:
    """The ``loss`` keys that are not weights: how some terms are computed."""
    texture_frame: str = setting("student", choices=("student", "canonical"),
                                 doc="where the output's 14 texture landmarks come from: the landmark student on the "
                                     "output (thesis), or the canonical template (the output is read as already "
                                     "frontal; no warp of the output, so early noise cannot mislead the "
                                     "correspondence)")
    texture_region: str = setting("mask", choices=("mask", "face"),
                                  doc="which pixels the texture term compares: weighted by the learned mask (eq. "
                                      "3.1), or over the canonical face region (the landmark hull with a forehead, "
                                      "fixed in the canonical frame), so the mask cannot shrink the term")
    mask_target: str = setting("zero", choices=("zero", "face"), doc="what the mask term pulls the mask towards: zero "
                                                                     "(eq. 3.8, mean(M^p)) or the canonical face "
                                                                     "region (mean(|M - R|^p)): the mask holds the "
                                                                     "face and drops the background")
    region_scale: float = setting(1.0, lo=1.0, hi=2.0,
                                  doc="that face region widened about its centre: more than 1 takes in hair, ears and "
                                      "the jaw's own line, which tell people apart")
    identity_chip: str = setting("student", choices=("student", "canonical"),
                                 doc="where the output's encoder chip is cut: at the landmark student's points on the "
                                     "output, or at the canonical points (the output is read as frontal, so it must "
                                     "put a face exactly there)")
    encoder_blur: float = setting(0.0, lo=0, hi=8,
                                  doc="Gaussian sigma (output pixels) applied to what the encoder's terms see: the "
                                      "encoder's gradients carry high frequencies that print as stripes on a small "
                                      "output (seen at 64 px with 0)")
    mask_p: float = setting(1.0, lo=0.0, hi=16.0, doc="mask penalty exponent p (eq. 3.8)")


def _loss_section() -> type:
    """The ``loss`` section: a weight per loss term (its default and its source from the term's row), then the
    options. A dotted key (``cole.texture``) is a weight in a subsection (``ColeLossConfig``)."""
    groups: dict[str, list[tuple[str, Any, Any]]] = {}
    for term in TERMS:
        if term.phase == "G":  # the discriminator's term is unweighted
            group, _, name = term.key.rpartition(".")
            groups.setdefault(group, []).append((name, float, setting(term.default, lo=0, doc=term.source)))
    section = groups.pop("") + [(f.name, f.type, field(default=f.default, metadata=f.metadata))
                                for f in fields(LossOptions)]
    for group, weights in groups.items():
        sub = _named(make_dataclass(f"{group.title()}LossConfig", weights))
        section.append((group, sub, field(default_factory=sub)))
    return _named(make_dataclass("LossConfig", section))


def _named(cls: type) -> type:
    """A made class, reachable as this module's attribute: a config pickles its sections' classes by name."""
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


LossConfig = _loss_section()


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
    problem = paper(cfg.model.decoder).config_problem(cfg)
    if problem:
        raise ConfigError(problem)
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
    name: str = setting("fifo", choices=("fifo", "asha", "pbt"))
    grace_period: int = setting(50, lo=1, doc="asha: steps a trial runs before it may be stopped")
    reduction_factor: float = setting(2.0, lo=1.01, doc="asha: 1/fraction of trials kept at each rung")
    perturbation_interval: int = setting(250, lo=1, doc="pbt: steps between exploit/explore, a multiple of "
                                                        "train.checkpoint_every")
    mutations: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "pbt: config key -> search spec"})


@dataclass
class SweepConfig:
    name: str = setting("", doc="the sweep's name (default: the file's stem): Tune experiment and MLflow experiment "
                                "sweep-NAME")
    base_config: str = setting("", doc="a trial config YAML, relative to the sweep file")
    base: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "trial config values (nested) on top of base_config"})
    search: Dict[str, Any] = field(default_factory=dict, metadata={"doc": "config key -> {choice|grid|uniform|loguniform|randint: ...}"})
    search_alg: str = setting("random", choices=("grid", "random", "optuna"),
                              doc="how trials' values are chosen: grid = every point of grid specs (no other kinds); "
                                  "random = grid points, the other specs sampled at random (Tune's variant "
                                  "generator); optuna = each trial's values from the results so far (TPE, "
                                  "multivariate, constant liar for concurrent trials; no grid specs)")
    seed: int = setting(0, lo=0, doc="the searcher's seed: the same seed and results give the same trials")
    metric: str = setting(SELECTION_METRIC, doc="the metric trials are compared by (default: the frontalization "
                                                "score, zero for trials without faces or with outputs all alike)")
    mode: str = setting(SELECTION_MODE, choices=("min", "max"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = setting(1, lo=1, doc="samples of the search space (each grid point is sampled this often)")
    max_concurrent: int = setting(0, lo=0, doc="trials at once; 0 = as many as resources allow")
    resources: ResourcesConfig = field(default_factory=ResourcesConfig,
                                       metadata={"doc": "each trial's workers and their resources (the trials' own "
                                                        "`resources` section, set here for every trial)"})
    max_failures: int = setting(2, lo=0, doc="restarts of a failed trial (from its last checkpoint)")
    storage: str = setting("s3://frontalab/sweeps", doc="Tune's experiment storage (trial checkpoints, state)")


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
