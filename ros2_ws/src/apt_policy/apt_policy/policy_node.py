"""The APT policy node: cameras + /joint_states -> PolicyRuntime -> JointTrajectory to ros2_control.

A thin rclpy shell around `apt_core.runtime.engine.PolicyRuntime` (all logic lives there, ROS-free):

  subscriptions (sensor-data QoS)   contract cameras (Image or CompressedImage), /joint_states,
                                    success topic (std_msgs/Bool) and subtasks-done topic
                                    (std_msgs/UInt32), when the contract names them;
                                    /apt/goal (geometry_msgs/PointStamped, depth 10: an external goal)
  services                          /apt/instruct (apt_msgs/Instruct), /apt/stop (std_srvs/Trigger)
  action                            /apt/execute (apt_msgs/Execute)
  publications                      controller topic (trajectory_msgs/JointTrajectory, reliable),
                                    /apt/status (PolicyStatus, status_rate_hz), /apt/action_chunk,
                                    /apt/predicted_path (MarkerArray), /diagnostics

A dedicated worker thread runs inference (the model runs while the controller executes the previous
plan); a SingleThreadedExecutor serves the sensors, timers and services meanwhile. /apt/execute lives
on a second node, `<name>_execute`, with its own executor and threads, because its execute callback
blocks for the whole task (see `main`). Every callback is guarded: a bad message is logged (throttled
per kind) and dropped, never raised. Run: `apt-policy --ros-args -p checkpoint:=...`
"""

from __future__ import annotations

import faulthandler
import importlib
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, UInt32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from apt_core.contract import Contract, load_contract
from apt_core.runtime.engine import PolicyRuntime, RuntimeConfig, StepResult
from apt_core.runtime.ik import IKAdapter, MoveItIK, NumericalIK, UrdfChain
from apt_core.runtime.safety import SafetyFilter, SafetyLimits
from apt_core.runtime.stitching import StitchConfig
from apt_core.runtime.tasks import CompletionConfig, validate_instruction
from apt_core.types import ChunkPolicy
from apt_msgs.action import Execute
from apt_msgs.msg import ActionChunk, PolicyStatus
from apt_msgs.srv import Instruct
from apt_policy.conversions import (
    ConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    joint_state_to_array,
    seconds_to_time,
    time_to_seconds,
    trajectory_to_msg,
)
from apt_policy.params import POLICY_PARAMS

SIM_URDF = Path(load_contract.__code__.co_filename).parent / "sim" / "assets" / "tabletop_arm.urdf"


class StartupError(RuntimeError):
    """The node cannot start (bad contract, checkpoint that does not fit the robot, bad limits)."""


def load_policy(
    checkpoint: str, factory: str, device: str, contract: Contract, noise_scale: float = 0.0
) -> ChunkPolicy:
    """Load the checkpoint (or call the factory) and check it fits the robot's joints and rate."""
    if bool(checkpoint) == bool(factory):
        raise StartupError("set exactly one of the parameters 'checkpoint' and 'policy_factory'")
    if factory:
        mod, _, fn = factory.partition(":")
        try:
            policy = getattr(importlib.import_module(mod), fn)(contract)
        except Exception as e:
            raise StartupError(f"policy_factory {factory!r} failed: {type(e).__name__}: {e}") from None
    else:
        from apt_core.model.checkpoint import CheckpointMismatchError
        from apt_core.model.runner import load_runner

        try:
            policy = load_runner(
                checkpoint,
                device=device,
                expect={"joint_names": list(contract.joint_names)},
                noise_scale=noise_scale,
            )
        except CheckpointMismatchError as e:
            raise StartupError(f"checkpoint {checkpoint!r} does not fit this robot: {e}") from None
        except Exception as e:
            raise StartupError(f"cannot load checkpoint {checkpoint!r}: {type(e).__name__}: {e}") from None
    if contract.action_space != "ee_pose" and tuple(policy.joint_names) != contract.joint_names:
        raise StartupError(
            f"policy joints {list(policy.joint_names)} do not match the contract joints {list(contract.joint_names)}"
        )
    if abs(float(policy.rate_hz) - contract.rate_hz) > 1e-6:
        raise StartupError(
            f"policy rate {policy.rate_hz} Hz differs from the contract rate {contract.rate_hz} Hz"
        )
    return policy


class PolicyNode(Node):
    """See module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("apt_policy", **kwargs)
        for p in POLICY_PARAMS:
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        g = self._param
        self._throttle: dict[str, tuple[float, int]] = {}
        self.contract = load_contract(g("contract") or None)
        c = self.contract
        self.runtime_clock: Callable[[], float] = lambda: self.get_clock().now().nanoseconds * 1e-9
        policy = load_policy(g("checkpoint"), g("policy_factory"), g("device"), c, float(g("noise_scale")))
        urdf = g("urdf") or (str(SIM_URDF) if SIM_URDF.is_file() and not g("contract") else "")
        self.chain: UrdfChain | None = None
        limits = self._limits(c, urdf)
        ik = self._ik(c, urdf)
        cfg = RuntimeConfig(
            dt=c.dt,
            chunk_length=c.chunk_length,
            replan_steps=g("replan_steps"),
            lead_time_s=g("lead_time_s"),
            max_skew_s=g("max_skew_s"),
            joint_state_timeout_s=g("joint_state_timeout_s"),
            image_timeout_s=g("image_timeout_s"),
            task_timeout_s=g("task_timeout_s"),
            action_space=c.action_space,
            gripper_joint=self._gripper_joint(c),
            stitch=StitchConfig(
                dt=c.dt,
                method=g("stitch_method"),
                ensemble_chunks=g("ensemble_chunks"),
                ensemble_decay=g("ensemble_decay"),
                blend_steps=g("blend_steps"),
            ),
            completion=CompletionConfig(
                min_subtask_s=g("min_subtask_s"),
                settle_motion=g("settle_motion"),
                settle_chunks=g("settle_chunks"),
                use_success_signal=g("use_success_topic"),
            ),
        )
        self.rt = PolicyRuntime(
            policy, c.joint_names, c.camera_names, cfg, SafetyFilter(limits), ik, self.runtime_clock
        )
        if g("status_rate_hz") < 5.0:
            raise StartupError(f"status_rate_hz must be >= 5, got {g('status_rate_hz')}")

        for cam in c.cameras:
            msg_type = CompressedImage if cam.compressed else Image
            self.create_subscription(
                msg_type,
                cam.topic,
                lambda m, n=cam.name: self._guard("image", self._on_image, n, m),
                qos_profile_sensor_data,
            )
        self.create_subscription(
            JointState,
            c.joint_state_topic,
            lambda m: self._guard("joint_states", self._on_joint_state, m),
            qos_profile_sensor_data,
        )
        if c.success_topic and g("use_success_topic"):
            self.create_subscription(
                Bool,
                c.success_topic,
                lambda m: self._guard("success", self.rt.on_success, bool(m.data)),
                10,
            )
        if c.subtasks_done_topic and g("use_success_topic"):
            self.create_subscription(
                UInt32,
                c.subtasks_done_topic,
                lambda m: self._guard("subtasks_done", self.rt.on_subtasks_done, int(m.data)),
                10,
            )
        self.create_subscription(
            PointStamped, "/apt/goal", lambda m: self._guard("goal", self._on_goal_point, m), 10
        )
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._pub_lock = threading.Lock()  # orders stop holds and worker plans on the command topic
        self._stops = 0  # stops/cancels so far: a plan computed across one is dropped
        self.traj_pub = self.create_publisher(
            JointTrajectory, g("controller_topic") or c.controller_topic, reliable
        )
        self.status_pub = self.create_publisher(PolicyStatus, "/apt/status", 10)
        self.chunk_pub = self.create_publisher(ActionChunk, "/apt/action_chunk", 10)
        self.marker_pub = self.create_publisher(MarkerArray, "/apt/predicted_path", 1)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Instruct, "/apt/instruct", self._on_instruct)
        self.create_service(Trigger, "/apt/stop", self._on_stop)
        # its own node, spun by its own executor in main(): ignores the process's remappings
        # (a launch file's __node:= would give both nodes one name)
        self.execute_node = Node(
            f"{self.get_name()}_execute",
            namespace=self.get_namespace(),
            context=self.context,
            use_global_arguments=False,
        )
        self._action = ActionServer(
            self.execute_node,
            Execute,
            "/apt/execute",
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=lambda _g: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )
        self.create_timer(1.0 / g("status_rate_hz"), lambda: self._guard("status", self._publish_status))
        self.create_timer(1.0, lambda: self._guard("diagnostics", self._publish_diagnostics))
        self._running = True
        self._wake = threading.Event()
        self._worker = threading.Thread(target=self._work, name="apt_policy_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"apt_policy ready: {len(c.joint_names)} joints, {len(c.cameras)} camera(s), {c.rate_hz} Hz, "
            f"H={c.chunk_length}, stitch={cfg.stitch_cfg.method}, safety={limits.mode}, urdf={urdf or 'none'}"
        )

    # ------------------------------------------------------------------ setup helpers
    def _gripper_joint(self, c: Contract) -> str:
        name = self._param("gripper_joint") or getattr(c, "gripper_joint", "")
        if name and name not in c.joint_names:
            raise StartupError(
                f"gripper_joint {name!r} is not one of the contract joints {list(c.joint_names)}"
            )
        return name

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _limits(self, c: Contract, urdf: str) -> SafetyLimits:
        n = len(c.joint_names)

        def per_joint(name: str) -> tuple[float, ...]:
            v = [float(x) for x in self._param(name)]
            if len(v) == 1:
                return tuple(v) * n
            if len(v) != n:
                raise StartupError(f"parameter {name!r} has {len(v)} values; the contract has {n} joints")
            return tuple(v)

        try:
            lim = SafetyLimits(
                c.joint_names,
                per_joint("position_lower"),
                per_joint("position_upper"),
                (float(self._param("velocity_limit")),) * n,
                (float(self._param("acceleration_limit")),) * n,
                max_start_jump=float(self._param("max_start_jump")),
                mode=self._param("safety_mode"),
            )
            return lim.intersect_urdf(urdf) if urdf else lim
        except (ValueError, FileNotFoundError) as e:
            raise StartupError(f"safety limits: {e}") from None

    def _ik(self, c: Contract, urdf: str) -> IKAdapter | None:
        backend = self._param("ik_backend")
        if backend not in ("numerical", "moveit"):
            raise StartupError(f"ik_backend {backend!r} not one of numerical | moveit")
        if urdf:
            tip = self._param("ee_link") or _last_link(urdf, self._param("base_link"))
            try:
                self.chain = UrdfChain.from_urdf(urdf, self._param("base_link"), tip)
            except Exception as e:
                if c.action_space == "ee_pose":
                    raise StartupError(f"IK chain: {e}") from None
                self.get_logger().warning(f"no kinematic chain for markers: {e}")
        if c.action_space != "ee_pose":
            return None
        if backend == "moveit":
            return MoveItIK("arm", self._param("ee_link") or "tool0")
        if self.chain is None:
            raise StartupError("action space ee_pose needs a URDF (parameter 'urdf') for the numerical IK")
        return NumericalIK(self.chain)

    # ------------------------------------------------------------------ guarded callbacks
    def _log_throttled(self, key: str, msg: str, period: float = 5.0) -> None:
        """One error per kind per period; later ones are counted and summarised."""
        now = time.monotonic()
        last, count = self._throttle.get(key, (-1e9, 0))
        if now - last >= period:
            extra = f" ({count} similar suppressed)" if count else ""
            self.get_logger().error(f"{msg}{extra}")
            self._throttle[key] = (now, 0)
        else:
            self._throttle[key] = (last, count + 1)

    def _guard(self, key: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except ConversionError as e:
            self._log_throttled(key, f"dropped {key} message: {e}")
        except Exception as e:  # never let a message take the node down
            self._log_throttled(key, f"error in {key} callback: {type(e).__name__}: {e}")

    def _on_joint_state(self, msg: JointState) -> None:
        q = joint_state_to_array(msg, self.contract.joint_names)
        self.rt.on_joint_state(q, time_to_seconds(msg.header.stamp), self.runtime_clock())

    def _on_goal_point(self, msg: PointStamped) -> None:
        """/apt/goal: where the next gripper event should happen, in the contract's base frame (RViz's
        "Publish Point" tool sends these on /clicked_point: remap it). NaN coordinates clear it."""
        p = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
        if np.isnan(p).any():
            self.rt.set_goal(None)
            self.get_logger().info("goal cleared: the policy uses its own estimate")
            return
        base = self.contract.base_frame
        if msg.header.frame_id not in ("", base):
            raise ConversionError(
                f"goal in frame {msg.header.frame_id!r}; this node takes goals in {base!r} (no TF here)"
            )
        if not np.isfinite(p).all():
            raise ConversionError(f"goal {p.tolist()} is not finite")
        old = self.rt.goal
        self.rt.set_goal(p)
        if old is not None and np.abs(old - p).max() < 0.01:
            return  # (a detector streaming goals: log only moves of 1 cm or more)
        if getattr(self.rt.policy, "accepts_goal", False):
            self.get_logger().info(f"goal set: {np.round(p, 3).tolist()} m in {base!r}")
        else:
            self.get_logger().warning(
                "goal set, but this policy was not trained with a goal input (apt-train-stage2 "
                "--goal-input): it ignores the goal"
            )

    def _on_image(self, name: str, msg: Image | CompressedImage) -> None:
        c = self.contract
        if isinstance(msg, CompressedImage):
            rgb = compressed_msg_to_rgb(msg, c.image_width, c.image_height)
        else:
            rgb = image_msg_to_rgb(msg, c.image_width, c.image_height)
            if (msg.width, msg.height) != (c.image_width, c.image_height):
                self._log_throttled(
                    f"size {name}",
                    f"camera {name!r}: {msg.width}x{msg.height} resized to the contract's {c.image_width}x{c.image_height}",
                    period=30.0,
                )
        self.rt.on_image(name, rgb, time_to_seconds(msg.header.stamp), self.runtime_clock())

    # ------------------------------------------------------------------ services and action
    def _on_instruct(self, req: Instruct.Request, resp: Instruct.Response) -> Instruct.Response:
        try:
            if req.mode not in (Instruct.Request.MODE_REPLACE, Instruct.Request.MODE_APPEND):
                resp.accepted, resp.message = (
                    False,
                    f"rejected: unknown mode {req.mode} (0 = replace, 1 = append)",
                )
                return resp
            ok, tid, msg = self.rt.instruct(req.instruction, append=req.mode == Instruct.Request.MODE_APPEND)
            resp.accepted, resp.task_id, resp.message = ok, tid, msg
            self._wake.set()
            # (rclpy loggers forbid changing severity at one call site: two calls, not one)
            if ok:
                self.get_logger().info(f"instruct: {msg}")
            else:
                self.get_logger().warning(f"instruct: {msg}")
        except Exception as e:
            resp.accepted, resp.message = False, f"internal error: {type(e).__name__}: {e}"
        return resp

    def _stop_and_hold(self, stop) -> object:
        """Run a stop/cancel and publish its hold; a plan computed meanwhile is then never published."""
        with self._pub_lock:
            hold = stop()
            self._stops += 1
            if hold is not None:
                self.traj_pub.publish(trajectory_to_msg(hold, self.contract.joint_names))
        return hold

    def _on_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        hold = self._stop_and_hold(lambda: self.rt.stop("stopped by /apt/stop"))
        resp.success = True
        resp.message = (
            "stopped; holding the measured position" if hold else "stopped; no joint state to hold yet"
        )
        return resp

    def _on_goal(self, goal: Execute.Goal) -> GoalResponse:
        try:
            validate_instruction(goal.instruction)
        except ValueError as e:
            self._log_throttled("execute", f"execute goal rejected: {e}")
            return GoalResponse.REJECT
        if not np.isfinite(goal.timeout_s) or goal.timeout_s < 0:
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, goal_handle: Any) -> Execute.Result:
        req = goal_handle.request
        result = Execute.Result()
        t_start = time.monotonic()
        ok, tid, msg = self.rt.instruct(req.instruction, append=False, timeout_s=float(req.timeout_s))
        if not ok:
            goal_handle.abort()
            result.reason = msg
            return result
        self._wake.set()
        period = 1.0 / max(5.0, float(self._param("status_rate_hz")))
        while rclpy.ok():
            task = self.rt.find_task(tid)
            if goal_handle.is_cancel_requested:
                self._stop_and_hold(lambda: self.rt.cancel_task(tid))
                goal_handle.canceled()
                result.reason = "canceled"
                break
            if task is None or task.done:
                outcome = task.outcome if task else "lost"
                result.success = outcome == "completed"
                result.reason = outcome
                (goal_handle.succeed if result.success else goal_handle.abort)()
                break
            st = self.rt.status()
            fb = Execute.Feedback()
            if st.task_id == tid:
                fb.subtask_index, fb.subtask_count, fb.subtask = (
                    st.subtask_index,
                    st.subtask_count,
                    st.subtask,
                )
                fb.progress, fb.phase, fb.elapsed_s = float(st.progress), st.phase, float(st.elapsed_s)
            else:
                fb.subtask_count, fb.subtask = len(task.subtasks), task.subtask
            goal_handle.publish_feedback(fb)
            time.sleep(period)
        task = self.rt.find_task(tid)
        result.subtasks_completed = task.completed if task else 0
        result.duration_s = float(time.monotonic() - t_start)
        return result

    # ------------------------------------------------------------------ worker and publishing
    def _work(self) -> None:
        while self._running and rclpy.ok():
            try:
                stops = self._stops
                res = self.rt.step()
                with self._pub_lock:
                    if stops != self._stops and res.kind == "plan":
                        continue  # stopped while this plan was computed: the hold stands
                    self._publish_step(res)
            except Exception as e:  # keep the worker alive whatever happens
                self._log_throttled(
                    "worker", f"worker error: {type(e).__name__}: {e}\n{traceback.format_exc()}"
                )
                time.sleep(0.05)
            wait = self.rt.next_step_time() - self.runtime_clock()
            if wait > 0:
                self._wake.wait(min(wait, 0.5))
                self._wake.clear()

    def _publish_step(self, res: StepResult) -> None:
        for e in res.events:
            self.get_logger().info(e)
        if res.kind == "hold" and res.plan is not None:
            self.get_logger().warning(f"holding position: {res.reason}")
            self.traj_pub.publish(trajectory_to_msg(res.plan, self.contract.joint_names))
        elif res.kind == "plan" and res.plan is not None:
            self.traj_pub.publish(trajectory_to_msg(res.plan, self.contract.joint_names))
            self._publish_chunk(res)
            if self.chain is not None and self._param("publish_markers"):
                self._publish_markers(res)

    def _publish_chunk(self, res: StepResult) -> None:
        assert res.chunk is not None
        m = ActionChunk()
        m.header.stamp = seconds_to_time(res.obs_stamp)
        m.joint_names = list(self.contract.joint_names)
        m.horizon = res.chunk.shape[0]
        m.positions = res.chunk.ravel().tolist()
        m.time_offsets = (self.contract.dt * np.arange(1, res.chunk.shape[0] + 1)).tolist()
        m.chunk_id = self.rt.chunks
        m.task_id = res.task_id
        m.inference_latency = float(res.latency_s)
        self.chunk_pub.publish(m)

    def _publish_markers(self, res: StepResult) -> None:
        assert self.chain is not None and res.plan is not None
        idx = [
            self.contract.joint_names.index(n)
            for n in self.chain.joint_names
            if n in self.contract.joint_names
        ]
        if len(idx) != len(self.chain.joint_names):
            return
        mk = Marker()
        mk.header.frame_id = self.contract.base_frame
        mk.header.stamp = seconds_to_time(res.plan.start)
        mk.ns, mk.id, mk.type, mk.action = "apt_predicted_ee_path", 0, Marker.LINE_STRIP, Marker.ADD
        mk.scale.x = 0.005
        mk.color.r, mk.color.g, mk.color.b, mk.color.a = 0.1, 0.8, 0.2, 1.0
        mk.pose.orientation.w = 1.0
        for q in res.plan.positions:
            pose, _ = self.chain.forward(q[idx])
            mk.points.append(Point(x=float(pose[0, 3]), y=float(pose[1, 3]), z=float(pose[2, 3])))
        self.marker_pub.publish(MarkerArray(markers=[mk]))

    def _publish_status(self) -> None:
        st = self.rt.status()
        m = PolicyStatus()
        m.header.stamp = self.get_clock().now().to_msg()
        m.state = st.state
        m.active_instruction, m.active_subtask, m.task_id = st.instruction, st.subtask, st.task_id
        m.subtask_index, m.subtask_count, m.queue_length = st.subtask_index, st.subtask_count, st.queue_length
        m.last_inference_latency = float(st.last_latency_s)
        m.image_age, m.joint_state_age = float(st.image_age), float(st.joint_state_age)
        m.fault = st.fault
        self.status_pub.publish(m)
        if self._param("publish_markers"):
            # the status as a text marker next to the predicted path (RViz has no PolicyStatus display)
            names = ["IDLE", "RUNNING", "HOLDING", "FAULT", "STARTING"]
            txt = Marker()
            txt.header.frame_id, txt.header.stamp = self.contract.base_frame, m.header.stamp
            txt.ns, txt.id, txt.type, txt.action = "apt_status", 1, Marker.TEXT_VIEW_FACING, Marker.ADD
            txt.pose.position.z, txt.pose.orientation.w, txt.scale.z = 0.9, 1.0, 0.05
            txt.color.r = txt.color.g = txt.color.b = txt.color.a = 1.0
            sub = f" {st.subtask_index + 1}/{st.subtask_count}: {st.subtask}" if st.subtask else ""
            txt.text = f"{names[st.state]}{sub}" + (f" ({st.fault})" if st.fault else "")
            self.marker_pub.publish(MarkerArray(markers=[txt]))

    def _publish_diagnostics(self) -> None:
        st = self.rt.status()
        d = DiagnosticStatus()
        d.name, d.hardware_id = "apt_policy: runtime", self.contract.robot_name
        d.level = [
            DiagnosticStatus.OK,
            DiagnosticStatus.OK,
            DiagnosticStatus.WARN,
            DiagnosticStatus.ERROR,
            DiagnosticStatus.OK,
        ][st.state]
        d.message = st.fault or ["idle", "running", "holding", "fault", "starting"][st.state]
        vals = {
            "state": st.state,
            "task_id": st.task_id,
            "chunks": st.chunks,
            "holds": st.holds,
            "last_inference_latency_s": f"{st.last_latency_s:.4f}",
            "image_age_s": f"{st.image_age:.3f}",
            "joint_state_age_s": f"{st.joint_state_age:.3f}",
            "subtask_switches": st.switches,
            "premature_switches": st.premature_switches,
        }
        d.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [d]
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        self._running = False
        self._wake.set()
        self._worker.join(timeout=2.0)


def _last_link(urdf: str, base: str) -> str:
    """The deepest link below `base` along first children (a serial arm's tool link)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(urdf).getroot()
    children: dict[str, list[tuple[str, str]]] = {}
    for j in root.iter("joint"):
        p, ch = j.find("parent"), j.find("child")
        if p is not None and ch is not None:
            children.setdefault(str(p.get("link")), []).append((str(j.get("type")), str(ch.get("link"))))
    link = base
    while link in children:
        # prefer a non-prismatic child: the gripper fingers are not the end-effector frame
        opts = sorted(children[link], key=lambda t: t[0] == "prismatic")
        if opts[0][0] == "prismatic":
            break
        link = opts[0][1]
    return link


def _spin(executor: MultiThreadedExecutor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def main(args: list[str] | None = None) -> int:
    # `kill -USR1 <pid>` dumps every thread's stack: the first thing to look at if the node stalls.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args)
    try:
        node = PolicyNode()
    except StartupError as e:
        print(f"apt_policy: refusing to start: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except Exception as e:
        print(f"apt_policy: refusing to start: {type(e).__name__}: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # Sensors, timers and services: one thread. rclpy 9's MultiThreadedExecutor resubmits every
    # callback that waits for a free pool thread on each pass of its loop; under sensor load that
    # list grew to thousands of entries, the loop held the GIL and /apt/status fell from 10 Hz to
    # 3-5 Hz for whole runs (in about half the runs of test_execute_chain_feedback_and_smooth_trajectories).
    # The execute callback blocks for the whole task, so /apt/execute gets a small pool of its own
    # that only sees goal, cancel and result requests.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    execute_executor = MultiThreadedExecutor(num_threads=3)
    execute_executor.add_node(node.execute_node)
    execute_thread = threading.Thread(target=_spin, args=(execute_executor,), name="apt_execute", daemon=True)
    execute_thread.start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        execute_executor.shutdown()
        executor.shutdown()
        node.execute_node.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
