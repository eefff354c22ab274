from setuptools import find_packages, setup

package_name = "apt_sim"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    description="Simulated MuJoCo tabletop arm for the APT stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "apt-sim = apt_sim.sim_node:main",
            "apt-record-demos = apt_sim.record_demos:main",
            "apt-eval-ros = apt_sim.evaluate_ros:main",
        ]
    },
)
