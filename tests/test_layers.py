"""The package's import graph: no cycles, function-level imports included (tools/import_cycles.py).
The layers themselves are import-linter's contracts in pyproject.toml (`make test` runs `lint-imports`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycles():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "import_cycles.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no import cycles" in out.stdout
