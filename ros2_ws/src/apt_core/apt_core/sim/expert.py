"""ScriptedExpert: an IK-based demonstrator that solves every task family, as a ChunkPolicy.

It reads privileged state (object poses) from the TabletopEnv it is given, plans a Cartesian
waypoint path for the current subtask (approach, descend, grasp, lift, carry, place, release,
retreat; or approach behind the object with the gripper open, descend, shut it, push, retreat),
converts it to joint targets at the control rate with IK, and serves chunks of that plan by time:
`predict(obs)` returns the plan at obs.stamp + dt * (1..H). When a plan ends it checks the
subtask's success and moves on to the next subtask (chains) or re-plans from the new state (a
slipped grasp, a push that fell short).

The instruction decides the task: if it equals the env's task instruction the env's subtasks are
used, otherwise it is parsed with the task grammar (so the expert also follows instructions sent
over ROS).
"""

from __future__ import annotations

import math

import numpy as np

from apt_core.sim import tasks as T
from apt_core.sim.env import GRIPPER_MAX, GRIPPER_SHUT, JOINT_NAMES, TabletopEnv
from apt_core.sim.ik import ArmIK, top_down_rotation
from apt_core.types import Observation

SAFE_Z = 0.15  # travel height of the TCP [m]
SPEED = 0.35  # Cartesian travel speed [m/s]
SLOW = 0.12  # descend / push speed [m/s]
MAX_REPLANS = 3  # attempts per subtask before giving up (then holds)
PUSH_BACK = 0.028 + 0.012 + 0.015  # a push starts this far behind the object's centre: cube half
# diagonal + pad half depth + clearance [m]
PUSH_Z = 0.025  # TCP height of a push stroke [m]
PUSH_RETREAT = 0.03  # after the stroke the paddle backs off this far along the push line, then rises [m]
PUSH_SHUT = 0.4  # time to shut the gripper at the stroke's start [s]


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _min_jerk(s: np.ndarray) -> np.ndarray:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def _trained_with(meta: dict, field: str) -> bool:
    return float((meta.get("train_config") or {}).get(field, 0.0) or 0.0) > 0


def trained_with_push_contact(meta: dict) -> bool:
    """Whether a checkpoint's goal targets had push-contact key frames (`--goal-push-travel` > 0),
    read from its meta.json's training config; the oracle then gives the goal it was trained on."""
    return _trained_with(meta, "goal_push_travel")


def trained_with_push_end(meta: dict) -> bool:
    """Whether a checkpoint's goal targets had push-end key frames (`--goal-push-end` > 0), read
    as `trained_with_push_contact`."""
    return _trained_with(meta, "goal_push_end")


def oracle_goal(env: TabletopEnv, push_contact: bool = False, push_end: bool = False) -> np.ndarray:
    """Where the tool should be at the next gripper event of the current subtask, from privileged
    state: the goal that `apt_core.data.goals` reads off the scripted demonstrations. Grasping
    families: the grasp point until the named object is held, then the release point above the
    target. Push: where the stroke starts behind the object while the gripper is open (the expert
    shuts it there) and the object has not moved 5 mm from where the scene put it, then where the
    push ends. With `push_contact` (a policy trained with `--goal-push-travel` on demonstrations
    whose pushes ran shut from the first frame, before the expert opened to the stroke's start),
    the stroke's start also while the shut tool is farther than 3 cm from it. With `push_end` (a
    policy trained with `--goal-push-end`), where the push ends is the stroke's end at its height,
    not the scripted push's last point after it backs off and rises. (3,) in the base
    frame [m]; a diagnostic for policies trained with a goal input (`python -m
    apt_core.sim.evaluate --oracle-goal`)."""
    if env.task is None:
        raise RuntimeError("oracle_goal needs a reset environment")
    sub = env.current_subtask()
    obj, tgt = env.body_position(sub.obj), env.body_position(sub.target)
    if sub.family in ("pick_place", "stack"):
        if sub.obj not in env.held_objects():
            return np.array([obj[0], obj[1], max(obj[2], 0.022)])
        z = T.BOWL_RIM_HEIGHT + 0.045 if sub.family == "pick_place" else tgt[2] + 2 * T.CUBE_HALF + 0.008
        return np.array([tgt[0], tgt[1], z])
    u, start, end = push_stroke(obj, tgt)
    contact = np.array([*start, PUSH_Z])
    x0, y0, _ = env.layout.poses[sub.obj]
    if float(np.linalg.norm(obj[:2] - (x0, y0))) <= 0.005:  # not moved yet
        if env.joint_positions()[6] > GRIPPER_SHUT:  # still open
            return contact
        if push_contact and float(np.linalg.norm(env.tcp_position() - contact)) > 0.03:
            return contact
    if push_end:
        return np.array([end[0], end[1], PUSH_Z])
    last = end - u * PUSH_RETREAT  # the scripted push's last point
    return np.array([last[0], last[1], SAFE_Z])


def push_stroke(obj: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scripted push of the object at `obj` to the zone at `tgt` (base frame, only x, y read):
    (unit push direction, stroke start behind the object, stroke end), the last two (2,) [m]. The
    stroke goes through the object's centre and ends where the cube's centre is on the zone's."""
    d = tgt[:2] - obj[:2]
    u = d / max(float(np.linalg.norm(d)), 1e-6)
    return u, obj[:2] - u * PUSH_BACK, tgt[:2] - u * (T.CUBE_HALF + 0.012 - 0.004)


class ScriptedExpert:
    """Privileged-state expert for TabletopEnv (implements apt_core.types.ChunkPolicy)."""

    joint_names: tuple[str, ...] = JOINT_NAMES

    def __init__(self, env: TabletopEnv, chunk_length: int | None = None) -> None:
        self.env = env
        self.chunk_length = int(chunk_length or env.contract.chunk_length)
        self.rate_hz = float(env.contract.rate_hz)
        self.dt = 1.0 / self.rate_hz
        self.ik = ArmIK(env.model)
        self.reset()

    def reset(self) -> None:
        self._plan: np.ndarray | None = None  # (T, 7) joint targets at plan_t0 + dt * (1..T)
        self._plan_t0 = 0.0
        self._sub = 0
        self._attempts = 0
        self._instruction: str | None = None
        self._subtasks: tuple[T.Subtask, ...] = ()

    # ----- ChunkPolicy -----------------------------------------------------------------------------
    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        """(H, 7) absolute joint targets for obs.stamp + dt * (1..H).

        A new instruction mid-plan (the next step of a chain, given when the simulator counts the
        previous one done: right at the release) waits until the plan in hand has ended, so the
        arm retreats from what it just placed before it sets off, as with the whole chain's words."""
        t = float(obs.stamp)
        q = np.asarray(obs.joint_positions, dtype=np.float64)
        ended = self._plan is None or t >= self._plan_t0 + self.dt * (len(self._plan) - 0.5)
        if instruction != self._instruction and ended:
            self._set_instruction(instruction)
        if ended:
            self._next_plan(q, t)
        k = np.round((t - self._plan_t0) / self.dt).astype(int) + np.arange(1, self.chunk_length + 1)
        return self._plan[np.clip(k - 1, 0, len(self._plan) - 1)].copy()

    # ----- planning --------------------------------------------------------------------------------
    def _set_instruction(self, instruction: str) -> None:
        task = self.env.task
        first = 0
        if task is not None and instruction == task.instruction:
            self._subtasks = task.subtasks
            first = self.env.subtask_progress()  # a policy start may have done a chain's first steps
        else:
            self._subtasks = T.parse_instruction(instruction)
        self._instruction = instruction
        self._sub, self._attempts, self._plan = first, 0, None

    def _next_plan(self, q: np.ndarray, t: float) -> None:
        state = self.env.scene_state()
        while self._sub < len(self._subtasks) and self._plan is not None:
            if T.subtask_success(self._subtasks[self._sub], state):
                self._sub, self._attempts = self._sub + 1, 0
            else:
                break
        if self._sub >= len(self._subtasks) or self._attempts >= MAX_REPLANS:
            self._plan = np.repeat(q[None], self.chunk_length, axis=0)  # done (or given up): hold
            self._plan[:, 6] = GRIPPER_MAX if self._sub >= len(self._subtasks) else q[6]
        else:
            self._plan = self._plan_subtask(self._subtasks[self._sub], q)
            self._attempts += 1
        self._plan_t0 = t

    def _grasp_yaw(self, name: str, ref: float) -> float:
        """Tool yaw that aligns the fingers with the object's faces, closest to `ref`."""
        step = math.pi / 2  # cube faces repeat every 90 deg; a cylinder can take any yaw
        base = self.env.body_yaw(name) if T.OBJECTS[name].kind == "cube" else ref
        k = round(_wrap(ref - base) / step)
        return _wrap(base + k * step)

    def _plan_subtask(self, sub: T.Subtask, q: np.ndarray) -> np.ndarray:
        env = self.env
        p0, r0 = self.ik.fk(q[:6])
        yaw0 = math.atan2(r0[1, 0], r0[0, 0])
        obj = env.body_position(sub.obj)
        tgt = env.body_position(sub.target)
        g_open, g_closed = GRIPPER_MAX, 0.0
        # Each waypoint: (tcp position, tool yaw, gripper opening, speed [m/s] or fixed duration [s]).
        wps: list[tuple[np.ndarray, float, float, float]] = []
        if sub.family in ("pick_place", "stack"):
            lifted = obj[2] > T.ENTITIES[sub.obj].half_height + 0.01
            if lifted and sub.obj in env.held_objects():  # already in hand (a policy start): lift
                # it straight up and carry it, rather than drop it and grasp again
                gyaw = yaw0
                wps.append((np.array([p0[0], p0[1], max(SAFE_Z, p0[2])]), gyaw, g_closed, SLOW))
            else:
                gyaw = self._grasp_yaw(sub.obj, yaw0)
                grasp_z = max(obj[2], 0.022)
                above = np.array([obj[0], obj[1], SAFE_Z])
                wps += [
                    (above, gyaw, g_open, SPEED),
                    (np.array([obj[0], obj[1], grasp_z]), gyaw, g_open, SLOW),
                    (np.array([obj[0], obj[1], grasp_z]), gyaw, g_closed, -0.6),
                    (above, gyaw, g_closed, SLOW),
                ]
            if sub.family == "pick_place":
                place_z = T.BOWL_RIM_HEIGHT + 0.045
                pyaw = gyaw
            else:
                place_z = tgt[2] + 2 * T.CUBE_HALF + 0.008
                pyaw = gyaw + _wrap(self._grasp_yaw(sub.target, gyaw) - gyaw)
            carry = np.array([tgt[0], tgt[1], SAFE_Z])
            place = np.array([tgt[0], tgt[1], place_z])
            wps += [
                (carry, pyaw, g_closed, SPEED),
                (place, pyaw, g_closed, SLOW),
                (place, pyaw, g_open, -0.5),
                (np.array([tgt[0], tgt[1], SAFE_Z + 0.03]), pyaw, g_open, SLOW),
            ]
        else:  # push: open to the stroke's start, shut there (the fingers become a paddle), then
            # push through the object's centre to the zone. Shutting at the start, like a grasp,
            # makes the gripper say the phase: open, go to the object; shut, go to the target.
            u, start, end = push_stroke(obj, tgt)
            pyaw = _wrap(math.atan2(u[1], u[0]) + math.pi / 2)  # finger axis across the push line
            if abs(_wrap(pyaw - yaw0)) > math.pi / 2:
                pyaw = _wrap(pyaw + math.pi)
            z = PUSH_Z
            wps += [
                (np.array([*start, SAFE_Z]), pyaw, g_open, SPEED),
                (np.array([*start, z]), pyaw, g_open, SLOW),
                (np.array([*start, z]), pyaw, g_closed, -PUSH_SHUT),
                (np.array([*end, z]), pyaw, g_closed, SLOW * 0.8),
                (np.array([*(end - u * PUSH_RETREAT), z]), pyaw, g_closed, SLOW),
                (np.array([*(end - u * PUSH_RETREAT), SAFE_Z]), pyaw, g_closed, SPEED),
            ]
        return self._to_joints(q, p0, yaw0, wps)

    def _to_joints(
        self, q: np.ndarray, p0: np.ndarray, yaw0: float, wps: list[tuple[np.ndarray, float, float, float]]
    ) -> np.ndarray:
        out = []
        qa = q[:6].copy()
        pos, yaw, grip = p0, yaw0, float(q[6])
        for p1, yaw1, g1, speed in wps:
            dyaw = _wrap(yaw1 - yaw)
            dist = float(np.linalg.norm(p1 - pos))
            dur = -speed if speed < 0 else max(dist / speed, abs(dyaw) / 1.5, 0.3)
            n = max(1, math.ceil(dur / self.dt))
            s = _min_jerk(np.arange(1, n + 1) / n)
            for si in s:
                qa, _ = self.ik.solve(pos + si * (p1 - pos), top_down_rotation(yaw + si * dyaw), qa, iters=30)
                # Gripper: move linearly over the segment (closing while holding still).
                out.append(np.concatenate([qa, [grip + si * (g1 - grip) if speed < 0 else g1]]))
            pos, yaw, grip = p1, yaw + dyaw, g1
        # Hold the last point for a few steps so the arm settles before the success check.
        out += [out[-1]] * 3
        return np.asarray(out)
