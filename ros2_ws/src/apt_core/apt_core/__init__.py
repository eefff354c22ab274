"""ROS-free core of the APT stack.

Everything that training and the ROS nodes share lives here, so that both run one code path:

- ``apt_core.contract``: the topic contract (one YAML for recorder, converter and policy node).
- ``apt_core.model``: backbones, action expert, gated fusion, two-stage APT policy, processor, checkpoints.
- ``apt_core.data``: rosbag2 -> LeRobot v3 dataset conversion and the training loader.
- ``apt_core.sim``: the MuJoCo tabletop robot, tasks and language, scripted expert, evaluation.
- ``apt_core.runtime``: chunk scheduling and stitching, safety limits, IK, instruction queue.

Nothing in this package imports rclpy.
"""

__version__ = "0.1.0"
