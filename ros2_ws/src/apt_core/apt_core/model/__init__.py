"""The APT policy model: backbones, gated fusion, action expert, stages, processor, checkpoints.

Submodules are imported lazily by users (`from apt_core.model.policy import APTPolicy`) so that
`import apt_core.model.config` stays cheap (no torch) for tools that only read configs.
"""
