"""A node that does nothing but echo camera stamps: the bare transport the nodes are compared with.

    python -m frozen_vlm_perception.tools.stamp_echo [--ros-args -p camera.topic:=/cam]

It subscribes to the camera with the perception node's QoS, receives every frame into Python just
as the perception node does (same message type, same deserialisation), and publishes only the
frame's header on ``~/stamps``. ``fvp bench`` measures camera stamp -> echoed header received in a
third process; the label latency through the real nodes is divided by this plus the pipeline's own
encode time (``ros_overhead_ratio``).
"""

from __future__ import annotations

import sys

from frozen_vlm_perception.nodes.parameters import ParamSpec, declare_parameters, parameter_values
from frozen_vlm_perception.nodes.qos import RELIABILITY_CHOICES, qos_profile

NODE_NAME = "stamp_echo"
READY_LINE = "stamp_echo: ready"

PARAMS = (
    ParamSpec("camera.topic", "/camera/image_raw", "Camera topic (sensor_msgs/Image)."),
    ParamSpec(
        "camera.qos_depth", 2, "Keep-last depth, as the perception node's camera subscription.", (1, 1000)
    ),
    ParamSpec(
        "camera.qos_reliability",
        "reliable",
        "Reliability, as the perception node's camera subscription.",
        choices=RELIABILITY_CHOICES,
    ),
)


def make_node(context=None):
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    node = Node(NODE_NAME, context=context)
    declare_parameters(node, PARAMS)
    values = parameter_values(node, PARAMS)
    stamps = node.create_publisher(Header, "~/stamps", 10)
    node.create_subscription(
        Image,
        values["camera.topic"],
        lambda msg: stamps.publish(msg.header),
        qos_profile(values["camera.qos_depth"], values["camera.qos_reliability"]),
    )
    return node


def main(args: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = make_node()
    print(READY_LINE, flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
