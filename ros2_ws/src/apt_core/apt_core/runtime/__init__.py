"""ROS-free policy runtime: chunk stitching, safety limits and watchdog, tasks, IK adapters.

The policy node (`apt_policy.policy_node`) is a thin rclpy shell around these classes; the
benchmarks and the tests drive them directly.
"""

from apt_core.runtime.ik import (
    IKAdapter,
    IKConfig,
    IKError,
    MoveItIK,
    NumericalIK,
    UrdfChain,
    ee_chunk_to_joints,
)
from apt_core.runtime.safety import SafetyFilter, SafetyLimits, SafetyViolation, StartJumpViolation, Watchdog
from apt_core.runtime.stitching import ChunkStitcher, StitchConfig, Trajectory, hold_trajectory
from apt_core.runtime.tasks import (
    CompletionConfig,
    CompletionDetector,
    InstructionError,
    Task,
    TaskQueue,
    premature_switches,
    split_chain,
    validate_instruction,
)

__all__ = [
    "ChunkStitcher",
    "CompletionConfig",
    "CompletionDetector",
    "IKAdapter",
    "IKConfig",
    "IKError",
    "InstructionError",
    "MoveItIK",
    "NumericalIK",
    "SafetyFilter",
    "SafetyLimits",
    "SafetyViolation",
    "StartJumpViolation",
    "StitchConfig",
    "Task",
    "TaskQueue",
    "Trajectory",
    "UrdfChain",
    "Watchdog",
    "ee_chunk_to_joints",
    "hold_trajectory",
    "premature_switches",
    "split_chain",
    "validate_instruction",
]
