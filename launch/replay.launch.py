"""Replay a recording into the nodes, on the recording's clock.

    ros2 launch frozen_vlm_perception replay.launch.py bag:=/path/to/bag [rate:=1.0] [loop:=false] \
        [params_file:=...] [namespace:=...]

Starts perception.launch.py with use_sim_time and the package's bag player with /clock (the player
is plain package code: ``python -m frozen_vlm_perception.nodes.player``, which also works without
launch).
"""

import sys

from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = "frozen_vlm_perception"
PLAYER_MODULE = "frozen_vlm_perception.nodes.player"


def _player(context):
    command = [sys.executable, "-m", PLAYER_MODULE, LaunchConfiguration("bag").perform(context), "--clock",
               "--rate", LaunchConfiguration("rate").perform(context)]
    if LaunchConfiguration("loop").perform(context).lower() in ("true", "1", "yes"):
        command.append("--loop")
    return [ExecuteProcess(cmd=command, output="screen", name="bag_player")]


def generate_launch_description() -> LaunchDescription:
    nodes = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare(PACKAGE), "launch",
                                                            "perception.launch.py"])),
        launch_arguments={
            "params_file": LaunchConfiguration("params_file"),
            "namespace": LaunchConfiguration("namespace"),
            "use_sim_time": "true",
        }.items(),
    )
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 folder or .mcap/.db3 file"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        DeclareLaunchArgument("loop", default_value="false"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "perception.yaml"]),
        ),
        DeclareLaunchArgument("namespace", default_value=""),
        nodes,
        OpaqueFunction(function=_player),
    ])
