"""scripts/setup.sh: one-line errors for missing prerequisites, and a fast no-op second run."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"


def run_setup(path_dirs: list[Path], **env: str) -> subprocess.CompletedProcess:
    """Run setup.sh with PATH limited to `path_dirs`, so the tools it looks for can be hidden."""
    full_env = {"PATH": os.pathsep.join(str(p) for p in path_dirs), "HOME": os.environ.get("HOME", "/tmp")}
    full_env.update(env)
    return subprocess.run([BASH, str(SETUP)], env=full_env, capture_output=True, text=True, timeout=60)


def link_tools(bin_dir: Path, names: dict[str, str]) -> None:
    bin_dir.mkdir(exist_ok=True)
    for name, target in names.items():
        (bin_dir / name).symlink_to(target)


def python311() -> str:
    assert sys.version_info[:2] == (3, 11), "the test suite itself runs on Python 3.11"
    # The venv's interpreter is 3.11 and has venv + ensurepip available through its base.
    return sys.executable


def fake_python(bin_dir: Path, version: str) -> None:
    """A `python3.11` stand-in that reports another version (exit 1 on the version check)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "python3.11"
    script.write_text(f"#!{BASH}\n[ \"$1\" = -V ] && echo 'Python {version}'\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("setup: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_python_is_one_line_error(tmp_path):
    proc = run_setup([tmp_path / "empty"], APT_PYTHON="python3.11")
    assert_one_line_error(proc, "'python3.11' not found", "install Python 3.11")


def test_wrong_python_version_is_one_line_error(tmp_path):
    fake_python(tmp_path / "bin", "3.10.12")
    proc = run_setup([tmp_path / "bin"])
    assert_one_line_error(proc, "is not Python 3.11")


def test_missing_cmake_is_one_line_error(tmp_path):
    link_tools(tmp_path / "bin", {"python3.11": python311()})
    proc = run_setup([tmp_path / "bin"])
    assert_one_line_error(proc, "cmake not found", "apt install cmake")


def test_missing_compiler_is_one_line_error(tmp_path):
    cmake = shutil.which("cmake")
    assert cmake, "cmake is a prerequisite of this repository"
    link_tools(tmp_path / "bin", {"python3.11": python311(), "cmake": cmake})
    proc = run_setup([tmp_path / "bin"])
    assert_one_line_error(proc, "g++ not found", "apt install g++")


def test_second_run_is_a_no_op():
    """After the README's setup has run, running it again changes nothing and says so."""
    assert (ROOT / ".venv" / ".apt-stamps").is_dir(), "run scripts/setup.sh (or scripts/test.sh) first"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    proc = subprocess.run([BASH, str(SETUP)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("setup: ") and "ready" not in ln]
    assert len(lines) == 3 and all(ln.endswith("up to date") for ln in lines), proc.stdout
