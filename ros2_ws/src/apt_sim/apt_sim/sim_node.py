"""apt_sim node: the MuJoCo tabletop arm behind ros2_control-style topics.

    python -m apt_sim.sim_node --ros-args -p speed:=1.0 -p seed:=0
    apt-sim --ros-args -p contract:=/path/to/contract.yaml

Publishes (topics from the contract): /joint_states (JointState, reliable), the camera's Image and
CameraInfo (sensor-data QoS), /apt_sim/success (Bool: the whole task is done) and
/apt_sim/subtasks_done (UInt32: how many of its subtasks are done, in order) at the control rate, and the task
instruction on /apt/instruction (String, transient local). Subscribes to the contract's controller
topic (JointTrajectory, ros2_control JTC semantics via apt_core.sim.jtc; the gripper is the joint
"gripper" of the same trajectory, finger opening [m]) and /gripper_controller/commands
(Float64MultiArray [opening m], forward-command style; it replaces the gripper part of the motion). Services: /apt_sim/reset (apt_msgs/ResetSim),
/apt_sim/pause (std_srvs/SetBool; recording uses it to start episodes cleanly).

Timing: a wall-clock timer steps one control period of physics per tick, every dt / speed seconds
(speed 0 = as fast as possible). No /clock: messages are stamped with a virtual clock that starts
one control period before the node's time at each reset (`_origin`) and advances with simulated time,
so at speed 1 it trails node time by less than a period and faster runs produce bags with the same
stamps a real-time run would have.
"""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Callable

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String, UInt32
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from apt_core.contract import load_contract
from apt_core.sim.env import GRIPPER_MAX, TabletopEnv
from apt_core.sim.jtc import TrajectoryError, TrajectoryFollower, TrajectoryPoint, follow
from apt_core.sim.tasks import TaskError
from apt_msgs.srv import ResetSim

LATCHED = QoSProfile(
    depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
)
# ros2_control forward_command_controller style gripper command: data = [opening in m].
GRIPPER_TOPIC = "/gripper_controller/commands"
GRIPPER_MOVE_TIME = 0.3  # [s] the gripper setpoint ramps to a commanded opening over this time


def to_time_msg(t: float) -> Time:
    sec = math.floor(t)
    return Time(sec=int(sec), nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


class SimNode(Node):
    """One Node: env + JTC follower + publishers; all callbacks run in one executor thread."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("apt_sim", **node_kwargs)
        p = self.declare_parameter
        p("contract", "", descriptor=_desc("contract YAML path; empty = the simulated robot's contract"))
        p("speed", 1.0, descriptor=_desc("real-time factor target; 0 = as fast as possible"))
        p("seed", 0, descriptor=_desc("scene seed of the initial reset"))
        p("split", "in_distribution", descriptor=_desc("evaluation split of the initial reset"))
        p("start_paused", False, descriptor=_desc("start with physics paused (see /apt_sim/pause)"))
        p(
            "disturbance",
            0.0,
            descriptor=_desc(
                "std [rad] of the DART-style drift added to the arm's setpoints beneath the controller "
                "(recording recovery demonstrations; apt_core.sim.disturbance); 0 = none"
            ),
        )
        p(
            "missed_grasp",
            0.0,
            descriptor=_desc(
                "share of resets that start the arm as after a missed grasp: gripper shut on nothing "
                "beside the object to grasp (recording retry demonstrations; TabletopEnv); 0 = none"
            ),
        )
        p(
            "missed_grasp_near",
            "named",
            descriptor=_desc(
                "beside which object a missed-grasp start puts the gripper: 'named' (the one to grasp) "
                "or 'any' (one of the scene's objects, drawn from the seed)"
            ),
        )
        gp = self.get_parameter
        self.contract = load_contract(gp("contract").value or None)
        self.speed = float(gp("speed").value)
        if self.speed < 0:
            raise ValueError(f"parameter speed must be >= 0, got {self.speed}")
        self.env = TabletopEnv(
            contract=self.contract,
            disturbance=float(gp("disturbance").value),
            missed_grasp=float(gp("missed_grasp").value),
            missed_grasp_near=str(gp("missed_grasp_near").value),
        )
        self.cam = self.contract.cameras[0]
        self.lock = threading.RLock()  # the recorder reads env state from its own node callbacks
        self.paused = bool(gp("start_paused").value)
        self.steps = 0
        self._t0 = self._origin(0.0)
        self.follower = TrajectoryFollower(self.contract.joint_names, np.zeros(7))
        # In-process only (no parameter): called as start_hook(env, seed) after each reset to move
        # the scene to where the episode should start (apt_core.sim.policy_start.PolicyStart).
        self.start_hook: Callable[[TabletopEnv, int], object] | None = None

        c = self.contract
        self.pub_js = self.create_publisher(JointState, c.joint_state_topic, 10)
        self.pub_img = self.create_publisher(Image, self.cam.topic, qos_profile_sensor_data)
        self.pub_info = (
            self.create_publisher(CameraInfo, self.cam.info_topic, qos_profile_sensor_data)
            if self.cam.info_topic
            else None
        )
        self.pub_success = self.create_publisher(Bool, c.success_topic or "/apt_sim/success", 10)
        self.pub_subtasks = self.create_publisher(
            UInt32, c.subtasks_done_topic or "/apt_sim/subtasks_done", 10
        )
        self.pub_instr = self.create_publisher(String, c.instruction_topic, LATCHED)
        self.create_subscription(JointTrajectory, c.controller_topic, self._on_trajectory, 10)
        self.create_subscription(Float64MultiArray, GRIPPER_TOPIC, self._on_gripper, 10)
        self.create_service(ResetSim, "/apt_sim/reset", self._on_reset)
        self.create_service(SetBool, "/apt_sim/pause", self._on_pause)
        self._do_reset(int(gp("seed").value), str(gp("split").value), "")
        period = c.dt / self.speed if self.speed > 0 else 0.001
        self.timer = self.create_timer(period, self._tick)
        self.get_logger().info(
            f"apt_sim ready: {c.robot_name}, {self.env.width}x{self.env.height} camera '{self.cam.name}', "
            f"{c.rate_hz:g} Hz, speed {self.speed:g}"
            + (f", disturbance {self.env.disturbance.std:g} rad" if self.env.disturbance else "")
            + (
                f", missed-grasp starts {self.env.missed_grasp:g} (beside {self.env.missed_grasp_near})"
                if self.env.missed_grasp
                else ""
            )
            + f"; task: {self.env.task.instruction!r}"
        )

    # ----- time ----------------------------------------------------------------------------------
    def _node_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _origin(self, last: float) -> float:
        """The virtual clock's origin at a reset: one control period before node time, and after
        `last`, the newest stamp sent, so that stamps keep increasing across resets even when
        running faster than real time.

        A tick simulates the period ahead and publishes its end, so at speed 1 a tick's state is
        computed up to one period early; starting one period back keeps stamps from running
        ahead of node time (a real robot's stamps lag). The origin used to be node time or the
        last stamp plus a period: each reset then added up to a period of lead, and after the
        demo's four scenes stamps ran 0.36 s ahead of the policy node's clock."""
        return max(self._node_now() - self.contract.dt, last + 1e-3)

    def stamp_now(self) -> float:
        """Virtual time [s]: node time at the last reset + simulated time since."""
        return self._t0 + self.env.time

    # ----- callbacks -----------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            points = [
                TrajectoryPoint(
                    p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
                    tuple(p.positions),
                    tuple(p.velocities),
                )
                for p in msg.points
            ]
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self.lock:
                # JTC: a zero stamp means "start now"; otherwise start at the stamp (virtual clock).
                start = self.env.time if stamp == 0.0 else stamp - self._t0
                self.follower.set_trajectory(list(msg.joint_names), points, start)
        except TrajectoryError as e:
            self.get_logger().error(f"rejected trajectory on {self.contract.controller_topic}: {e}; holding")
        except Exception as e:  # never let a malformed message kill the node
            self.get_logger().error(f"rejected trajectory ({type(e).__name__}: {e}); holding")

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        try:
            data = list(msg.data)
            if len(data) != 1 or not math.isfinite(data[0]) or not 0.0 <= data[0] <= GRIPPER_MAX:
                raise TrajectoryError(
                    f"expected data=[opening] with 0 <= opening <= {GRIPPER_MAX} m, got {data}"
                )
            with self.lock:
                self.follower.set_trajectory(
                    ["gripper"], [TrajectoryPoint(GRIPPER_MOVE_TIME, (data[0],))], self.env.time
                )
        except Exception as e:  # never let a malformed message kill the node
            self.get_logger().error(f"rejected gripper command on {GRIPPER_TOPIC}: {e}; holding")

    def _on_pause(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        with self.lock:
            self.paused = bool(req.data)
        resp.success, resp.message = True, "paused" if self.paused else "running"
        return resp

    def _on_reset(self, req: ResetSim.Request, resp: ResetSim.Response) -> ResetSim.Response:
        try:
            self._do_reset(int(req.seed), req.split or "in_distribution", req.instruction)
            resp.success = True
            resp.instruction = self.env.task.instruction
            resp.task = self.env.task.family
            resp.message = f"seed {req.seed}, split {req.split or 'in_distribution'}"
        except (TaskError, ValueError) as e:
            resp.success, resp.message = False, str(e)
            self.get_logger().error(f"reset failed: {e}")
        except Exception as e:
            resp.success, resp.message = False, f"{type(e).__name__}: {e}"
            self.get_logger().error(f"reset failed: {traceback.format_exc()}")
        return resp

    def _do_reset(self, seed: int, split: str, instruction: str) -> None:
        with self.lock:
            last = self.stamp_now() if self.steps else 0.0
            self.env.reset(seed, split, instruction or None)  # raises before changing anything on bad input
            if self.start_hook is not None:
                self.start_hook(self.env, seed)
            self._t0 = self._origin(last)
            self.follower.hold(self.env.joint_positions())
            self.pub_instr.publish(String(data=self.env.task.instruction))
            self._publish()

    def _tick(self) -> None:
        try:
            with self.lock:
                if self.paused:
                    return
                follow(self.env, self.follower, self.env.n_substeps)  # the JTC, sampled at 100 Hz
                self.env._update_progress()
                self.steps += 1
                self._publish()
        except Exception:
            self.get_logger().error(f"sim step failed: {traceback.format_exc()}")

    def _publish(self) -> None:
        stamp = to_time_msg(self.stamp_now())
        js = JointState()
        js.header.stamp = stamp
        js.header.frame_id = self.contract.base_frame
        js.name = list(self.contract.joint_names)
        js.position = self.env.joint_positions().tolist()
        js.velocity = self.env.joint_velocities().tolist()
        js.effort = [0.0] * 7  # filled so rosbags' CDR reader never sees empty trailing arrays
        self.pub_js.publish(js)
        rgb = self.env.render(self.cam.name)
        img = Image()
        img.header.stamp = stamp
        img.header.frame_id = f"{self.cam.name}_camera_optical_frame"
        img.height, img.width = rgb.shape[:2]
        img.encoding = "rgb8"
        img.step = img.width * 3
        img.data = rgb.tobytes()
        self.pub_img.publish(img)
        if self.pub_info is not None:
            k = self.env.camera_intrinsics(self.cam.name)
            info = CameraInfo()
            info.header = img.header
            info.height, info.width = img.height, img.width
            info.distortion_model = "plumb_bob"
            info.d = [0.0] * 5
            info.k = k.reshape(-1).tolist()
            info.r = np.eye(3).reshape(-1).tolist()
            info.p = np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist()
            self.pub_info.publish(info)
        self.pub_success.publish(Bool(data=bool(self.env.success())))
        self.pub_subtasks.publish(UInt32(data=int(self.env.subtask_progress())))


def _desc(text: str):
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(description=text)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = SimNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.env.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
