"""Record scripted demonstrations through ROS into rosbag2 (mcap), one bag per episode.

    apt-record-demos --episodes 100 --out data/demos --seed 0 --speed 0

One process runs three rclpy nodes on one executor, talking over real topics:
  apt_sim (SimNode)  --/joint_states, camera, /apt/instruction-->  apt_recorder (BagRecorder)
        ^  JointTrajectory on the controller topic                    writes <out>/episode_XXXXXX/
        +-- apt_expert (PolicyClient + ScriptedExpert, privileged sim state, like a teleoperator)
Per episode: pause, open the bag, /apt_sim/reset (the instruction is published latched and lands
in the bag), resume, run until /apt_sim/success has been true for `--settle` s or `--max-seconds`
of sim time pass, pause, close the bag. Failed episodes are deleted unless `--keep-failures`.
Bags are written to a temporary folder and renamed when complete, so a crash never leaves a
half-written episode behind. Message log times are the messages' header stamps (virtual clock of
the sim), so bags recorded faster than real time look like real-time recordings.

On a real robot the equivalent is (one bag per demonstration):
    ros2 bag record -s mcap -o episode_000000 /joint_states /camera/front/image_raw \
        /camera/front/camera_info /arm_controller/joint_trajectory /apt/instruction
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from apt_core.contract import Contract
from apt_core.sim.expert import ScriptedExpert
from apt_msgs.srv import ResetSim
from apt_sim.policy_client import PolicyClient
from apt_sim.sim_node import LATCHED, SimNode

TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def recorded_topics(c: Contract) -> list[tuple[str, type, str, QoSProfile | int]]:
    """(topic, rclpy type, ROS type name, QoS) of everything the contract says a bag holds."""
    topics = [(c.joint_state_topic, JointState, "sensor_msgs/msg/JointState", 10)]
    for cam in c.cameras:
        topics.append((cam.topic, Image, "sensor_msgs/msg/Image", qos_profile_sensor_data))
        if cam.info_topic:
            topics.append((cam.info_topic, CameraInfo, "sensor_msgs/msg/CameraInfo", qos_profile_sensor_data))
    topics.append((c.controller_topic, JointTrajectory, "trajectory_msgs/msg/JointTrajectory", 10))
    topics.append((c.instruction_topic, String, "std_msgs/msg/String", LATCHED))
    if c.success_topic:
        topics.append((c.success_topic, Bool, "std_msgs/msg/Bool", 10))
    return topics


class BagRecorder(Node):
    """Subscribes to the contract's topics and writes them to the currently open bag (if any)."""

    def __init__(self, contract: Contract, clock_fn) -> None:
        super().__init__("apt_recorder")
        self.contract = contract
        self.clock_fn = clock_fn  # virtual time for messages without a header (String, Bool)
        self._writer: Writer | None = None
        self._conns: dict = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.success = False
        self.success_since: float | None = None
        for topic, typ, name, qos in recorded_topics(contract):
            self.create_subscription(typ, topic, lambda m, t=topic, n=name: self._on_msg(t, n, m), qos)

    def open(self, path: Path, custom: dict[str, str]) -> None:
        w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        w.open()
        for k, v in custom.items():
            w.set_custom_data(k, v)
        conns = {
            topic: w.add_connection(topic, name, typestore=TYPESTORE)
            for topic, _, name, _ in recorded_topics(self.contract)
        }
        with self._lock:
            self._writer, self._conns = w, conns
            self.counts = dict.fromkeys(conns, 0)
            self.success, self.success_since = False, None

    def close(self) -> None:
        with self._lock:
            w, self._writer = self._writer, None
        if w is not None:
            w.close()

    def _on_msg(self, topic: str, name: str, msg) -> None:
        header = getattr(msg, "header", None)
        t = header.stamp.sec + header.stamp.nanosec * 1e-9 if header is not None else self.clock_fn()
        if topic == self.contract.success_topic:
            if msg.data and not self.success:
                self.success_since = t
            self.success = bool(msg.data)
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(self._conns[topic], int(t * 1e9), serialize_message(msg))
            self.counts[topic] += 1


def _call(executor_done: threading.Event, client, request, timeout: float = 10.0):
    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"service {client.srv_name} not available")
    fut = client.call_async(request)
    end = time.monotonic() + timeout
    while not fut.done():
        if time.monotonic() > end or executor_done.is_set():
            raise RuntimeError(f"service {client.srv_name} timed out")
        time.sleep(0.002)
    return fut.result()


def record(
    out: Path,
    episodes: int,
    seed: int = 0,
    split: str = "in_distribution",
    speed: float = 0.0,
    max_seconds: float = 20.0,
    settle: float = 0.5,
    keep_failures: bool = False,
    contract_path: str = "",
    execute_steps: int = 8,
) -> dict:
    """Record `episodes` demos (seeds seed..seed+episodes-1); returns a summary dict."""
    out.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    from rclpy.parameter import Parameter

    nodes: dict = {}
    ready, done = threading.Event(), threading.Event()
    ex = SingleThreadedExecutor()

    def build_and_spin() -> None:
        # Built in the executor thread: the sim's EGL renderer must live in the thread that renders.
        try:
            sim = SimNode(
                parameter_overrides=[
                    Parameter("speed", value=float(speed)),
                    Parameter("contract", value=contract_path),
                    Parameter("start_paused", value=True),
                ]
            )
            nodes["sim"] = sim
            nodes["expert"] = PolicyClient(
                sim.contract, ScriptedExpert(sim.env), execute_steps, name="apt_expert"
            )
            nodes["rec"] = BagRecorder(sim.contract, sim.stamp_now)
            nodes["ctl"] = Node("apt_record_ctl")
            for n in nodes.values():
                ex.add_node(n)
        finally:
            ready.set()
        try:
            ex.spin()
        finally:
            done.set()

    spin = threading.Thread(target=build_and_spin, daemon=True)
    spin.start()
    ready.wait()
    if "ctl" not in nodes:
        raise RuntimeError("could not start the sim, expert and recorder nodes (see the log above)")
    sim, expert, rec, ctl = nodes["sim"], nodes["expert"], nodes["rec"], nodes["ctl"]
    contract = sim.contract
    reset_cli = ctl.create_client(ResetSim, "/apt_sim/reset")
    pause_cli = ctl.create_client(SetBool, "/apt_sim/pause")
    summary = {"episodes": [], "ok": 0, "failed": 0}
    t_start = time.perf_counter()
    try:
        for i in range(episodes):
            s = seed + i
            final = out / f"episode_{s:06d}"
            tmp = out / f".episode_{s:06d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _call(done, pause_cli, SetBool.Request(data=True))
            time.sleep(0.05)  # let frames already in flight arrive before the bag opens
            task = sim.env.task  # placeholder until the reset answers
            rec.open(tmp, {"seed": str(s), "split": split})
            resp = _call(done, reset_cli, ResetSim.Request(seed=s, split=split, instruction=""))
            if not resp.success:
                raise RuntimeError(f"reset failed: {resp.message}")
            task = sim.env.task
            t_wait = time.monotonic()
            while expert.instruction != resp.instruction and time.monotonic() - t_wait < 5:
                time.sleep(0.002)
            expert.start_episode()
            _call(done, pause_cli, SetBool.Request(data=False))
            while True:
                with sim.lock:
                    t_sim = sim.env.time
                if (
                    rec.success
                    and rec.success_since is not None
                    and sim.stamp_now() - rec.success_since >= settle
                ):
                    break
                if t_sim >= max_seconds or done.is_set():
                    break
                time.sleep(0.005)
            _call(done, pause_cli, SetBool.Request(data=True))
            time.sleep(0.05)
            ok = rec.success
            rec._writer.set_custom_data("instruction", resp.instruction)
            rec._writer.set_custom_data("success", str(ok).lower())
            counts = dict(rec.counts)
            rec.close()
            if ok or keep_failures:
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            summary["ok" if ok else "failed"] += 1
            summary["episodes"].append(
                {
                    "seed": s,
                    "instruction": task.instruction,
                    "success": ok,
                    "sim_s": round(t_sim, 2),
                    "frames": counts.get(contract.cameras[0].topic, 0),
                }
            )
            print(
                f"episode {s}: success={ok} sim={t_sim:.1f}s frames={counts.get(contract.cameras[0].topic, 0)} :: {task.instruction}",
                flush=True,
            )
    finally:
        summary["wall_s"] = time.perf_counter() - t_start
        rec.close()
        ex.shutdown()
        spin.join(timeout=5)
        for n in (sim, expert, rec, ctl):
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Record scripted demos through the ROS sim node into rosbag2 (mcap)."
    )
    ap.add_argument("--episodes", type=int, default=10, help="number of episodes (seeds seed..seed+N-1)")
    ap.add_argument("--out", type=Path, required=True, help="output folder; one bag folder per episode")
    ap.add_argument("--seed", type=int, default=0, help="first scene seed")
    ap.add_argument("--split", default="in_distribution", help="task split to draw from")
    ap.add_argument("--speed", type=float, default=0.0, help="real-time factor; 0 = as fast as possible")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="sim-time limit per episode [s]")
    ap.add_argument("--settle", type=float, default=0.5, help="keep recording this long after success [s]")
    ap.add_argument("--keep-failures", action="store_true", help="also keep bags of failed episodes")
    ap.add_argument("--contract", default="", help="contract YAML (default: the sim contract)")
    a = ap.parse_args(argv)
    if a.episodes < 1:
        ap.error("--episodes must be >= 1")
    if a.speed < 0:
        ap.error("--speed must be >= 0")
    s = record(
        a.out, a.episodes, a.seed, a.split, a.speed, a.max_seconds, a.settle, a.keep_failures, a.contract
    )
    print(
        f"recorded {s['ok']} successful / {s['ok'] + s['failed']} episodes into {a.out} in {s['wall_s']:.1f} s"
    )
    return 0 if s["ok"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
