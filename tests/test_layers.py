"""The package's import graph: no cycles, function-level imports included (tools/import_cycles.py).
The layers themselves are import-linter's contracts in pyproject.toml (`make test` runs `lint-imports`)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycles():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "import_cycles.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no import cycles" in out.stdout


def test_every_namespaced_tag_is_spelled_only_in_naming():
    """A tag of ours (``frontalab.…``, ``ray.…``) or of MLflow's (``mlflow.…``) is written as a literal only in
    frontalab/naming.py; everything else, tools included, uses its name there."""
    from frontalab import naming

    tags = {value for name, value in vars(naming).items() if name.endswith("_TAG") and isinstance(value, str)
            and value.startswith(("frontalab.", "mlflow.", "ray."))}
    assert len(tags) >= 10
    # As a string, or in an MLflow filter (tags.`…`, tags.…). Docs may name one: `frontalab.sweep` is a module too.
    spelled = [f"{path.relative_to(ROOT)}: {tag}" for path in [*(ROOT / "frontalab").rglob("*.py"), *(ROOT / "tools").glob("*.py")]
               if path.name != "naming.py" for tag in tags
               if re.search(rf"""["']{re.escape(tag)}["']|tags\.`?{re.escape(tag)}""", path.read_text())]
    assert not spelled, spelled
