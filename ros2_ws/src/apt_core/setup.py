from setuptools import find_packages, setup

package_name = "apt_core"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    package_data={"apt_core": ["**/*.yaml", "**/*.xml", "**/*.json", "**/*.urdf"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    description="ROS-free core of the APT vision-language-action stack",
    license="Apache-2.0",
    entry_points={"console_scripts": ["apt-convert = apt_core.data.convert:main"]},
)
