"""Config composition and validation, through the library and through the CLI (exit status 2)."""

import subprocess
import sys

import pytest

from frontalab.config import ConfigError, config_hash, flatten, load_config


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
    out = subprocess.run([sys.executable, "-c", "import frontalab, platform; print(platform.system())"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "Linux"
