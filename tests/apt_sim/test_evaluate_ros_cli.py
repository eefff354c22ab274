"""apt-eval-ros's command line: a checkpoint is loaded at the noise the policy node serves, like
`python -m apt_core.sim.evaluate` (tests/apt_core/sim/test_evaluate_cli.py)."""

from __future__ import annotations

import pytest

import apt_core.model.runner as runner_mod
from apt_core.sim import evaluate


class _Loaded(Exception):
    pass


def test_ros_evaluation_uses_the_same_default(monkeypatch, capsys):
    """apt-eval-ros loads a checkpoint at the served noise too, and names a misplaced --noise-scale."""
    from apt_sim import evaluate_ros

    seen = {}

    def fake_evaluate_ros(factory, *a, **k):
        seen["noise"] = factory(None).noise  # build the policy as a real run would, then stop
        raise _Loaded

    monkeypatch.setattr(
        runner_mod, "load_runner", lambda ckpt, noise_scale=1.0, **kw: type("P", (), {"noise": noise_scale})
    )
    monkeypatch.setattr(evaluate_ros, "evaluate_ros", fake_evaluate_ros)
    with pytest.raises(_Loaded):
        evaluate_ros.main(["--checkpoint", "some/policy"])
    assert seen["noise"] == evaluate.SERVED_NOISE_SCALE
    with pytest.raises(SystemExit):
        evaluate_ros.main(["--noise-scale", "1"])
    assert "needs --checkpoint" in capsys.readouterr().err
