"""The console scripts of setup.py exit 0 when their work succeeds: a console script exits with its
function's return value, and anything but None or 0 (a Path, say) is exit status 1."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = re.findall(r'"(apt-[a-z0-9-]+) = ([\w.]+):(\w+)"', (ROOT / "training" / "setup.py").read_text())
# per module: the function that does the work (replaced here by one that returns its output's path)
WORK = {"apt_training.compare": "run", "apt_training.pipeline": "run"}


def test_the_entry_points_are_the_four_clis() -> None:
    assert {e[0] for e in ENTRIES} == {"apt-train-stage1", "apt-train-stage2", "apt-compare", "apt-pipeline"}


@pytest.mark.parametrize(("name", "module", "func"), ENTRIES)
def test_a_successful_run_exits_with_status_0(name, module, func, tmp_path, monkeypatch) -> None:
    mod = importlib.import_module(module)
    ran = []
    monkeypatch.setattr(mod, WORK.get(module, "main"), lambda cfg: ran.append(cfg) or tmp_path / "out")
    argv = ["--dataset", str(tmp_path)] if name != "apt-pipeline" else []
    with pytest.raises(SystemExit) as e:
        sys.exit(getattr(mod, func)(argv))  # what the console script's wrapper does
    assert ran and e.value.code in (None, 0), name
