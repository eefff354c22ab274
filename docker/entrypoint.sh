#!/usr/bin/env bash
# Source system ROS 2 Jazzy and the APT workspace, then run the given command.
set -e
source /opt/ros/jazzy/setup.bash
source /apt/ros2_ws/install/setup.bash
exec "$@"
