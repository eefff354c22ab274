"""Bring up the APT stack with real ROS 2: `ros2 launch apt_bringup robot.launch.py sim:=true checkpoint:=...`.

Thin on purpose: the nodes, parameter files and overrides come from `apt_bringup.graph` (the same
description `apt-launch` runs where `launch` is not installed). Arguments (see --show-args):
sim, checkpoint, policy_factory, contract, controller_topic, params_file, rviz, device.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from apt_bringup.graph import ARGS, resolve


def _nodes(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in ARGS}
    actions = []
    for spec in resolve(values):
        params = list(spec.params_files) + ([dict(spec.overrides)] if spec.overrides else [])
        actions.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                parameters=params,
                arguments=list(spec.ros_args),
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in ARGS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
