"""Benchmark of the policy runtime; writes section "runtime" of docs/benchmarks.md.

    python scripts/bench_runtime.py                 # debug checkpoint + test policy through ROS, ~3 min
    python scripts/bench_runtime.py --presets debug cpu-demo --seconds 30

Measures, for each policy, with the policy node and a robot process over loopback DDS:
- observation -> command: from the worker's observation snapshot to the trajectory's arrival at the
  robot process (p50/p99); the camera frame itself is up to one camera period older;
- chunk inference time (ActionChunk.inference_latency, p50/p99);
- publish period and jitter of plans (nominal replan_steps * dt = 0.4 s);
- the smallest margin between a plan's arrival and the end of the plan it replaces (the controller
  runs out of trajectory when this goes negative);
- CPU use of the node process (utime + stime over the window, in % of one core).
In process (no ROS): the runtime's own cost per chunk (stitch + safety), and premature task
switching of the completion heuristic on a synthetic hesitating policy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests" / "apt_policy"))

from bench_util import markdown_table, placeholder_stats, write_section  # noqa: E402


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q)) if x else float("nan")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def bench_ros(label: str, node_args: list[str], env: dict[str, str], seconds: float) -> list[object]:
    from rosclient import Client

    os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    penv = {
        **os.environ,
        **env,
        "PYTHONPATH": f"{REPO / 'tests' / 'apt_policy'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    tmp = Path(tempfile.mkdtemp())
    robot = subprocess.Popen(
        [sys.executable, str(REPO / "tests/apt_policy/fake_robot.py"), "--record", str(tmp / "t.jsonl")],
        env=penv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apt_policy.policy_node",
            "--ros-args",
            *node_args,
            "-p",
            "min_subtask_s:=1000.0",
        ],
        env=penv,
        stdout=open(tmp / "node.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    client = Client()
    try:
        client.wait_ready(timeout=120)
        assert client.instruct("left arm please").accepted
        client.wait_for(lambda: len(client.chunks) >= 2, 120, "first chunks")
        c0, t0 = cpu_seconds(node.pid), time.monotonic()
        n0_chunks = len(client.chunks)
        time.sleep(seconds)
        cpu = (cpu_seconds(node.pid) - c0) / (time.monotonic() - t0) * 100
        with client.lock:
            chunks = client.chunks[n0_chunks:]
    finally:
        client.close()
        for p in (node, robot):
            p.send_signal(2)
        for p in (node, robot):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    recs = [json.loads(x) for x in (tmp / "t.jsonl").read_text().splitlines()]
    plans = [r for r in recs if np.ptp(np.array(r["pos"]), axis=0).max() > 0 or np.any(r["vel"])]
    holds = len(recs) - len(plans)
    obs_t = {round(c.header.stamp.sec + c.header.stamp.nanosec * 1e-9, 6) for c in chunks}
    # obs -> command: a plan's arrival at the robot minus the snapshot of the chunk published with it
    stamps = sorted(obs_t)
    lat = []
    for r in plans:
        prior = [s for s in stamps if s <= r["recv"]]
        if prior and r["recv"] - prior[-1] < 5:
            lat.append(r["recv"] - prior[-1])
    inf = [c.inference_latency for c in chunks]
    arr = [r["recv"] for r in plans if r["recv"] >= (stamps[0] if stamps else 0)]
    periods = np.diff(arr) if len(arr) > 1 else np.array([np.nan])
    margins = [old["times"][-1] - new["recv"] for old, new in zip(plans[:-1], plans[1:])]
    return [
        label,
        len(chunks),
        f"{pct(lat, 50) * 1e3:.1f}",
        f"{pct(lat, 99) * 1e3:.1f}",
        f"{pct(inf, 50) * 1e3:.1f}",
        f"{pct(inf, 99) * 1e3:.1f}",
        f"{np.nanmean(periods):.3f} ± {np.nanstd(periods) * 1e3:.1f} ms",
        f"{min(margins):.3f}" if margins else "n/a",
        holds,
        f"{cpu:.0f}%",
    ]


def bench_overhead(n: int = 300) -> tuple[float, float]:
    from apt_core.runtime.safety import SafetyFilter, SafetyLimits
    from apt_core.runtime.stitching import ChunkStitcher, StitchConfig

    names = tuple(f"j{i}" for i in range(7))
    st, sf = ChunkStitcher(StitchConfig(dt=0.1)), SafetyFilter(SafetyLimits.uniform(names))
    rng = np.random.default_rng(0)
    ts, q, t = [], np.zeros(7), 0.0
    for _ in range(n):
        chunk = q + np.cumsum(rng.normal(0, 0.01, (16, 7)), axis=0)
        t0 = time.perf_counter()
        st.add_chunk(t, chunk)
        plan = st.stitch(t + 0.05, q)
        safe, _ = sf.apply(plan, plan.positions[0], plan.velocities[0])
        st.set_plan(safe)
        ts.append(time.perf_counter() - t0)
        q, t = safe.sample(t + 0.4)[0], t + 0.4
    return pct(ts, 50) * 1e6, pct(ts, 99) * 1e6


class Hesitant:
    """A reaching policy that stands still for 0.3-1.5 s mid-task in half of the subtasks."""

    chunk_length, rate_hz = 16, 10.0

    def __init__(
        self, names: tuple[str, ...], goals: dict, rng: np.random.Generator, clock: list[float]
    ) -> None:
        self.joint_names, self.goals, self.rng, self.clock = names, goals, rng, clock
        self.pause: dict[str, tuple[float, float]] = {}

    def reset(self) -> None:
        pass

    def predict(self, obs, instruction: str) -> np.ndarray:
        if instruction not in self.pause:
            start = self.clock[0] + self.rng.uniform(0.3, 1.0)
            dur = self.rng.uniform(0.3, 1.5) if self.rng.random() < 0.5 else 0.0
            self.pause[instruction] = (start, start + dur)
        s, e = self.pause[instruction]
        q = obs.joint_positions
        if s <= self.clock[0] < e:
            return np.tile(q, (16, 1))
        d = self.goals[instruction] - q
        k = np.arange(1, 17)[:, None] * 0.04
        return q + np.sign(d) * np.minimum(np.abs(d), k)


def bench_premature(episodes: int = 60) -> list[list[object]]:
    """Chains of two reaches by a policy that hesitates (stands still for 0.3-1.5 s, like a VLA
    unsure of the next step) with probability 0.5 per subtask. Ground truth: the arm within 0.02 rad
    of the subtask goal. A switch before that is premature."""
    from apt_core.runtime.engine import PolicyRuntime, RuntimeConfig
    from apt_core.runtime.safety import SafetyFilter, SafetyLimits
    from apt_core.runtime.tasks import CompletionConfig, premature_switches

    names = ("a", "b", "c")
    goals = {"first": np.array([0.6, -0.3, 0.4]), "second": np.array([-0.4, 0.3, 0.0])}
    rows = []
    for min_s, settle in ((0.0, 1), (0.0, 3), (3.0, 1), (3.0, 3), (3.0, 5)):
        prem, switches, delays = 0, 0, []
        for ep in range(episodes):
            rng = np.random.default_rng(ep)
            clock = [0.0]

            cfg = RuntimeConfig(
                dt=0.1,
                chunk_length=16,
                completion=CompletionConfig(
                    min_subtask_s=min_s, settle_motion=0.02, settle_chunks=settle, use_success_signal=False
                ),
            )
            rt = PolicyRuntime(
                Hesitant(names, goals, rng, clock),
                names,
                ("front",),
                cfg,
                SafetyFilter(SafetyLimits.uniform(names)),
                clock=lambda c=clock: c[0],
            )
            rt.instruct("first, then second", append=False)
            q, plan, done_t, sw = np.zeros(3), None, {}, []
            img = np.zeros((4, 4, 3), np.uint8)
            while clock[0] < 20.0 and rt.queue.active is not None:
                if plan is not None:
                    q = plan.sample(clock[0])[0]
                for g, goal in goals.items():
                    if g not in done_t and np.abs(q - goal).max() < 0.02:
                        done_t[g] = clock[0]
                rt.on_joint_state(q, clock[0])
                rt.on_image("front", img, clock[0])
                if clock[0] >= rt.next_step_time():
                    res = rt.step()
                    plan = res.plan or plan
                clock[0] += 0.02
            sw = [s[2] for s in rt.switch_log]
            m = premature_switches(sw[:1], [done_t.get("first")])
            prem += int(m["premature"])
            switches += int(m["switches"])
            if sw and "first" in done_t and sw[0] >= done_t["first"]:
                delays.append(sw[0] - done_t["first"])
        rows.append(
            [
                f"{min_s:.0f}",
                settle,
                episodes,
                f"{prem / max(switches, 1):.0%}",
                f"{np.median(delays):.2f}" if delays else "n/a",
            ]
        )
    return rows


def bench_stitching(n_chunks: int = 40) -> list[list[object]]:
    """Boundary jumps per stitching method for a VLA-like policy (each chunk off by N(0, 0.03) rad),
    0.13 s inference latency, replanning every 0.4 s: what a JointTrajectoryController would see."""
    from apt_core.runtime.stitching import ChunkStitcher, StitchConfig

    rows = []
    for method in ("none", "ensemble", "rtc", "ensemble+rtc"):
        rng = np.random.default_rng(0)
        st = ChunkStitcher(StitchConfig(dt=0.1, method=method))
        plans, t = [], 0.0
        for _ in range(n_chunks):
            times = t + 0.1 * np.arange(1, 17)
            ref = 0.5 * np.sin(0.8 * times)[:, None] * np.ones((1, 7))
            st.add_chunk(t, ref + rng.normal(0, 0.03, (1, 7)))
            plans.append(st.stitch(t + 0.13, np.zeros(7)))
            t += 0.4
        dp, dv, acc = [], [], []
        for old, new in zip(plans[:-1], plans[1:]):
            p_old, v_old = old.sample(new.start)
            dp.append(np.abs(p_old - new.positions[0]).max())
            dv.append(np.abs(v_old - new.velocities[0]).max())
            acc.append(np.abs(np.diff(new.velocities[:-1], axis=0)).max() / 0.1)
        rows.append(
            [
                method,
                f"{np.max(dp) * 1e3:.2f}",
                f"{np.max(dp) / 0.1:.3f}",
                f"{np.max(dv):.2e}",
                f"{np.max(acc):.2f}",
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--presets", nargs="*", default=["debug"], help="model presets to serve (untrained weights)"
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per policy")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from checkpoints import make_debug_checkpoint

    rows = [
        bench_ros(
            "test policy (no model)", ["-p", "policy_factory:=policies:make_goal_policy"], {}, a.seconds
        )
    ]
    for preset in a.presets:
        d = Path(tempfile.mkdtemp()) / preset
        if preset == "debug":
            ck = make_debug_checkpoint(d)
        else:
            ck = _make_preset_checkpoint(preset, d)
        rows.append(
            bench_ros(
                f"{preset} checkpoint", ["-p", f"checkpoint:={ck}"], {"OMP_NUM_THREADS": "2"}, a.seconds
            )
        )
    o50, o99 = bench_overhead()
    stitch = bench_stitching()
    prem = bench_premature()
    body = "\n\n".join(
        [
            "Policy node + robot process over loopback DDS (Fast DDS), sim contract (10 Hz, H=16, replan every "
            "4 steps, ensemble+rtc stitching, clamp safety). Untrained weights: timings only.",
            markdown_table(
                [
                    "policy",
                    "chunks",
                    "obs->cmd p50 [ms]",
                    "obs->cmd p99 [ms]",
                    "inference p50 [ms]",
                    "inference p99 [ms]",
                    "plan period",
                    "min margin [s]",
                    "holds",
                    "node CPU",
                ],
                rows,
            ),
            "Chunk boundaries (in process; a policy whose chunks are each off by N(0, 0.03) rad, 0.13 s latency, "
            "replanning every 0.4 s). Position step at the switch, the velocity spike it implies for a "
            "controller that reaches it within one step, the velocity-field jump, and the largest acceleration "
            "inside the published plans:",
            markdown_table(
                [
                    "stitching",
                    "max position step [mrad]",
                    "implied velocity spike [rad/s]",
                    "velocity jump [rad/s]",
                    "max accel in plan [rad/s^2]",
                ],
                stitch,
            ),
            f"Runtime cost per chunk (stitch + safety, in process, H=16, J=7): p50 {o50:.0f} us, p99 {o99:.0f} us.",
            "Premature task switching of the completion heuristic (no success topic), 2-step chains with a "
            "policy that hesitates mid-task in half of the subtasks:",
            markdown_table(
                [
                    "min_subtask_s",
                    "settle_chunks",
                    "episodes",
                    "premature switches",
                    "median delay after true completion [s]",
                ],
                prem,
            ),
            "Goal: obs->cmd p99 <= 50 ms and min margin > 0 (the controller never runs out of trajectory). "
            "obs->cmd runs from the worker's observation snapshot to the plan's arrival at the robot process and "
            "includes the model, so it tracks inference time; the camera frame is up to one camera period older. "
            "A negative min margin means a plan ended before the next one arrived: inference took longer than "
            "(H - replan_steps) * dt = 1.2 s. The machine is a 2-core VM shared with other engineers' jobs, so "
            "the p99 columns mostly measure CPU contention; a hold is the watchdog firing when the node was "
            "starved past joint_state_timeout_s (0.25 s).",
        ]
    )
    print(body)
    if not a.no_write:
        write_section("runtime", "Policy runtime (scripts/bench_runtime.py)", body)


def _make_preset_checkpoint(preset: str, out: Path) -> Path:
    from apt_core.model.checkpoint import save_checkpoint
    from apt_core.model.config import get_preset
    from apt_core.model.policy import APTPolicy
    from apt_core.model.processor import Processor

    cfg = get_preset(preset)
    # small ranges, so that the untrained policy makes small motions
    stats = placeholder_stats(len(cfg.joint_names), std=0.05, bound=0.15, q=0.12)
    return save_checkpoint(out, APTPolicy(cfg), Processor.from_stats(cfg, stats), {})


if __name__ == "__main__":
    main()
