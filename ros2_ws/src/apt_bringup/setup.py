from glob import glob

from setuptools import find_packages, setup

package_name = "apt_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
        (f"share/{package_name}/rviz", glob("rviz/*.rviz")),
        # the shipped default policy (trained by apt-pipeline; see its TRAINING_REPORT.md)
        (f"share/{package_name}/policies/default", glob("policies/default/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    description="Launch, configuration and RViz files of the APT stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "apt-launch = apt_bringup.graph:main",
            "apt-demo = apt_bringup.demo:main",
        ]
    },
)
