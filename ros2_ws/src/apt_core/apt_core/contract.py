"""The topic contract: one YAML description of topics, joints, rates and action space.

The recorder, the rosbag2 converter and the policy node all read the same file, so a dataset
recorded on a robot is always consumed with the joint order, image size and rate it was made with.
`load_contract()` validates the file and names the offending key on any error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SIM_CONTRACT_PATH = Path(__file__).parent / "configs" / "sim_contract.yaml"

ACTION_SPACES = ("joint_position", "joint_delta", "ee_pose")
ACTION_SOURCES = ("command", "next_state", "ee_pose")
INSTRUCTION_SOURCES = ("topic", "metadata")
IMAGE_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1")


class ContractError(ValueError):
    """A contract file is missing a key or holds an invalid value; the message names the key."""


@dataclass(frozen=True)
class CameraSpec:
    name: str  # short name used as the dataset key `observation.images.<name>`
    topic: str  # sensor_msgs/Image (or CompressedImage when compressed) topic
    info_topic: str = ""  # sensor_msgs/CameraInfo topic; empty when not published
    encoding: str = "rgb8"  # encoding the robot publishes; others are converted on the way in
    compressed: bool = False  # True: sensor_msgs/CompressedImage (jpeg/png)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ContractError(f"cameras[].name {self.name!r} must be an identifier")
        if not self.topic.startswith("/"):
            raise ContractError(f"cameras[{self.name}].topic {self.topic!r} must be absolute")
        if not self.compressed and self.encoding not in IMAGE_ENCODINGS:
            raise ContractError(
                f"cameras[{self.name}].encoding {self.encoding!r} not one of {IMAGE_ENCODINGS}"
            )


@dataclass(frozen=True)
class Contract:
    robot_name: str
    joint_names: tuple[str, ...]  # order of joints in datasets, models and trajectories
    joint_state_topic: str
    cameras: tuple[CameraSpec, ...]
    rate_hz: float  # control and dataset rate [Hz]
    chunk_length: int  # actions per predicted chunk
    controller_topic: str  # JointTrajectoryController command topic
    action_space: str = "joint_position"
    action_source: str = "command"
    command_topic: str = ""
    ee_pose_topic: str = ""
    gripper_joint: str = ""  # ee_pose actions: joint whose position is the 10th (gripper) value
    instruction_source: str = "topic"
    instruction_topic: str = "/apt/instruction"
    image_width: int = 128
    image_height: int = 128
    base_frame: str = "base_link"
    success_topic: str = ""  # optional std_msgs/Bool: the whole instruction is done (simulation)
    # optional std_msgs/UInt32: how many subtasks of the instruction are done, in order (simulation)
    subtasks_done_topic: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.joint_names:
            raise ContractError("robot.joint_names must list at least one joint")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ContractError(f"robot.joint_names has duplicates: {list(self.joint_names)}")
        if not self.cameras:
            raise ContractError("cameras must list at least one camera")
        if len({c.name for c in self.cameras}) != len(self.cameras):
            raise ContractError("cameras[].name must be unique")
        if not self.rate_hz > 0:
            raise ContractError(f"control.rate_hz must be > 0, got {self.rate_hz}")
        if self.chunk_length < 1:
            raise ContractError(f"control.chunk_length must be >= 1, got {self.chunk_length}")
        if self.action_space not in ACTION_SPACES:
            raise ContractError(f"action.space {self.action_space!r} not one of {ACTION_SPACES}")
        if self.action_source not in ACTION_SOURCES:
            raise ContractError(f"action.source {self.action_source!r} not one of {ACTION_SOURCES}")
        if self.instruction_source not in INSTRUCTION_SOURCES:
            raise ContractError(
                f"instruction.source {self.instruction_source!r} not one of {INSTRUCTION_SOURCES}"
            )
        if self.gripper_joint and self.gripper_joint not in self.joint_names:
            raise ContractError(f"action.gripper_joint {self.gripper_joint!r} is not in robot.joint_names")
        if self.image_width < 8 or self.image_height < 8:
            raise ContractError(f"image size {self.image_width}x{self.image_height} is too small")
        for key in ("success_topic", "subtasks_done_topic"):
            topic = getattr(self, key)
            if topic and not topic.startswith("/"):
                raise ContractError(f"{key} {topic!r} must be absolute (start with '/') or empty")

    @property
    def dt(self) -> float:
        """Control period [s]."""
        return 1.0 / self.rate_hz

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def to_dict(self) -> dict[str, Any]:
        return {
            "robot": {
                "name": self.robot_name,
                "joint_names": list(self.joint_names),
                "joint_state_topic": self.joint_state_topic,
                "base_frame": self.base_frame,
            },
            "cameras": [dataclasses.asdict(c) for c in self.cameras],
            "control": {
                "rate_hz": self.rate_hz,
                "chunk_length": self.chunk_length,
                "controller_topic": self.controller_topic,
            },
            "action": {
                "space": self.action_space,
                "source": self.action_source,
                "command_topic": self.command_topic,
                "ee_pose_topic": self.ee_pose_topic,
                "gripper_joint": self.gripper_joint,
            },
            "instruction": {"source": self.instruction_source, "topic": self.instruction_topic},
            "image": {"width": self.image_width, "height": self.image_height},
            "success_topic": self.success_topic,
            "subtasks_done_topic": self.subtasks_done_topic,
        }


def _get(d: dict[str, Any], path: str, default: Any = ..., where: str = "") -> Any:
    cur: Any = d
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            if default is ...:
                raise ContractError(f"{where}: missing key '{path}'")
            return default
        cur = cur[key]
    return cur


def contract_from_dict(d: dict[str, Any], where: str = "<dict>") -> Contract:
    """Build a validated Contract from parsed YAML; `where` names the source in errors."""
    if not isinstance(d, dict):
        raise ContractError(f"{where}: top level must be a mapping")
    try:
        cams = _get(d, "cameras", where=where)
        if not isinstance(cams, list):
            raise ContractError(f"{where}: 'cameras' must be a list")
        cameras = tuple(
            CameraSpec(
                name=str(_get(c, "name", where=where)),
                topic=str(_get(c, "topic", where=where)),
                info_topic=str(c.get("info_topic", "")),
                encoding=str(c.get("encoding", "rgb8")),
                compressed=bool(c.get("compressed", False)),
            )
            for c in cams
        )
        controller = str(_get(d, "control.controller_topic", where=where))
        return Contract(
            robot_name=str(_get(d, "robot.name", "robot")),
            joint_names=tuple(str(j) for j in _get(d, "robot.joint_names", where=where)),
            joint_state_topic=str(_get(d, "robot.joint_state_topic", "/joint_states")),
            base_frame=str(_get(d, "robot.base_frame", "base_link")),
            cameras=cameras,
            rate_hz=float(_get(d, "control.rate_hz", where=where)),
            chunk_length=int(_get(d, "control.chunk_length", where=where)),
            controller_topic=controller,
            action_space=str(_get(d, "action.space", "joint_position")),
            action_source=str(_get(d, "action.source", "command")),
            command_topic=str(_get(d, "action.command_topic", controller)),
            ee_pose_topic=str(_get(d, "action.ee_pose_topic", "")),
            gripper_joint=str(_get(d, "action.gripper_joint", "")),
            instruction_source=str(_get(d, "instruction.source", "topic")),
            instruction_topic=str(_get(d, "instruction.topic", "/apt/instruction")),
            image_width=int(_get(d, "image.width", 128)),
            image_height=int(_get(d, "image.height", 128)),
            success_topic=str(d.get("success_topic", "") or ""),
            subtasks_done_topic=str(d.get("subtasks_done_topic", "") or ""),
        )
    except ContractError as e:
        if str(e).startswith(where):
            raise
        raise ContractError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ContractError(f"{where}: invalid value: {e}") from None


def load_contract(path: str | Path | None = None) -> Contract:
    """Load and validate a contract YAML; None loads the simulated robot's contract."""
    p = Path(path) if path else SIM_CONTRACT_PATH
    if not p.is_file():
        raise ContractError(f"contract file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ContractError(f"{p}: not valid YAML: {e}") from None
    return contract_from_dict(data, where=str(p))
