"""rclpy nodes running the APT policy: /apt/instruct, /apt/execute, chunked trajectories to ros2_control."""
