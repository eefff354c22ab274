from setuptools import find_packages, setup

setup(
    name="apt_training",
    version="0.1.0",
    packages=find_packages(),
    description="Training entry points of the APT stack (stage 1, stage 2, pipeline, comparison)",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "apt-train-stage1 = apt_training.stage1:cli",
            "apt-train-stage2 = apt_training.stage2:cli",
            "apt-compare = apt_training.compare:main",
            "apt-pipeline = apt_training.pipeline:main",
        ]
    },
)
