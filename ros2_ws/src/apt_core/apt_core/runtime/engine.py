"""The policy runtime loop without ROS: observations in, safe stitched trajectories out.

`PolicyRuntime` owns the latest observation, the task queue, the stitcher, the safety filter and the
completion detector. A ROS node (apt_policy.policy_node) feeds it messages converted to arrays and
calls `step()` from a dedicated worker thread; everything it must publish comes back in a
`StepResult`. Because `step()` runs the model outside the lock while the controller executes the
previous plan, inference is asynchronous: the next chunk is computed while the current one executes.

    inputs (any thread)        worker thread: step(now)
    on_joint_state ─┐          snapshot obs (lock) -> stale? -> HOLD (once) + reason
    on_image ───────┼─ lock -> predict (no lock) -> [IK] -> finite? -> stitch -> safety -> PLAN
    on_success ─────┘          completion -> next subtask / next task
    instruct / stop / cancel
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from apt_core.runtime.ik import IKAdapter, IKError, ee_chunk_to_joints
from apt_core.runtime.safety import SafetyFilter, SafetyViolation, StartJumpViolation, Watchdog
from apt_core.runtime.stitching import ChunkStitcher, StitchConfig, Trajectory, hold_trajectory
from apt_core.runtime.tasks import CompletionConfig, CompletionDetector, InstructionError, Task, TaskQueue
from apt_core.types import ChunkPolicy, Observation

# States (same numbers as apt_msgs/PolicyStatus.STATE_*; the core does not import the messages).
IDLE, RUNNING, HOLDING, FAULT, STARTING = 0, 1, 2, 3, 4
# Phases (apt_msgs/action/Execute feedback PHASE_*).
PHASE_QUEUED, PHASE_OBSERVING, PHASE_EXECUTING, PHASE_HOLDING, PHASE_SUCCEEDED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class RuntimeConfig:
    dt: float  # chunk step period [s] (1 / contract rate_hz)
    chunk_length: int  # H: steps per predicted chunk (contract)
    replan_steps: int = 4  # compute a new chunk every this many steps (< chunk_length)
    lead_time_s: float = 0.02  # a plan starts this long after it is built (publish + controller pickup) [s]
    max_skew_s: float = 0.1  # max time between the camera image and the joint state of one observation [s]
    joint_state_timeout_s: float = 0.25  # watchdog: joint states older than this -> hold [s]
    image_timeout_s: float = 0.5  # watchdog: camera images older than this -> hold [s]
    task_timeout_s: float = 120.0  # default per-task timeout, 0 = none [s]
    action_space: str = "joint_position"  # contract action space: joint_position | joint_delta | ee_pose
    gripper_joint: str = ""  # joint that takes the gripper value of ee_pose actions ("" = none)
    stitch: StitchConfig | None = None  # None: StitchConfig(dt) with defaults
    completion: CompletionConfig = field(default_factory=CompletionConfig)  # subtask completion rules

    def __post_init__(self) -> None:
        if not self.dt > 0:
            raise ValueError(f"RuntimeConfig.dt must be > 0, got {self.dt}")
        if self.chunk_length < 1:
            raise ValueError(f"RuntimeConfig.chunk_length must be >= 1, got {self.chunk_length}")
        if not 1 <= self.replan_steps <= self.chunk_length:
            raise ValueError(
                f"RuntimeConfig.replan_steps must be in 1..chunk_length ({self.chunk_length}), got {self.replan_steps}"
            )
        for name in ("max_skew_s", "joint_state_timeout_s", "image_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RuntimeConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.lead_time_s < 0 or self.task_timeout_s < 0:
            raise ValueError("RuntimeConfig.lead_time_s and task_timeout_s must be >= 0")
        if self.action_space not in ("joint_position", "joint_delta", "ee_pose"):
            raise ValueError(f"RuntimeConfig.action_space {self.action_space!r} is not supported")

    @property
    def stitch_cfg(self) -> StitchConfig:
        return self.stitch or StitchConfig(dt=self.dt)


@dataclass
class StepResult:
    """What one `step()` produced. kind: idle | wait | hold | plan | fault."""

    kind: str
    plan: Trajectory | None = None  # trajectory to publish (plan or hold)
    chunk: np.ndarray | None = None  # raw (H, J) joint chunk behind a plan
    obs_stamp: float = 0.0  # time of the observation the chunk came from
    latency_s: float = 0.0  # model time of the chunk
    task_id: str = ""
    reason: str = ""  # why: hold/fault reason, or subtask/task transitions
    events: list[str] = field(default_factory=list)  # task transitions during this step


@dataclass
class StatusSnapshot:
    state: int
    task_id: str = ""
    instruction: str = ""
    subtask: str = ""
    subtask_index: int = 0
    subtask_count: int = 0
    queue_length: int = 0
    progress: float = 0.0
    phase: int = PHASE_QUEUED
    elapsed_s: float = 0.0
    last_latency_s: float = 0.0
    image_age: float = -1.0
    joint_state_age: float = -1.0
    fault: str = ""
    chunks: int = 0
    holds: int = 0
    switches: int = 0
    premature_switches: int = 0


class PolicyRuntime:
    """See module docstring. Thread-safe: inputs and commands may come from any thread."""

    def __init__(
        self,
        policy: ChunkPolicy,
        joint_names: tuple[str, ...],
        camera_names: tuple[str, ...],
        cfg: RuntimeConfig,
        safety: SafetyFilter,
        ik: IKAdapter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tuple(policy.joint_names) != tuple(joint_names) and cfg.action_space != "ee_pose":
            raise ValueError(
                f"policy joints {list(policy.joint_names)} do not match the robot's joints {list(joint_names)}"
            )
        if tuple(safety.limits.joint_names) != tuple(joint_names):
            raise ValueError("safety limits must be given in the robot's joint order")
        if cfg.action_space == "ee_pose" and ik is None:
            raise ValueError("action_space 'ee_pose' needs an IK adapter (ik_backend)")
        self.policy, self.joint_names, self.camera_names = policy, tuple(joint_names), tuple(camera_names)
        self.cfg, self.safety, self.ik, self.clock = cfg, safety, ik, clock
        self.stitcher = ChunkStitcher(cfg.stitch_cfg)
        self.queue = TaskQueue()
        self.completion = CompletionDetector(cfg.completion)
        self.watchdog = Watchdog(
            {"joint_states": cfg.joint_state_timeout_s}
            | {f"camera {c}": cfg.image_timeout_s for c in self.camera_names}
        )
        self._lock = threading.RLock()
        self._joints: tuple[np.ndarray, float] | None = None  # latest (positions, header stamp)
        # recent joint states, so an image can be paired with the joint state closest to its stamp
        self._joint_hist: deque[tuple[float, np.ndarray]] = deque(maxlen=200)
        # recently published plans: the commanded positions at past control steps are the model's
        # action history (the dataset's `observation.action_history` is the commanded targets too)
        self._plans: deque[Trajectory] = deque(maxlen=4)
        self.n_history = _history_len(policy) if cfg.action_space != "ee_pose" else 0
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._success: bool | None = None  # None: no success signal wired / received
        self._subtasks_done: int | None = None  # None: no subtask counter wired / received
        self._goal: np.ndarray | None = None  # an external goal (set_goal), passed to the policy
        self._holding = False
        self._hold_reason = ""
        self._hold_stale = False
        self._fault = ""
        self._stopped_reason = ""
        self._last_latency = 0.0
        self._next_step = 0.0
        self._active_id = ""  # task the stitcher's chunks belong to
        self._subtask_key: tuple[str, int] = ("", -1)
        self.chunks = 0
        self.holds = 0
        self.switch_log: list[tuple[str, int, float, bool | None]] = []  # (task, subtask, t, success)

    # ------------------------------------------------------------------ inputs
    def on_joint_state(self, positions: np.ndarray, stamp: float, now: float | None = None) -> None:
        """positions: (J,) in contract order, finite (the node checks). stamp: header time [s]."""
        with self._lock:
            self._joints = (np.asarray(positions, dtype=np.float64).copy(), stamp)
            self._joint_hist.append((stamp, self._joints[0]))
            self.watchdog.feed("joint_states", self.clock() if now is None else now)

    def on_image(self, camera: str, rgb: np.ndarray, stamp: float, now: float | None = None) -> None:
        with self._lock:
            self._images[camera] = (rgb, stamp)
            self.watchdog.feed(f"camera {camera}", self.clock() if now is None else now)

    def set_goal(self, xyz: np.ndarray | None) -> None:
        """Where the next gripper event should happen, (3,) in the robot's base frame [m], from
        outside the policy (a detector, a person clicking in RViz); None clears it. Until replaced
        or cleared, every observation carries it as `extras["goal"]`, which a policy trained with
        a goal input acts on instead of its own estimate (docs/model.md, "Goal input")."""
        with self._lock:
            self._goal = None if xyz is None else np.asarray(xyz, dtype=np.float64).reshape(3).copy()

    @property
    def goal(self) -> np.ndarray | None:
        with self._lock:
            return None if self._goal is None else self._goal.copy()

    def on_success(self, value: bool) -> None:
        """The robot's own detector: the whole instruction is done. It ends the last subtask; the
        earlier ones of a chain complete on `on_subtasks_done` when that is wired, else on the
        motion heuristic (a whole-task signal says nothing about the first step of "A, then B")."""
        with self._lock:
            self._success = bool(value)
            if self._subtasks_done is None:
                self.completion.success = bool(value)

    def on_subtasks_done(self, count: int) -> None:
        """The robot's own detector: how many subtasks of the active instruction are done, in order
        (the simulator's /apt_sim/subtasks_done). Subtask i (from 0) completes once count > i."""
        if count < 0:
            raise ValueError(f"subtasks done must be >= 0, got {count}")
        with self._lock:
            self._subtasks_done = int(count)

    def measured(self) -> np.ndarray | None:
        with self._lock:
            return None if self._joints is None else self._joints[0].copy()

    # ------------------------------------------------------------------ commands
    def instruct(self, text: str, append: bool, timeout_s: float = 0.0) -> tuple[bool, str, str]:
        """Set (append=False) or queue an instruction. Returns (accepted, task_id, message)."""
        with self._lock:
            if self._fault:
                return False, "", f"policy is in fault: {self._fault}"
            try:
                task, msg = self.queue.submit(
                    text, append=append, timeout_s=timeout_s or self.cfg.task_timeout_s
                )
            except InstructionError as e:
                return False, "", f"rejected: {e}"
            self._stopped_reason = ""
            return True, task.task_id, msg

    def stop(
        self, reason: str = "stopped", outcome: str = "canceled", measured: bool = False
    ) -> Trajectory | None:
        """End every task and hold where the arm is (`_estimate`). Returns the hold trajectory (None
        if no state). measured: hold at the newest joint state itself, for an arm known not to follow
        its commands (the start-jump fault), which the estimate would push on."""
        with self._lock:
            self.queue.cancel_all(outcome)
            self._stopped_reason = reason
            t_hold = self.clock() + self.cfg.lead_time_s
            at = None if self._joints is None else self._joints[0] if measured else self._start_point(t_hold)
            self.stitcher.reset()
            self._plans.clear()
            self.completion.reset()
            self._active_id = ""
            if at is None:
                return None
            hold = hold_trajectory(t_hold, at)
            self.stitcher.set_plan(hold)
            self._plans.append(hold)
            self.holds += 1
            return hold

    def cancel_task(self, task_id: str) -> Trajectory | None:
        """Cancel one task: the active one stops and holds; a queued one is dropped."""
        with self._lock:
            act = self.queue.active
            if act is not None and act.task_id == task_id:
                return self.stop(f"task {task_id} canceled")
            for t in list(self.queue.queue):
                if t.task_id == task_id:
                    self.queue.queue.remove(t)
                    t.outcome = "canceled"
                    self.queue.finished.append(t)
            return None

    def set_fault(self, reason: str) -> None:
        with self._lock:
            self._fault = reason
            self.queue.cancel_all(f"fault: {reason}")

    def find_task(self, task_id: str) -> Task | None:
        with self._lock:
            return self.queue.find(task_id)

    # ------------------------------------------------------------------ the loop
    def next_step_time(self) -> float:
        return self._next_step

    def _snapshot(self, now: float) -> tuple[Observation | None, list[str]]:
        reasons = self.watchdog.stale(now)
        if reasons or self._joints is None:
            return None, reasons or ["no joint_states received"]
        q, js_stamp = self._joints
        img_stamps = [self._images[c][1] for c in self.camera_names]
        if all(s > 0 for s in img_stamps) and js_stamp > 0:  # header stamps are set: synchronise
            cam_skew = max(img_stamps) - min(img_stamps)
            if cam_skew > self.cfg.max_skew_s:
                return None, [f"camera skew {cam_skew:.3f} s > max_skew_s {self.cfg.max_skew_s} s"]
            t_img = max(img_stamps)
            # the joint state nearest in time to the images: the observation the model sees is
            # consistent even when the camera runs slower than the joint states
            t_js, q = min(self._joint_hist, key=lambda e: abs(e[0] - t_img))
            skew = abs(t_js - t_img)
            if skew > self.cfg.max_skew_s:
                return None, [f"camera/joint-state skew {skew:.3f} s > max_skew_s {self.cfg.max_skew_s} s"]
        imgs = {c: self._images[c][0] for c in self.camera_names}
        extras = {} if self._goal is None else {"goal": self._goal.copy()}
        return Observation(images=imgs, joint_positions=q.copy(), stamp=now, extras=extras), []

    def _hold(self, now: float, reason: str, stale: bool = False) -> StepResult:
        """Enter HOLDING (publish one hold where the arm is, `_estimate`); later calls just wait.

        stale: the inputs are missing/old (resume as soon as they are fresh). Otherwise the model or
        the safety filter refused a chunk: keep holding, and retry each step until a plan passes."""
        self._hold_stale = stale
        if self._holding and reason == self._hold_reason:
            return StepResult("wait", reason=reason)
        first = not self._holding
        self._holding, self._hold_reason = True, reason
        self.stitcher.reset()
        if first and self._joints is not None:
            hold = hold_trajectory(now + self.cfg.lead_time_s, self._start_point(now + self.cfg.lead_time_s))
            self.stitcher.set_plan(hold)
            self._plans.append(hold)
            self.holds += 1
            return StepResult("hold", plan=hold, reason=reason)
        return StepResult("wait", reason=reason)

    def _hold_step(
        self, now: float, reason: str, retry_in: float, task_id: str, events: list[str], stale: bool = False
    ) -> StepResult:
        """step()'s answer when it must hold: `_hold` at `now`, labelled with the task and this
        step's events; the next step comes `retry_in` seconds later."""
        self._next_step = now + retry_in
        res = self._hold(now, reason, stale=stale)
        res.task_id, res.events = task_id, events
        return res

    def _rests_at(self, q: np.ndarray, tol: float = 0.05) -> bool:
        """Whether the measured joints are within `tol` [rad|m] of q (the arm was not moved away)."""
        return self._joints is not None and bool(np.abs(self._joints[0] - q).max() <= tol)

    def _follows(self, plan: Trajectory) -> bool:
        """Whether the newest joint state is within the start-jump limit of where `plan` commanded
        the arm at its stamp. Farther, the next plan would be refused if it continued this one."""
        if self._joints is None:
            return False
        return self._rests_at(plan.sample(self._joints[1])[0], tol=self.safety.limits.max_start_jump)

    def step(self, now: float | None = None) -> StepResult:
        """One iteration of the worker: maybe compute, stitch, check and return a plan."""
        now = self.clock() if now is None else now
        events: list[str] = []
        with self._lock:
            if self._fault:
                self._next_step = now + self.cfg.dt
                return StepResult("fault", reason=self._fault)
            task = self.queue.active
            if task is None:
                self._holding = False
                self._next_step = now + self.cfg.dt / 2
                return StepResult("idle")
            if task.started_at is None:
                task.started_at = task.subtask_started_at = now
                events.append(f"started {task.task_id}: {task.instruction!r}")
            if task.timeout_s and now - task.started_at > task.timeout_s:
                hold = self.stop(f"task {task.task_id} timed out", outcome="timeout")
                self._stopped_reason = ""
                return StepResult("hold", plan=hold, reason="timeout", task_id=task.task_id, events=events)
            if (task.task_id, task.index) != self._subtask_key:
                # new subtask: forget chunks of the previous instruction (ensembling across different
                # instructions would average two intents). Keep a plan that is still executing for
                # continuity while the arm follows it, and an ended one while the arm rests at its
                # end. Otherwise the plan no longer describes the arm (it was moved: a simulator
                # reset, a person), so the next plan starts from the measured state.
                plan = self.stitcher.plan
                self.stitcher.reset()
                if plan is not None and (
                    (plan.times[-1] > now and self._follows(plan)) or self._rests_at(plan.positions[-1])
                ):
                    self.stitcher.set_plan(plan)
                self.completion.reset()
                if self._success is not None:
                    self.completion.success = False
                if task.task_id != self._active_id:
                    self.policy.reset()
                    self._active_id = task.task_id
                    if self._subtasks_done is not None:
                        self._subtasks_done = 0  # a new instruction: nothing done until told
                self._subtask_key = (task.task_id, task.index)
            obs, reasons = self._snapshot(now)
            if obs is None:
                return self._hold_step(
                    now, "; ".join(reasons), self.cfg.dt / 2, task.task_id, events, stale=True
                )
            if self._holding and self._hold_stale:
                # inputs are fresh again: restart from where the arm is (what was planned before
                # the gap no longer describes the arm)
                events.append(f"resumed after: {self._hold_reason}")
                self._holding, self._hold_reason = False, ""
                self.stitcher.reset()
            instruction, task_id = task.subtask, task.task_id
            if self.n_history:
                obs.extras["action_history"] = self._action_history(obs.stamp, obs.joint_positions)
        # ---- inference outside the lock: inputs keep flowing while the model runs
        t_obs = obs.stamp
        t_start = time.perf_counter()
        try:
            raw = np.asarray(self.policy.predict(obs, instruction), dtype=np.float64)
        except Exception as e:  # a model failure must not kill the runtime: hold and report
            with self._lock:
                reason = f"model error: {type(e).__name__}: {e}"
                return self._hold_step(self.clock(), reason, self.cfg.dt, task_id, events)
        latency = time.perf_counter() - t_start
        with self._lock:
            self._last_latency = latency
            if self.queue.active is None or self.queue.active.task_id != task_id:
                return StepResult("wait", reason="task changed during inference", events=events)
            reasons = self._stale_for_plan(self.clock())
            if reasons:
                return self._hold_step(
                    self.clock(), "; ".join(reasons), self.cfg.dt / 2, task_id, events, stale=True
                )
            try:
                chunk = self._to_joint_chunk(raw, obs.joint_positions)
                self.stitcher.add_chunk(t_obs, chunk)
                t0 = self.clock() + self.cfg.lead_time_s
                # with nothing executing (first plan, after a hold) start where the arm is at t0: the
                # newest joint state advanced along what was commanded since (not the older one
                # paired with the image for the model)
                now_q = self._start_point(t0) if self._joints is not None else obs.joint_positions
                plan = self.stitcher.stitch(t0, measured=now_q)
                expected, ref = self._expected_position(t0, obs.joint_positions, plan.positions[0])
                safe, report = self.safety.apply(plan, expected, v_start=plan.velocities[0], reference=ref)
            except StartJumpViolation as e:
                # Retrying would start the next plan at the hold, i.e. where the arm is, and
                # command the blocked arm again and again: end the task, hold, let the user decide.
                hold = self.stop(f"task {task_id} ended: {e}", outcome=f"fault: {e}", measured=True)
                self._next_step = self.clock() + self.cfg.dt
                return StepResult("hold", plan=hold, reason=str(e), task_id=task_id, events=events)
            except (SafetyViolation, IKError, ValueError) as e:
                return self._hold_step(self.clock(), f"rejected chunk: {e}", self.cfg.dt, task_id, events)
            self.stitcher.set_plan(safe)
            self._plans.append(safe)
            if self._holding:  # a retry after a refused chunk succeeded
                events.append(f"resumed after: {self._hold_reason}")
                self._holding, self._hold_reason = False, ""
            self.chunks += 1
            self._next_step = t_obs + self.cfg.replan_steps * self.cfg.dt
            if report.clamped:
                events.append("safety clamp: " + "; ".join(report.notes))
            events += self._update_completion(chunk, obs.joint_positions, self.clock())
            return StepResult(
                "plan",
                plan=safe,
                chunk=chunk,
                obs_stamp=t_obs,
                latency_s=latency,
                task_id=task_id,
                events=events,
            )

    def _stale_for_plan(self, now: float) -> list[str]:
        """Why the plan just computed must not be published at `now` (empty: it may be).

        The inputs were fresh when the observation was taken, but the process can stall while the
        model runs, and then no joint state arrives. The start-jump check measures the follow
        error at the newest joint state's stamp and trusts the plans for the rest: after a 1.28 s
        stall a blocked arm got a plan starting 0.366 rad from it. So the watchdog is asked again,
        and the joint state must also be stamped within joint_state_timeout_s (a backlog being
        drained arrives fresh with old stamps). A stamp as far in the future means the robot's clock
        and this node's disagree, and the check's arithmetic is meaningless (a simulator once ran
        0.36 s ahead). Unset stamps (0) are not judged by age."""
        reasons = self.watchdog.stale(now)
        if self._joints is not None and self._joints[1] > 0:
            age, bound = now - self._joints[1], self.cfg.joint_state_timeout_s
            if age > bound:
                reasons.append(
                    f"newest joint state stamped {age:.2f} s before the plan (bound {bound:.2f} s)"
                )
            elif age < -bound:
                reasons.append(
                    f"newest joint state stamped {-age:.2f} s ahead of this node's clock (bound {bound:.2f} s): "
                    "are the robot's and this machine's clocks synchronised?"
                )
        return reasons

    def _commanded(self, t: float) -> np.ndarray | None:
        """The commanded position at absolute time t: the newest published plan that had started
        by t (a plan replaces its predecessor from its start on); None before every kept plan."""
        for plan in reversed(self._plans):
            if plan.start <= t:
                return plan.sample(t)[0]
        return None

    def _start_point(self, t: float) -> np.ndarray:
        """Where holds and plans that start from the arm's state start: the estimate at t, its
        reach capped at joint_state_timeout_s after the joint state's stamp. A watchdog hold comes
        when the joint state is older than that; past it nothing says the arm still follows (a
        blocked arm would be commanded to where it cannot be)."""
        return self._estimate(t, span=self.cfg.joint_state_timeout_s)

    def _estimate(self, t: float, span: float | None = None) -> np.ndarray:
        """Where the arm is at absolute time t if it follows its commands: the newest joint state
        (q at its stamp t_js) plus what the kept plans commanded between t_js and t.

        Holds and plans that start from the arm's state start here, not at q itself: q can be
        hundreds of ms old (a process stall, a backlog of joint states being drained), and a moving
        arm is no longer there. A hold at q would command it back; a plan starting at q would
        jump. With fresh joint states the two differ by a few ms of motion. The watchdog
        (joint_state_timeout_s) bounds the span."""
        assert self._joints is not None
        q, t_js = self._joints
        if not self._plans:
            return q.copy()
        if span is not None:
            t = min(t, t_js + span)
        # before the oldest kept plan: its first point (a first plan starts where the arm rests)
        rest = self._plans[0].positions[0]
        c_js, c_t = self._commanded(t_js), self._commanded(t)
        c_js = rest if c_js is None else c_js
        c_t = rest if c_t is None else c_t
        return q + (c_t - c_js)

    def _expected_position(
        self, t0: float, fallback: np.ndarray, first: np.ndarray
    ) -> tuple[np.ndarray, str]:
        """Where the arm should be at t0, for the start-jump check, and how that was obtained (for
        the joint farthest from the plan's first point `first`, the one the check reports).

        The estimate (`_estimate`): the newest joint state plus what was commanded since. The
        check then measures the follow error at the joint state's stamp, which is what it is for:
        an arm that does not follow its commands (blocked, pushed, controller off). Comparing the
        plan's first point with the joint state itself instead would also count the plan's own
        motion since then, and that grows with the joint state's age: on a loaded machine a joint
        state 0.2 s old at 1.5 rad/s looked like a 0.3 rad jump, and a following arm was faulted.
        """
        if self._joints is None:
            return np.asarray(fallback, dtype=np.float64), "measured"
        q, t_js = self._joints
        if not self._plans:
            return q.copy(), "measured"
        expected = self._estimate(t0)
        moved = expected - q
        j = int(np.argmax(np.abs(first - expected)))
        return expected, (
            f"expected from a joint state {t0 - t_js:.3f} s old, {self.joint_names[j]!r} measured "
            f"{q[j]:.3f} + commanded since {moved[j]:+.3f}, over {len(self._plans)} kept plan(s)"
        )

    def _action_history(self, t_obs: float, q: np.ndarray) -> np.ndarray:
        """(n, J) commanded positions at t_obs - n*dt .. t_obs - dt, from the plans that were
        executing then; before the first plan, the current position (as the dataset clamps the
        history to the first action)."""
        out = np.tile(np.asarray(q, dtype=np.float64), (self.n_history, 1))
        for i, k in enumerate(range(self.n_history, 0, -1)):
            c = self._commanded(t_obs - k * self.cfg.dt)
            if c is not None:
                out[i] = c
        return out

    def _to_joint_chunk(self, raw: np.ndarray, q: np.ndarray) -> np.ndarray:
        nj = len(self.joint_names)
        if self.cfg.action_space == "ee_pose":
            assert self.ik is not None
            chunk = ee_chunk_to_joints(self.ik, raw, q, self.joint_names, self.cfg.gripper_joint or None)
        else:
            if raw.ndim != 2 or raw.shape[1] != nj or raw.shape[0] < 1:
                raise ValueError(f"policy returned shape {raw.shape}, expected (H, {nj})")
            # ChunkPolicy returns absolute targets in every joint action space (the runner adds
            # joint deltas to the state itself), so nothing is added here.
            chunk = raw
        if not np.all(np.isfinite(chunk)):
            k, j = (int(x) for x in np.argwhere(~np.isfinite(chunk))[0])
            raise SafetyViolation(f"non-finite value in chunk at step {k}, joint {self.joint_names[j]!r}")
        return chunk

    def _update_completion(self, chunk: np.ndarray, q: np.ndarray, now: float) -> list[str]:
        task = self.queue.active
        if task is None:
            return []
        self.completion.observe_chunk(chunk, q)
        elapsed = 0.0 if task.subtask_started_at is None else now - task.subtask_started_at
        if self._subtasks_done is not None:
            self.completion.success = self._subtasks_done > task.index
            signal = True
        else:  # a whole-instruction signal can end only the last subtask
            signal = self._success is not None and task.index == len(task.subtasks) - 1
        if not self.completion.complete(elapsed, success_available=signal):
            return []
        # confirmed by the ground truth that applies to this subtask (None: none is wired)
        truth = (
            self.completion.success if self._subtasks_done is not None or self._success is not None else None
        )
        self.switch_log.append((task.task_id, task.index, now, truth))
        sub = task.subtask
        done = self.queue.complete_subtask(now)
        if done:
            return [f"completed {task.task_id} (last subtask {sub!r})"]
        return [f"{task.task_id}: subtask {task.index - 1} {sub!r} complete, next {task.subtask!r}"]

    # ------------------------------------------------------------------ status
    def status(self, now: float | None = None) -> StatusSnapshot:
        now = self.clock() if now is None else now
        with self._lock:
            t = self.queue.active
            ages = {
                "js": self.watchdog.age("joint_states", now),
                "img": max((self.watchdog.age(f"camera {c}", now) for c in self.camera_names), default=-1.0),
            }
            if any(self.watchdog.age(f"camera {c}", now) < 0 for c in self.camera_names):
                ages["img"] = -1.0
            snap = StatusSnapshot(
                state=IDLE,
                queue_length=len(self.queue.queue),
                last_latency_s=self._last_latency,
                image_age=ages["img"],
                joint_state_age=ages["js"],
                chunks=self.chunks,
                holds=self.holds,
                switches=len(self.switch_log),
                premature_switches=sum(1 for s in self.switch_log if s[3] is False),
            )
            if self._fault:
                snap.state, snap.fault = FAULT, self._fault
                return snap
            if t is None:
                if self._stopped_reason:
                    snap.state, snap.fault = HOLDING, self._stopped_reason
                return snap
            snap.task_id, snap.instruction, snap.subtask = t.task_id, t.instruction, t.subtask
            snap.subtask_index, snap.subtask_count = t.index, len(t.subtasks)
            snap.elapsed_s = 0.0 if t.started_at is None else now - t.started_at
            sub_el = 0.0 if t.subtask_started_at is None else now - t.subtask_started_at
            snap.progress = self.completion.progress(sub_el)
            if self._holding:
                snap.state, snap.fault, snap.phase = HOLDING, self._hold_reason, PHASE_HOLDING
            elif self.chunks == 0 or t.started_at is None:
                snap.state, snap.phase = RUNNING, PHASE_OBSERVING
            else:
                snap.state, snap.phase = RUNNING, PHASE_EXECUTING
            return snap


def _history_len(policy: object) -> int:
    """How many past actions the policy consumes: `n_action_history` on the policy, or on the
    config of a PolicyRunner's model (`policy.policy.cfg`); 0 when it takes none."""
    n = getattr(policy, "n_action_history", None)
    if n is None:
        cfg = getattr(getattr(policy, "policy", None), "cfg", None)
        n = getattr(cfg, "n_action_history", 0)
    try:
        return max(0, int(n))
    except (TypeError, ValueError):
        return 0
