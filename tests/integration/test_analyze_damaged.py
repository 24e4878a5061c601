"""The fuzz cases of tests/analysis/test_fuzz.py, one per kind of damage, through a real
``callspan analyze`` process with worker processes: what the user sees is an exit status of 0 or
2, one line per error and no traceback, also when the work runs in workers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis.otlp_fixtures import SRC
from tests.analysis.test_fuzz import CONTROLS, MUTATIONS, SEED, base_documents, check_numbers


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_damaged_input_in_a_real_process(name: str, tmp_path: Path) -> None:
    rng = random.Random(SEED * 7 + list(MUTATIONS).index(name))
    paths = MUTATIONS[name](rng, base_documents(rng), tmp_path)
    fmt = "text" if name == "hostile names" else "json"
    result = subprocess.run(
        [sys.executable, "-m", "callspan", "analyze", *paths, "--report", "all", "--format", fmt, "--lookup-ns", "50",
         "--jobs", "2"], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=SRC), check=False)
    context = f"{name}: exit {result.returncode}\n{result.stderr[:2000]}"
    assert result.returncode in (0, 2), context
    assert "Traceback" not in result.stderr and not CONTROLS.search(result.stderr), context
    if result.returncode == 2:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("callspan: error: "), context
    elif fmt == "text":
        assert not CONTROLS.search(result.stdout), context
    else:
        check_numbers(json.loads(result.stdout))
