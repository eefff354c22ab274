"""Simulated MuJoCo tabletop arm behind ros2_control-style topics, with a scripted expert and demo recording."""
