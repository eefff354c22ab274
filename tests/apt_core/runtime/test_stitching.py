"""Chunk stitching: continuity of position and velocity at chunk boundaries, ensembling, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.runtime.stitching import (
    ChunkStitcher,
    StitchConfig,
    Trajectory,
    hold_trajectory,
    velocities_from_positions,
)

DT = 0.1


def _policy_chunk(t_obs: float, h: int, j: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A 'policy' tracking a sine reference, each chunk with its own offset error (like a VLA)."""
    times = t_obs + DT * np.arange(1, h + 1)
    ref = 0.5 * np.sin(0.8 * times)[:, None] * np.linspace(0.5, 1.0, j)[None]
    return ref + rng.normal(0, noise, size=(1, j))  # a constant offset per chunk: a step at each switch


def _run(method: str, seed: int = 0, n_chunks: int = 12, latency: float = 0.13) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    st = ChunkStitcher(StitchConfig(dt=DT, method=method, blend_steps=4))
    measured = np.zeros(3)
    plans = []
    t = 0.0
    for _ in range(n_chunks):
        chunk = _policy_chunk(t, 16, 3, 0.05, rng)
        st.add_chunk(t, chunk)
        t0 = t + latency  # the chunk is ready (and switched to) after the inference latency
        plans.append(st.stitch(t0, measured))
        t += 0.4  # replan every 4 steps while the current plan executes
    return plans


def _boundary_jumps(plans: list[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity jump at each switch: old plan at t0 vs new plan's first point."""
    dp, dv = [], []
    for old, new in zip(plans[:-1], plans[1:]):
        p_old, v_old = old.sample(new.start)
        dp.append(np.max(np.abs(p_old - new.positions[0])))
        dv.append(np.max(np.abs(v_old - new.velocities[0])))
    return np.array(dp), np.array(dv)


@pytest.mark.parametrize("method", ["rtc", "ensemble+rtc", "ensemble"])
def test_stitched_plans_are_continuous_at_boundaries(method: str) -> None:
    dp, dv = _boundary_jumps(_run(method))
    assert dp.max() < 1e-9, f"{method}: position jump {dp.max()}"
    assert dv.max() < 1e-9, f"{method}: velocity jump {dv.max()}"


def test_raw_chunks_jump_and_stitching_removes_it() -> None:
    dp_raw, _ = _boundary_jumps(_run("none"))
    # the per-chunk offset shows up as a position step at the switch; a controller executes it within
    # one control step, i.e. as a velocity spike of dp / dt
    assert dp_raw.max() > 0.03
    assert dp_raw.max() / DT > 0.3
    dp, _ = _boundary_jumps(_run("ensemble+rtc"))
    assert dp.max() < 1e-3 * dp_raw.max()


def test_no_velocity_spike_inside_blend() -> None:
    """Within a stitched plan the per-step velocity change stays small (no jerk after t0)."""
    for method in ("rtc", "ensemble+rtc"):
        plans = _run(method, seed=3)
        acc = max(
            np.abs(np.diff(p.velocities[:-1], axis=0)).max() / DT for p in plans[1:]
        )  # last point: at rest
        raw = _run("none", seed=3)
        # compare with the velocity spike raw chunks produce at a boundary (position step / dt)
        dp_raw, _ = _boundary_jumps(raw)
        assert acc * DT < dp_raw.max() / DT, method
        # offsets between chunks up to ~0.2 rad corrected over 4 steps need ~6 rad/s^2 (cosine ramp)
        assert acc < 10.0, f"{method}: acceleration {acc} rad/s^2 inside the plan"


def test_ensemble_averages_overlapping_chunks() -> None:
    st = ChunkStitcher(StitchConfig(dt=DT, method="ensemble", ensemble_decay=0.0))
    st.add_chunk(0.0, np.full((20, 2), 1.0))  # targets at 0.1 .. 2.0 s
    st.add_chunk(0.2, np.full((20, 2), 3.0))  # targets at 0.3 .. 2.2 s
    traj = st.stitch(0.5, measured=np.zeros(2))
    # with equal weights the overlap is the mean of 1 and 3 (after the 1-step ramp at t0)
    assert np.allclose(traj.positions[1:4], 2.0)
    # the first chunk fades out over its last steps; beyond its end only the second one remains
    assert np.all(np.diff(traj.positions[5:, 0]) >= -1e-12)
    late = traj.times > 2.05
    assert np.allclose(traj.positions[late], 3.0)


def test_first_point_is_executing_plan_and_blend_reaches_target() -> None:
    st = ChunkStitcher(StitchConfig(dt=DT, method="rtc", blend_steps=3))
    st.set_plan(hold_trajectory(0.0, np.array([0.2, -0.1]), duration=5.0))
    st.add_chunk(0.0, np.tile([1.0, 1.0], (20, 1)))
    traj = st.stitch(0.3)
    assert np.allclose(traj.positions[0], [0.2, -0.1])
    assert np.allclose(traj.positions[3:], 1.0)
    assert np.all(np.diff(traj.positions[:4, 0]) > 0)  # monotone ramp


def test_trajectory_validation_and_sampling() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Trajectory(np.array([0.0, 0.0]), np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="shapes"):
        Trajectory(np.array([0.0, 1.0]), np.zeros((2, 1)), np.zeros((3, 1)))
    p = np.array([[0.0], [1.0], [2.0]])
    tr = Trajectory(np.array([0.0, 1.0, 2.0]), p, velocities_from_positions(p, 1.0, v_start=np.ones(1)))
    pos, vel = tr.sample(0.5)
    assert np.isclose(pos[0], 0.5) and np.isclose(vel[0], 1.0)
    pos, vel = tr.sample(3.0)
    assert pos[0] == 2.0 and vel[0] == 0.0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="method"):
        StitchConfig(dt=0.1, method="magic")
    with pytest.raises(ValueError, match="dt"):
        StitchConfig(dt=0.0)
    with pytest.raises(ValueError, match="chunk must be"):
        ChunkStitcher(StitchConfig(dt=0.1)).add_chunk(0.0, np.zeros(3))
