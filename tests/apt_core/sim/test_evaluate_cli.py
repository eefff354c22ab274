"""`python -m apt_core.sim.evaluate`: a checkpoint is evaluated at the sampling noise the policy
node serves unless told otherwise, and the scripted expert refuses a noise it does not have."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import apt_core.model.runner as runner_mod
from apt_core.sim import evaluate

ROOT = Path(__file__).resolve().parents[3]


class _Loaded(Exception):
    pass


def _noise_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> float:
    """The noise scale the CLI loads the checkpoint with (the loader is stopped right there)."""
    seen = {}

    def load_runner(checkpoint, noise_scale=1.0, **kw):
        seen["noise"] = noise_scale
        raise _Loaded

    monkeypatch.setattr(runner_mod, "load_runner", load_runner)
    with pytest.raises(_Loaded):
        evaluate.main(["--checkpoint", "some/policy", *argv])
    return seen["noise"]


def test_default_noise_is_what_the_node_serves(monkeypatch, tmp_path):
    from apt_policy.params import POLICY_PARAMS  # the node's parameter table (no rclpy in it)

    node_default = next(p.default for p in POLICY_PARAMS if p.name == "noise_scale")
    launched = yaml.safe_load((ROOT / "ros2_ws/src/apt_bringup/config/policy.yaml").read_text())
    assert _noise_of([], monkeypatch) == node_default == evaluate.SERVED_NOISE_SCALE
    assert launched["apt_policy"]["ros__parameters"]["noise_scale"] == node_default
    assert _noise_of(["--noise-scale", "1"], monkeypatch) == 1.0  # as trained, when asked


def test_bad_noise_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", "some/policy", "--noise-scale", "-1"])
    assert "--noise-scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--noise-scale", "0"])  # the scripted expert samples no noise
    assert "needs --checkpoint" in capsys.readouterr().err
