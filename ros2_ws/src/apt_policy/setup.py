from setuptools import find_packages, setup

package_name = "apt_policy"

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
    description="rclpy nodes running the APT policy",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "apt-policy = apt_policy.policy_node:main",
            "apt-instruct = apt_policy.instruct_cli:main",
        ]
    },
)
