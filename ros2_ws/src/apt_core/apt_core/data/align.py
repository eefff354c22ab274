"""Resample time series to the control rate with an explicit rule (pure numpy, no ROS).

All times are int64 nanoseconds, so a tick at `t0 + k * dt` matches a message stamped exactly
then (no float rounding). For a tick t and a stream of stamps s (strictly increasing):

- "asof": the latest message with s <= t, if it is at most `max_age` old; else the tick is
  dropped (the stream stalled). Default max_age = 2 * dt.
- "hold": the latest message with s <= t, however old (zero-order hold). Only ticks before the
  stream's first message are dropped.
- "drop": the message nearest to t within +-dt/2 (ties go to the earlier one); ticks without one
  are dropped. This is approximate-time sync: it may use a message up to dt/2 after t.

Commanded action at tick t (action source "command"): the latest JointTrajectory as-of t (a command
stays in force until the next one replaces it, as in JointTrajectoryController), evaluated at t + dt
by linear interpolation between its points (absolute time = start + time_from_start), clamped to
its first / last point outside their span. "next_state": the joint state aligned (same rule) at t + dt.
"ee_pose": the PoseStamped aligned (same rule) at t + dt as a 10-D vector (xyz, the first two
columns of the rotation matrix, the contract's gripper joint at t + dt or 0), the layout of
`apt_core.runtime.ik.pose10_to_matrix`.
"""

from __future__ import annotations

import numpy as np

ALIGN_RULES = ("asof", "hold", "drop")
INVALID = -1


def make_ticks(first_ns: int, last_ns: int, dt_ns: int) -> np.ndarray:
    """Ticks first, first + dt, ... up to and including last (empty if last < first)."""
    if last_ns < first_ns:
        return np.zeros(0, np.int64)
    n = (last_ns - first_ns) // dt_ns + 1
    return first_ns + np.arange(n, dtype=np.int64) * dt_ns


def align(
    ticks: np.ndarray, stamps: np.ndarray, rule: str, dt_ns: int, max_age_ns: int | None = None
) -> np.ndarray:
    """Index into `stamps` for each tick under `rule`, or INVALID (-1) where the tick has no sample."""
    if rule not in ALIGN_RULES:
        raise ValueError(f"alignment rule {rule!r} not one of {ALIGN_RULES}")
    ticks = np.asarray(ticks, np.int64)
    stamps = np.asarray(stamps, np.int64)
    if stamps.size == 0:
        return np.full(ticks.shape, INVALID, np.int64)
    if rule == "drop":
        right = np.searchsorted(stamps, ticks, side="left")  # first stamp >= t
        left = right - 1
        r = np.clip(right, 0, stamps.size - 1)
        lft = np.clip(left, 0, stamps.size - 1)
        d_right = np.where(right < stamps.size, stamps[r] - ticks, np.iinfo(np.int64).max)
        d_left = np.where(left >= 0, ticks - stamps[lft], np.iinfo(np.int64).max)
        idx = np.where(d_left <= d_right, lft, r)
        dist = np.minimum(d_left, d_right)
        return np.where(2 * dist <= dt_ns, idx, INVALID)
    idx = np.searchsorted(stamps, ticks, side="right") - 1
    valid = idx >= 0
    if rule == "asof":
        max_age = 2 * dt_ns if max_age_ns is None else max_age_ns
        age = ticks - stamps[np.clip(idx, 0, None)]
        valid &= age <= max_age
    return np.where(valid, idx, INVALID)


def interpolate_trajectory(tau_ns: int, start_ns: int, tfs_ns: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Position (J,) of a trajectory at absolute time tau, linear between points, clamped at the ends."""
    times = (start_ns + tfs_ns).astype(np.float64)
    tau = float(tau_ns)
    if tau <= times[0]:
        return pos[0].copy()
    if tau >= times[-1]:
        return pos[-1].copy()
    k = int(np.searchsorted(times, tau, side="right"))  # times[k-1] <= tau < times[k]
    w = (tau - times[k - 1]) / (times[k] - times[k - 1])
    return (1.0 - w) * pos[k - 1] + w * pos[k]


def command_targets(
    ticks: np.ndarray, dt_ns: int, traj_t: np.ndarray, trajectories: list
) -> tuple[np.ndarray, np.ndarray]:
    """(targets (T, J), valid (T,)) from the latest trajectory as-of each tick, evaluated at t + dt.

    `trajectories` are objects with .start, .tfs, .pos (see bag_reader.Trajectory), sorted by traj_t.
    """
    idx = np.searchsorted(np.asarray(traj_t, np.int64), ticks, side="right") - 1
    J = trajectories[0].pos.shape[1] if trajectories else 0
    out = np.zeros((len(ticks), J), np.float64)
    for i, (t, k) in enumerate(zip(ticks, idx)):
        if k >= 0:
            tr = trajectories[k]
            out[i] = interpolate_trajectory(int(t) + dt_ns, tr.start, tr.tfs, tr.pos)
    return out, idx >= 0


def instruction_per_tick(ticks: np.ndarray, instr: list[tuple[int, str]]) -> list[str]:
    """The instruction in force at each tick (latest non-empty String as-of t, by receive time).

    Ticks before the first instruction take the first one: recorders usually publish the
    instruction just after the first frames, and those frames belong to the same task.
    """
    items = [(t, s) for t, s in instr if s]
    if not items:
        return [""] * len(ticks)
    times = np.asarray([t for t, _ in items], np.int64)
    idx = np.clip(np.searchsorted(times, ticks, side="right") - 1, 0, None)
    return [items[int(i)][1] for i in idx]


EE_ACTION_NAMES = ("x", "y", "z", "r00", "r10", "r20", "r01", "r11", "r21", "gripper")


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions (x, y, z, w) -> (N, 3, 3) rotation matrices."""
    x, y, z, w = (q[:, i] for i in range(4))
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def pose_to_action10(pose: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """(N, 7) poses (xyz + quaternion xyzw) and (N,) gripper -> (N, 10) (xyz, R[:, 0], R[:, 1], gripper)."""
    r = quat_to_matrix(pose[:, 3:7])  # (N, 3, 3)
    return np.concatenate([pose[:, :3], r[:, :, 0], r[:, :, 1], np.asarray(gripper)[:, None]], axis=1)
