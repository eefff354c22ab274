"""The policy node's runtime in process, on simulated time: the ROS loop without ROS (a diagnostic).

`python -m apt_core.sim.evaluate --runtime` runs each episode as the nodes do, minus DDS and the wall
clock: the simulator advances its physics tracking a `TrajectoryFollower` (the JointTrajectoryController
semantics, sampled at 100 Hz as `apt_sim`'s node does, `follow`), publishes joint states, the camera
image and the subtask counter once per control period, and a `PolicyRuntime` (the policy node's
engine, with the node's defaults: a chunk every `replan_steps`, ensembling + RTC blending, the
safety filter's clamp and start-jump check, the completion detector, the chain split) plans on
them. Its plans go to the follower from their stamped start on. The instruction is given whole, as
`/apt/execute` gets it.

Inference takes no simulated time unless `latency_s` says otherwise: with a latency the world runs
on under the previous plan for that long (to the next 10 ms sample) between the observation and
the new plan, as it does while the node's model computes. Everything is deterministic for a
deterministic policy.

What it leaves out of the ROS path: DDS transport, message conversion, the wall clock and its
jitter, the sim node's stamp origin. So `evaluate` against `evaluate --runtime` measures what the
runtime's planning (asynchrony, stitching, clamping, completion) costs; `--runtime` against
`apt_sim.evaluate_ros` / `apt_bringup.demo` measures the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from apt_core.runtime.engine import PolicyRuntime, RuntimeConfig, StepResult
from apt_core.runtime.safety import SafetyFilter, SafetyLimits
from apt_core.runtime.stitching import StitchConfig
from apt_core.sim.env import TabletopEnv
from apt_core.sim.evaluate import EpisodeMeter, EpisodeResult, node_limits
from apt_core.sim.jtc import PHYSICS_PER_SAMPLE, TrajectoryFollower, TrajectoryPoint, follow
from apt_core.types import ChunkPolicy, Observation, PolicyWrapper

# Simulated time at reset, on the runtime's clock: stamps > 0 are synchronised by the runtime [s]
CLOCK_ORIGIN = 100.0


@dataclass
class LoopStats:
    """Counts over every episode run through one `RuntimeLoop`."""

    episodes: int = 0
    plans: int = 0  # plans published
    clamped: int = 0  # plans the safety filter rewrote
    holds: int = 0  # holds published (refused chunks, stale inputs)
    faults: int = 0  # tasks ended by the start-jump check
    # each plan's start minus its observation's stamp [s]
    plan_ages: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the faults' messages


class _World:
    """One episode's simulator + follower, feeding the runtime as apt_sim's node feeds the policy
    node: joint state, camera image, subtask counter and success every control period. `meter`
    sees every period; `done` once the task succeeded; nothing moves after `limit` periods."""

    def __init__(self, env: TabletopEnv, meter: EpisodeMeter, limit: int) -> None:
        self.env, self.meter, self.limit = env, meter, limit
        self.follower = TrajectoryFollower(env.contract.joint_names, env.joint_positions())
        self.samples_per_period = math.ceil(env.n_substeps / PHYSICS_PER_SAMPLE)
        self.sample = 0  # samples done in the current control period
        self.steps = 0  # control periods done
        self.done = False
        self.rt: PolicyRuntime | None = None

    @property
    def now(self) -> float:
        return CLOCK_ORIGIN + self.env.time

    def publish(self) -> None:
        assert self.rt is not None
        t, rt = self.now, self.rt
        rt.on_joint_state(self.env.joint_positions(), t, now=t)
        rt.on_subtasks_done(self.env.subtask_progress())
        rt.on_success(self.env.success())
        for cam in self.env.cameras:
            rt.on_image(cam, self.env.render(cam), t, now=t)

    def advance(self, n_samples: int) -> None:
        """Run on under the current plan for n_samples follower samples, publishing at each period's
        end; stops early once the task succeeded or the episode's time is up."""
        for _ in range(n_samples):
            if self.done or self.steps >= self.limit:
                return
            done = self.sample * PHYSICS_PER_SAMPLE
            follow(self.env, self.follower, min(PHYSICS_PER_SAMPLE, self.env.n_substeps - done))
            self.sample += 1
            if self.sample == self.samples_per_period:
                self.sample = 0
                self.steps += 1
                self.env._update_progress()
                self.meter.update(self.follower.sample(self.env.time))
                self.done = self.env.success()
                self.publish()

    def send(self, res: StepResult) -> None:
        """What the node publishes on the controller topic; the follower takes it from its start on."""
        if res.plan is None:
            return
        p = res.plan
        points = [
            TrajectoryPoint(float(t - p.start), tuple(q), tuple(v))
            for t, q, v in zip(p.times, p.positions, p.velocities)
        ]
        self.follower.set_trajectory(self.env.contract.joint_names, points, p.start - CLOCK_ORIGIN)


class _Latency(PolicyWrapper):
    """The policy as the runtime sees it: the world runs on for the inference latency inside predict."""

    def __init__(self, policy: ChunkPolicy, world: _World, latency_s: float) -> None:
        super().__init__(policy)
        self.world = world
        self.samples = round(latency_s / (PHYSICS_PER_SAMPLE * world.env.physics_dt))

    def predict(self, obs: Observation, instruction: str) -> np.ndarray:
        chunk = self.policy.predict(obs, instruction)
        self.world.advance(self.samples)
        return chunk


class RuntimeLoop:
    """Runs episodes through a `PolicyRuntime` on simulated time (module docstring). Called like
    `evaluate.run_episode`; its `execute_steps` is ignored (the runtime replans every
    `replan_steps`) and chains are always split as the node splits them.

    latency_s: simulated inference time [s]. replan_steps, stitch_method: as the node's parameters
    (defaults: config/policy.yaml's). limits: the safety filter's (default `node_limits`)."""

    def __init__(
        self,
        latency_s: float = 0.0,
        replan_steps: int = 4,
        stitch_method: str = "ensemble+rtc",
        limits: SafetyLimits | None = None,
    ) -> None:
        if not latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.latency_s, self.replan_steps, self.stitch_method = float(latency_s), replan_steps, stitch_method
        self.limits = limits
        self.stats = LoopStats()

    def __call__(
        self,
        env: TabletopEnv,
        policy: ChunkPolicy,
        seed: int,
        split: str,
        max_steps: int | None = None,
        execute_steps: int = 4,
        chain_text: str = "subtask",
    ) -> EpisodeResult:
        if chain_text != "subtask":
            raise ValueError("the runtime splits chains itself: chain_text must be 'subtask'")
        env.reset(seed, split)
        task = env.task
        assert task is not None
        limit = max_steps if max_steps is not None else 150 * len(task.subtasks)
        world = _World(env, EpisodeMeter(env, task), limit)
        c = env.contract
        cfg = RuntimeConfig(
            dt=c.dt,
            chunk_length=c.chunk_length,
            replan_steps=self.replan_steps,
            action_space=c.action_space,
            stitch=StitchConfig(dt=c.dt, method=self.stitch_method),
        )
        if self.limits is None:  # once: it reads the URDF
            self.limits = node_limits(tuple(c.joint_names))
        world.rt = rt = PolicyRuntime(
            _Latency(policy, world, self.latency_s),
            c.joint_names,
            c.camera_names,
            cfg,
            SafetyFilter(self.limits),
            clock=lambda: world.now,
        )
        world.publish()
        accepted, _, msg = rt.instruct(task.instruction, append=False)
        if not accepted:
            raise ValueError(f"the runtime refused {task.instruction!r}: {msg}")
        while world.steps < limit and not world.done:
            if rt.next_step_time() <= world.now + 1e-9:
                res = rt.step(now=world.now)
                world.send(res)
                if res.kind == "plan" and res.plan is not None:
                    self.stats.plans += 1
                    self.stats.plan_ages.append(res.plan.start - res.obs_stamp)
                self.stats.holds += res.kind == "hold"
                self.stats.clamped += any(e.startswith("safety clamp") for e in res.events)
                if res.kind == "hold" and rt.queue.active is None:
                    # the start-jump check ended the task: the arm holds and nothing more is planned
                    self.stats.faults += 1
                    self.stats.reasons.append(f"seed {seed} {split}: {res.reason}")
                    break
            world.advance(1)
        self.stats.episodes += 1
        return world.meter.result(split, seed, world.done, world.steps)
