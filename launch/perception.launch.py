"""Perception + reasoning nodes, for robots with ``ros2 launch`` (launch_ros).

    ros2 launch frozen_vlm_perception perception.launch.py [params_file:=...] [namespace:=/robot1] \
        [camera_topic:=/cam/image] [imu_topic:=/imu] [use_sim_time:=true]

Both are lifecycle nodes that configure and activate themselves (their ``autostart`` parameter,
true by default); set it false in the params file to drive them from a lifecycle manager instead.
Machines without launch_ros: ``python -m frozen_vlm_perception.nodes.runner`` does the same in one
process.
"""

from launch.actions import DeclareLaunchArgument
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

PACKAGE = "frozen_vlm_perception"


def generate_launch_description() -> LaunchDescription:
    params_file = LaunchConfiguration("params_file")
    namespace = LaunchConfiguration("namespace")
    use_sim_time = LaunchConfiguration("use_sim_time")
    # The nodes subscribe to these names by default; remapping keeps the params file unchanged.
    remappings = [
        ("/camera/image_raw", LaunchConfiguration("camera_topic")),
        ("/imu/data", LaunchConfiguration("imu_topic")),
    ]
    common = {"namespace": namespace, "output": "screen", "emulate_tty": True}
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "perception.yaml"]),
            description="ROS parameters of both nodes",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to use"),
        DeclareLaunchArgument("imu_topic", default_value="/imu/data",
                              description="sensor_msgs/Imu topic to use"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (bag replay)"),
        LifecycleNode(
            package=PACKAGE, executable="perception_node", name="perception",
            parameters=[params_file, {"use_sim_time": use_sim_time}], remappings=remappings, **common,
        ),
        LifecycleNode(
            package=PACKAGE, executable="reasoning_node", name="reasoning",
            parameters=[params_file, {"use_sim_time": use_sim_time}], **common,
        ),
    ])
