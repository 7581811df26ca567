"""CPU speed defaults (docs/speed.md): OpenMP's passive wait set by the CLI before torch loads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
PROBE = "import os, sys; import dmlkit.cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "PYTHONPATH": SRC, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cli_sets_passive_wait_before_torch_loads_and_keeps_a_users_choice():
    assert _probe() == "PASSIVE False"  # set, and torch not yet imported when it was
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"
