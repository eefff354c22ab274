"""DART-style recording noise: an OU drift beneath the controller moves the real arm, not the commands."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.sim.disturbance import JointDisturbance
from apt_core.sim.env import HOME, TabletopEnv
from apt_core.sim.evaluate import run_episode
from apt_core.sim.expert import ScriptedExpert


def test_ou_offsets_start_at_zero_are_seeded_and_have_the_asked_spread() -> None:
    d = JointDisturbance(0.05, tau=0.5, dt=0.1)
    d.reset(3)
    assert np.all(d.at(0.0) == 0.0) and np.all(d.at(0.099) == 0.0)  # zero until the first period ends
    a = np.array([d.at(0.1 * k) for k in range(1, 20001)])
    assert not np.all(a[0] == 0.0)
    np.testing.assert_allclose(a.std(axis=0), 0.05, rtol=0.1)  # stationary std = std, every joint
    # correlated over tau (smooth drift, not white noise): lag-1 correlation exp(-dt/tau) = 0.82
    lag1 = np.mean([np.corrcoef(a[:-1, j], a[1:, j])[0, 1] for j in range(6)])
    assert abs(lag1 - np.exp(-0.2)) < 0.03
    d.reset(3)
    again = np.array([d.at(0.1 * k) for k in range(1, 21)])
    np.testing.assert_array_equal(again, a[:20])  # same seed, same offsets
    d.reset(4)
    assert not np.allclose(d.at(1.0), a[9])
    assert np.array_equal(d.at(1.05), d.at(1.0))  # held within a control period


@pytest.mark.parametrize(
    ("std", "tau", "match"),
    [(-0.01, 0.5, "std"), (0.5, 0.5, "std"), (float("nan"), 0.5, "std"), (0.05, 0.0, "tau")],
)
def test_bad_disturbance_settings_are_refused(std: float, tau: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JointDisturbance(std, tau=tau)
    if match == "std":
        with pytest.raises(ValueError, match=match):
            TabletopEnv(render=False, disturbance=std)


def test_disturbed_arm_leaves_a_held_setpoint_while_the_command_stays_clean() -> None:
    def hold(std: float) -> tuple[np.ndarray, np.ndarray]:
        env = TabletopEnv(render=False, disturbance=std)
        env.reset(5)
        qs = []
        for _ in range(30):  # 3 s holding HOME
            env.step(HOME)
            qs.append(env.joint_positions())
        return np.array(qs), env._target

    clean, clean_target = hold(0.0)
    moved, target = hold(0.05)
    np.testing.assert_array_equal(target, clean_target)  # the command itself is untouched
    assert np.abs(clean[:, :6] - HOME[:6]).max() < 0.01  # without noise the arm holds
    dev = np.abs(moved[:, :6] - HOME[:6])
    assert dev.max() > 0.05 and dev.max() < 0.3  # physically pushed off, by about the asked spread
    np.testing.assert_allclose(moved[:, 6], clean[:, 6], atol=1e-3)  # the gripper is never disturbed
    again, _ = hold(0.05)
    np.testing.assert_allclose(again, moved, atol=1e-9)  # reproducible from the scene seed


def test_expert_still_completes_tasks_under_recording_noise() -> None:
    env = TabletopEnv(render=False, disturbance=0.03)
    expert = ScriptedExpert(env)
    results = [run_episode(env, expert, seed, "in_distribution", None, 8).success for seed in (0, 1, 2)]
    assert all(results), results
