"""Parameters of the policy node: name, default and description, in one table.

The node declares exactly these (with their descriptions, visible in `ros2 param describe`), the
bringup graph (`apt_bringup.graph`) validates parameter files against them, and docs/runtime.md
lists them. Values come from `apt_bringup/config/*.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str  # ROS parameter name
    default: Any  # default value; its type is the parameter's type
    description: str  # shown by `ros2 param describe` and in docs/runtime.md


POLICY_PARAMS: tuple[Param, ...] = (
    Param("contract", "", "Path of the topic contract YAML; empty = the simulated arm's contract"),
    Param("checkpoint", "", "Checkpoint directory (safetensors + JSON) loaded with apt_core.model.runner"),
    Param(
        "policy_factory",
        "",
        "Alternative to checkpoint: 'module:callable' returning a ChunkPolicy (scripted expert, tests)",
    ),
    Param("device", "cpu", "Torch device for the model: cpu | cuda | cuda:N"),
    Param(
        "noise_scale",
        0.0,
        "Sampling noise of a checkpoint times this, >= 0 (0: the same chunk for the same input; 1: as trained)",
    ),
    Param("controller_topic", "", "JointTrajectory command topic; empty = the contract's controller_topic"),
    Param("status_rate_hz", 10.0, "Rate of /apt/status (PolicyStatus) and the watchdog check [Hz], >= 5"),
    Param("replan_steps", 4, "Compute a new chunk every this many control steps (asynchronous inference)"),
    Param(
        "lead_time_s",
        0.02,
        "A trajectory starts this long after it is built [s] (transport + controller pickup)",
    ),
    Param("stitch_method", "ensemble+rtc", "Chunk stitching: none | ensemble | rtc | ensemble+rtc"),
    Param("ensemble_chunks", 4, "Chunks averaged per time step by temporal ensembling (APT release: 4)"),
    Param("ensemble_decay", 0.1, "Exponential weight decay of temporal ensembling per step of age"),
    Param("blend_steps", 4, "Steps over which a new chunk is blended in from the executing plan (RTC)"),
    Param("max_skew_s", 0.1, "Max time between camera and joint-state stamps of one observation [s]"),
    Param("joint_state_timeout_s", 0.25, "Watchdog: hold when joint states are older than this [s]"),
    Param("image_timeout_s", 0.5, "Watchdog: hold when a camera image is older than this [s]"),
    Param("task_timeout_s", 120.0, "Default task timeout [s]; 0 = none"),
    Param("safety_mode", "clamp", "clamp: rewrite commands to fit the limits | reject: hold instead"),
    Param(
        "position_lower",
        [-3.14159],
        "Lower joint limits [rad|m] in contract joint order; one value = every joint (the URDF may tighten them)",
    ),
    Param(
        "position_upper",
        [3.14159],
        "Upper joint limits [rad|m] in contract joint order; one value = every joint (the URDF may tighten them)",
    ),
    Param("velocity_limit", 1.5, "Max |joint velocity| [rad/s|m/s] (all joints; the URDF may tighten it)"),
    Param("acceleration_limit", 5.0, "Max |joint acceleration| [rad/s^2|m/s^2] (all joints)"),
    Param(
        "max_start_jump",
        0.3,
        "Reject a trajectory whose first point is farther than this from where the arm should be (newest joint state + the commanded motion since) [rad|m]",
    ),
    Param(
        "urdf",
        "",
        "URDF for limits, IK and the predicted end-effector path; empty = the sim arm's URDF when it exists",
    ),
    Param("base_link", "base_link", "Root link of the kinematic chain (IK, markers)"),
    Param("ee_link", "", "End-effector link (IK, markers); empty = the last link of the chain"),
    Param(
        "ik_backend", "numerical", "IK for ee_pose actions: numerical (built in) | moveit (needs moveit_py)"
    ),
    Param(
        "gripper_joint",
        "",
        "Joint that takes the gripper value of ee_pose actions; empty = the contract's action.gripper_joint",
    ),
    Param(
        "min_subtask_s",
        3.0,
        "Never judge a subtask complete sooner than this [s] (premature switching guard)",
    ),
    Param(
        "settle_motion", 0.02, "A chunk moving less than this [rad] counts as settled (completion heuristic)"
    ),
    Param("settle_chunks", 3, "Consecutive settled chunks that complete a subtask"),
    Param(
        "use_success_topic",
        True,
        "Complete subtasks on the contract's success (std_msgs/Bool) and subtasks-done (std_msgs/UInt32) "
        "topics when it names them",
    ),
    Param(
        "publish_markers",
        True,
        "Publish the predicted end-effector path as a MarkerArray on /apt/predicted_path",
    ),
)

PARAM_NAMES = frozenset(p.name for p in POLICY_PARAMS)


def check_param_file(params: dict[str, Any], where: str) -> None:
    """Raise ValueError naming unknown parameters or wrong types in a node's parameter mapping."""
    known = {p.name: p for p in POLICY_PARAMS}
    for name, value in params.items():
        if name == "use_sim_time":
            continue
        if name not in known:
            raise ValueError(f"{where}: unknown parameter {name!r} (known: {sorted(known)})")
        want = type(known[name].default)
        ok = isinstance(value, want) or (
            want is float and isinstance(value, int) and not isinstance(value, bool)
        )
        if want is list:
            ok = isinstance(value, list)
        if not ok:
            raise ValueError(f"{where}: parameter {name!r} must be {want.__name__}, got {value!r}")
