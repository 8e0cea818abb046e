from glob import glob

from setuptools import find_packages, setup

package_name = "frozen_vlm_perception"

setup(
    name=package_name,
    version="0.2.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/models/demo", glob("models/demo/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="frozen_vlm_perception team",
    maintainer_email="team@frozen-vlm-perception.invalid",
    description="Camera + IMU perception for frozen vision-language models, as ROS 2 nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fvp = frozen_vlm_perception.cli:main",
            "perception_node = frozen_vlm_perception.nodes.perception_node:main",
            "reasoning_node = frozen_vlm_perception.nodes.reasoning_node:main",
        ],
    },
)
