"""Config composition and validation, through the library and through the CLI (exit status 2)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from frontalab.config import config_hash, flatten, load_config
from frontalab.naming import SELECTION_METRIC
from frontalab.sections import ConfigError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "frontalab", *args], capture_output=True, text=True, timeout=120)


def test_defaults_are_the_paper_values():
    cfg = load_config()
    assert (cfg.loss.alpha_geo, cfg.loss.sym, cfg.loss.tilt, cfg.loss.expr, cfg.loss.mask_p) == (160, 1, 1, 1, 1)
    assert cfg.train.g_steps_per_d == 4
    assert (cfg.loss.cole.texture, cfg.loss.cole.landmark, cfg.loss.cole.identity) == (100, 1, 10)
    assert cfg.model.out_size == 320 and cfg.services.host == "127.0.0.1"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  out_size: 128\nloss:\n  alpha_geo: 16\n")
    cfg = load_config(f, ["loss.alpha_geo=1600", "train.g_steps_per_d=8"])
    assert cfg.model.out_size == 128 and cfg.loss.alpha_geo == 1600 and cfg.train.g_steps_per_d == 8


@pytest.mark.parametrize("override,needle", [
    ("loss.bogus=1", "loss.bogus"),
    ("loss.texture=-1", "loss.texture"),
    ("model.out_size=100", "model.out_size"),
    ("train.steps=ten", "train.steps"),
    ("train.device=gpu", "train.device"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_yaml_key_is_rejected(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.stepz.*train\.steps"):
        load_config(f)


def test_flatten_and_hash_ignore_services():
    a = load_config(None, ["services.mlflow_port=5999"])
    b = load_config()
    assert flatten(a)["loss.alpha_geo"] == 160.0
    assert config_hash(a) == config_hash(b) != config_hash(load_config(None, ["loss.alpha_geo=16"]))


def test_cli_config_prints_resolved_yaml():
    out = run_cli("config", "model.out_size=64", "loss.alpha_geo=16")
    assert out.returncode == 0, out.stderr
    assert "out_size: 64" in out.stdout and "alpha_geo: 16.0" in out.stdout


def test_cli_bad_config_exits_2_naming_key_and_valid_keys():
    out = run_cli("config", "loss.alpah_geo=16")
    assert out.returncode == 2
    assert "loss.alpah_geo" in out.stderr and "loss.alpha_geo" in out.stderr
    out = run_cli("config", "loss.mask=-0.5")
    assert out.returncode == 2 and "loss.mask" in out.stderr and "range" in out.stderr


def test_help_as_console_script_and_module():
    assert run_cli("--help").returncode == 0
    exe = subprocess.run(["frontalab", "--help"], capture_output=True, text=True,
                         env={"PATH": f"{sys.prefix}/bin"}, timeout=120)
    assert exe.returncode == 0 and "config" in exe.stdout


def test_package_does_not_shadow_stdlib_platform():
    """`frontalab.platform` (the alias old registered versions unpickle through) is never the `platform` that
    `import platform` finds once frontalab is imported (as it would be if the package put its own folder on
    sys.path), from the checkout or from a registered model's code folder, which holds the package as it is."""
    import sysconfig

    out = subprocess.run([sys.executable, "-c", "import frontalab, platform; print(platform.__file__)"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert Path(out.stdout.strip()).parent == Path(sysconfig.get_paths()["stdlib"]), out.stdout + out.stderr


SWEEP_FILES = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_is_valid_and_says_what_it_answers(path):
    from frontalab.config import load_sweep

    sweep, trial = load_sweep(path)
    assert path.read_text().startswith(f"# {path.stem}:"), "a comment on top says what the sweep answers"
    assert sweep.name == path.stem and sweep.metric and trial.train.steps > 0


def test_sweep_files_hold_the_issue_search_spaces():
    from frontalab.config import load_sweep

    files = {p.stem: p for p in SWEEP_FILES}
    assert {"quick", "thesis", "ablation", "cole", "cpu_thesis", "cpu_cole", "cpu_ablation"} <= set(files)
    thesis, trial = load_sweep(files["thesis"])
    assert trial.model.out_size == 320 and thesis.scheduler.name == "asha" and thesis.resources.gpu == 0.5
    assert {k: list(v["grid"]) for k, v in thesis.search.items()} == {
        "loss.alpha_geo": [16, 160, 1600], "loss.texture": [0.1, 1, 10], "loss.mask_p": [1, 2],
        "train.g_steps_per_d": [1, 2, 4, 8]}
    for name in ("ablation", "cpu_ablation"):
        arms = load_sweep(files[name])[0].search["arm"]["grid"]
        assert [a["name"] for a in arms] == ["full", "no_adversarial", "no_adversarial_no_mask"]
    quick, trial = load_sweep(files["quick"])
    grid = [len(spec["grid"]) for spec in quick.search.values()]
    assert trial.model.out_size == 128 and quick.num_samples * math.prod(grid) == 6 and quick.scheduler.name == "asha"
    assert trial.train.init_from == "pretrained:thesis" and set(quick.search) == {"loss.texture", "train.g_steps_per_d"}
    assert load_sweep(files["cole"])[1].model.decoder == "cole"
    assert load_sweep(files["cpu_cole"])[1].model.decoder == "cole"
    for name in ("quick", "thesis", "ablation", "cole", "cpu_thesis", "cpu_cole", "cpu_ablation"):
        assert load_sweep(files[name])[0].metric == SELECTION_METRIC  # no sweep ranks by identity alone


def test_pbt_exploits_only_at_checkpoints():
    """PBT copies another trial's latest checkpoint at each perturbation: it must be that moment's."""
    from frontalab.config import load_sweep

    quick = {p.stem: p for p in SWEEP_FILES}["quick"]  # checkpoint every 20
    pbt = ["scheduler.name=pbt", "scheduler.mutations={loss.texture: {loguniform: [0.1, 10]}}"]
    assert load_sweep(quick, [*pbt, "scheduler.perturbation_interval=100"])[0].scheduler.perturbation_interval == 100
    with pytest.raises(ConfigError, match=r"scheduler\.perturbation_interval.*\(75\).*checkpoint_every \(20\)"):
        load_sweep(quick, [*pbt, "scheduler.perturbation_interval=75"])


def test_command_tag_masks_credentials_in_urls(monkeypatch):
    from frontalab.tracking.provenance import command_line

    monkeypatch.setattr(sys, "argv", ["/venv/bin/frontalab", "sweep", "sweeps/quick.yaml",
                                      "services.mlflow_uri=https://alice:s3cr3t@mlflow.example:5000"])
    line = command_line()
    assert line == "frontalab sweep sweeps/quick.yaml 'services.mlflow_uri=https://***@mlflow.example:5000'"


@pytest.mark.parametrize("where", ["override", "yaml", "sweep"])
def test_reading_the_environment_from_a_config_is_refused(where, tmp_path, monkeypatch):
    """Every config value is recorded with the run (params, Tune state, checkpoints): a secret read through
    ${oc.env:...} would be published, so the config is refused naming the key, and the secret is never read."""
    from frontalab.config import load_sweep

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    value = "s3://bucket/${oc.env:AWS_SECRET_ACCESS_KEY}"
    with pytest.raises(ConfigError, match=r"config key '(base\.)?data\.path' reads the environment") as err:
        if where == "override":
            load_config(None, [f"data.path={value}"])
        elif where == "yaml":
            (tmp_path / "c.yaml").write_text(f"data:\n  path: '{value}'\n")
            load_config(tmp_path / "c.yaml")
        else:
            load_sweep("sweeps/quick.yaml", [f"base.data.path={value}"])
    assert "s3cr3t-value" not in str(err.value)


def test_credentials_in_a_config_url_are_refused_and_masked():
    """A URL with user:password@ in the config would be recorded with the run: refused, the password not echoed."""
    with pytest.raises(ConfigError, match=r"config key 'services\.mlflow_uri' carries credentials in a URL") as err:
        load_config(None, ["services.mlflow_uri=https://alice:pa55word@mlflow.example.org"])
    assert "pa55word" not in str(err.value) and "https://***@mlflow.example.org" in str(err.value)
