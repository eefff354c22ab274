"""SimHarness: the sim node, a policy client and an optional bag recorder on one executor.

Used by `apt-record-demos` (ScriptedExpert as the policy, recorder on) and `apt-eval-ros` (any
ChunkPolicy, or an external policy node in another process). All nodes talk over real topics and
services; they share one process only so the expert can read privileged sim state and so
recording runs faster than real time without dropping frames.

Per episode: pause (/apt_sim/pause), open the bag, reset (/apt_sim/reset; the latched instruction
lands in the bag), resume, wait until /apt_sim/success has been true for `settle` s of sim time or
`max_seconds` of sim time passed, pause, close the bag.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String, UInt32
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from apt_core.contract import Contract
from apt_core.sim.env import TabletopEnv, scene_fingerprint
from apt_core.sim.policy_start import PolicyStart, StartOutcome
from apt_core.types import ChunkPolicy
from apt_msgs.srv import ResetSim
from apt_sim.policy_client import PolicyClient
from apt_sim.sim_node import LATCHED, SimNode

TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def recorded_topics(c: Contract) -> list[tuple[str, type, str, QoSProfile | int]]:
    """(topic, rclpy type, ROS type name, QoS) of everything the contract says a bag holds."""
    topics: list[tuple[str, type, str, QoSProfile | int]] = [
        (c.joint_state_topic, JointState, "sensor_msgs/msg/JointState", 10)
    ]
    for cam in c.cameras:
        topics.append((cam.topic, Image, "sensor_msgs/msg/Image", qos_profile_sensor_data))
        if cam.info_topic:
            topics.append((cam.info_topic, CameraInfo, "sensor_msgs/msg/CameraInfo", qos_profile_sensor_data))
    topics.append((c.controller_topic, JointTrajectory, "trajectory_msgs/msg/JointTrajectory", 10))
    topics.append((c.instruction_topic, String, "std_msgs/msg/String", LATCHED))
    if c.success_topic:
        topics.append((c.success_topic, Bool, "std_msgs/msg/Bool", 10))
    if c.subtasks_done_topic:
        topics.append((c.subtasks_done_topic, UInt32, "std_msgs/msg/UInt32", 10))
    return topics


class BagRecorder(Node):
    """Subscribes to the contract's topics and writes them to the currently open bag (if any).

    Log times are header stamps; messages without a header (String, Bool) get the sim's virtual
    time, so a bag recorded faster than real time has real-time timestamps.
    """

    def __init__(self, contract: Contract, clock_fn: Callable[[], float]) -> None:
        super().__init__("apt_recorder")
        self.contract = contract
        self.clock_fn = clock_fn
        self._writer: Writer | None = None
        self._conns: dict = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.instructions_seen = 0  # latched instructions received, recording or not
        for topic, typ, _name, qos in recorded_topics(contract):
            # raw=True: the serialized CDR goes into the bag as received (no decode / re-encode).
            stamped = hasattr(typ, "_fields_and_field_types") and "header" in typ.get_fields_and_field_types()
            self.create_subscription(
                typ, topic, lambda m, t=topic, h=stamped: self._on_msg(t, m, h), qos, raw=True
            )

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

    def close(self, custom: dict[str, str] | None = None) -> None:
        with self._lock:
            w, self._writer = self._writer, None
        if w is not None:
            for k, v in (custom or {}).items():
                w.set_custom_data(k, v)
            w.close()

    def _on_msg(self, topic: str, raw: bytes, has_header: bool) -> None:
        if topic == self.contract.instruction_topic:
            self.instructions_seen += 1
        if has_header and len(raw) >= 12:
            # CDR: 4-byte encapsulation header, then std_msgs/Header starts with stamp (int32 sec,
            # uint32 nanosec); byte 1 says the byte order (1 = little endian).
            order = "<" if raw[1] == 1 else ">"
            sec, nsec = struct.unpack_from(order + "iI", raw, 4)
            t_ns = sec * 1_000_000_000 + nsec
        else:
            t_ns = int(round(self.clock_fn() * 1e9))
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(self._conns[topic], t_ns, raw)
            self.counts[topic] += 1


class _Control(Node):
    """Service clients and the success monitor of the harness."""

    def __init__(self, contract: Contract, clock_fn: Callable[[], float]) -> None:
        super().__init__("apt_harness")
        self.clock_fn = clock_fn
        self.reset_cli = self.create_client(ResetSim, "/apt_sim/reset")
        self.pause_cli = self.create_client(SetBool, "/apt_sim/pause")
        self.success = False
        self.success_since: float | None = None
        self.create_subscription(Bool, contract.success_topic or "/apt_sim/success", self._on_success, 10)

    def clear(self) -> None:
        self.success, self.success_since = False, None

    def _on_success(self, msg: Bool) -> None:
        if msg.data and not self.success:
            self.success_since = self.clock_fn()
        self.success = bool(msg.data)


@dataclass
class EpisodeOutcome:
    seed: int  # scene seed
    instruction: str  # instruction of the episode
    family: str  # task family
    success: bool  # /apt_sim/success at the end
    sim_seconds: float  # simulated time the episode ran [s]
    frames: int  # camera frames recorded (0 without a recorder)
    subtasks_done: int  # subtasks completed in order
    missed_start: bool = False  # the arm started as after a missed grasp (TabletopEnv.missed_grasp)
    policy_start_s: float = 0.0  # seconds a policy drove before the episode began (PolicyStart)
    policy_completed: bool = False  # that policy finished the task before the episode began


DISCOVERY_WAIT = 3.5  # s a recording harness looks for another simulator before its first episode


class SimHarness:
    """Context manager running the nodes in a background executor thread (see module docstring)."""

    def __init__(
        self,
        policy_factory: Callable[[TabletopEnv], ChunkPolicy] | None,
        speed: float = 0.0,
        contract_path: str = "",
        execute_steps: int = 8,
        record: bool = False,
        disturbance: float = 0.0,
        missed_grasp: float = 0.0,
        missed_grasp_near: str = "named",
        policy_start: PolicyStart | None = None,
    ) -> None:
        """policy_factory: builds the in-process policy from the sim's env; None = an external policy
        node drives the robot (it must follow /apt/instruction and publish on the controller topic).
        disturbance: the sim node's DART-style setpoint noise [rad] (apt_core.sim.disturbance).
        missed_grasp, missed_grasp_near: the sim node's share of missed-grasp starts and beside which
        object they are (TabletopEnv.missed_grasp_start).
        policy_start: the sim node's start hook: each reset first lets this policy drive
        (apt_core.sim.policy_start); the episode and its bag begin where it left the scene."""
        self._factory, self._speed, self._contract_path = policy_factory, speed, contract_path
        self._execute_steps, self._record, self._disturbance = execute_steps, record, disturbance
        self._missed_grasp, self._missed_grasp_near = missed_grasp, missed_grasp_near
        self._policy_start = policy_start
        self.nodes: dict[str, Node] = {}
        self._ex: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def __enter__(self) -> SimHarness:
        if not rclpy.ok():
            rclpy.init()
        ready = threading.Event()
        self._ex = ex = SingleThreadedExecutor()
        error: list[BaseException] = []

        def build_and_spin() -> None:
            # Built in the executor thread: the sim's EGL renderer lives in the thread that renders.
            try:
                sim = SimNode(
                    parameter_overrides=[
                        Parameter("speed", value=float(self._speed)),
                        Parameter("contract", value=self._contract_path),
                        Parameter("start_paused", value=True),
                        Parameter("disturbance", value=float(self._disturbance)),
                        Parameter("missed_grasp", value=float(self._missed_grasp)),
                        Parameter("missed_grasp_near", value=str(self._missed_grasp_near)),
                    ]
                )
                sim.start_hook = self._policy_start
                self.nodes["sim"] = sim
                if self._factory is not None:
                    policy = self._factory(sim.env)
                    self.nodes["client"] = PolicyClient(sim.contract, policy, self._execute_steps)
                if self._record:
                    self.nodes["rec"] = BagRecorder(sim.contract, sim.stamp_now)
                self.nodes["ctl"] = _Control(sim.contract, sim.stamp_now)
                for n in self.nodes.values():
                    ex.add_node(n)
            except BaseException as e:  # reported to the caller below
                error.append(e)
            finally:
                ready.set()
            if not error:
                try:
                    ex.spin()
                finally:
                    self._done.set()

        self._thread = threading.Thread(target=build_and_spin, daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            self.__exit__(None, None, None)
            raise RuntimeError(f"could not start the sim harness: {error[0]}") from error[0]
        # Wait for discovery: the start-up instruction (latched) must reach the recorder and the
        # client now, or it would arrive late and land in the first episode's bag.
        rec, client = self.nodes.get("rec"), self.nodes.get("client")
        end = time.monotonic() + 15
        while time.monotonic() < end:
            rec_ok = not isinstance(rec, BagRecorder) or rec.instructions_seen > 0
            client_ok = not isinstance(client, PolicyClient) or bool(client.instruction)
            if rec_ok and client_ok:
                break
            time.sleep(0.01)
        else:
            self.__exit__(None, None, None)
            raise RuntimeError("sim harness: the nodes did not discover each other within 15 s")
        # A foreign participant can take one DDS announcement period (about 3 s here) to appear. A
        # recording waits that long so that no bag is kept before the check has seen it; an
        # evaluation only briefly, and is stopped by the check after an episode instead.
        end = time.monotonic() + (DISCOVERY_WAIT if self._record else 0.2)
        try:
            while True:
                self._check_alone()
                if time.monotonic() >= end:
                    break
                time.sleep(0.05)
        except RuntimeError:
            self.__exit__(None, None, None)
            raise
        return self

    def _check_alone(self) -> None:
        """Another simulator (or robot) in this ROS domain would follow our commands and mix its joint
        states into our bags: a second recorder started without its own ROS_DOMAIN_ID fails most of
        its episodes and corrupts the rest. Checked at start (see __enter__) and again after every
        episode, before its bag is kept."""
        topic = self.sim.contract.joint_state_topic
        n = self.sim.count_publishers(topic)
        if n > 1:
            domain = os.environ.get("ROS_DOMAIN_ID", "0")
            raise RuntimeError(
                f"sim harness: {n - 1} other publisher(s) on {topic} in ROS_DOMAIN_ID={domain}: another "
                "simulator or robot is running in this domain; give each parallel recorder or "
                "evaluation its own ROS_DOMAIN_ID (docs/sim.md)"
            )

    def __exit__(self, *exc) -> None:
        rec = self.nodes.get("rec")
        if isinstance(rec, BagRecorder):
            rec.close()
        if self._ex is not None:
            self._ex.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for n in self.nodes.values():
            n.destroy_node()
        self.nodes.clear()
        if rclpy.ok():
            rclpy.shutdown()

    @property
    def sim(self) -> SimNode:
        return self.nodes["sim"]  # type: ignore[return-value]

    def _call(self, client, request, timeout: float = 10.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {client.srv_name} not available")
        fut = client.call_async(request)
        end = time.monotonic() + timeout
        while not fut.done():
            if time.monotonic() > end or self._done.is_set():
                raise RuntimeError(f"service {client.srv_name} timed out")
            time.sleep(0.002)
        return fut.result()

    def pause(self, paused: bool) -> None:
        ctl: _Control = self.nodes["ctl"]  # type: ignore[assignment]
        self._call(ctl.pause_cli, SetBool.Request(data=paused))

    def episode(
        self,
        seed: int,
        split: str = "in_distribution",
        instruction: str = "",
        max_seconds: float = 20.0,
        settle: float = 0.5,
        bag: Path | None = None,
    ) -> EpisodeOutcome:
        """Run one episode (see module docstring); `bag` opens a recording (needs record=True)."""
        ctl: _Control = self.nodes["ctl"]  # type: ignore[assignment]
        rec = self.nodes.get("rec")
        client = self.nodes.get("client")
        sim = self.sim
        self.pause(True)
        time.sleep(0.05)  # frames already in flight arrive before the bag opens
        if bag is not None:
            if not isinstance(rec, BagRecorder):
                raise ValueError("episode(bag=...) needs SimHarness(record=True)")
            meta = {"seed": str(seed), "split": split, "sim_scene": scene_fingerprint()}
            if sim.env.disturbance is not None:
                meta["disturbance"] = f"{sim.env.disturbance.std:g}"
            rec.open(bag, meta)
        resp = self._call(
            ctl.reset_cli,
            ResetSim.Request(seed=seed, split=split, instruction=instruction),
            timeout=10.0 if self._policy_start is None else 60.0,  # the policy drives inside the reset
        )
        if not resp.success:
            if isinstance(rec, BagRecorder):
                rec.close()
            raise RuntimeError(f"reset failed: {resp.message}")
        ctl.clear()
        if isinstance(client, PolicyClient):
            end = time.monotonic() + 5
            while client.instruction != resp.instruction and time.monotonic() < end:
                time.sleep(0.002)
            client.start_episode()
        self.pause(False)
        while True:
            with sim.lock:
                t_sim = sim.env.time
            if (
                ctl.success
                and ctl.success_since is not None
                and sim.stamp_now() - ctl.success_since >= settle
            ):
                break
            if t_sim >= max_seconds or self._done.is_set():
                break
            time.sleep(0.003)
        self.pause(True)
        time.sleep(0.05)
        try:
            self._check_alone()
        except RuntimeError:
            if isinstance(rec, BagRecorder):
                rec.close()
            raise
        ok = ctl.success
        with sim.lock:
            done, missed = sim.env.subtask_progress(), sim.env.started_missed
        start = self._policy_start.last if self._policy_start is not None else StartOutcome()
        frames = 0
        if bag is not None and isinstance(rec, BagRecorder):
            frames = rec.counts.get(sim.contract.cameras[0].topic, 0)
            end_meta = {"instruction": resp.instruction, "task": resp.task, "success": str(ok).lower()}
            if missed:
                end_meta["missed_grasp_start"] = "true"
                end_meta["missed_grasp_near"] = sim.env.missed_grasp_near
            if start.seconds > 0:
                end_meta["policy_start_s"] = f"{start.seconds:g}"
            rec.close(end_meta)
        return EpisodeOutcome(
            seed,
            resp.instruction,
            resp.task,
            ok,
            round(t_sim, 2),
            frames,
            done,
            missed,
            start.seconds,
            start.completed,
        )
