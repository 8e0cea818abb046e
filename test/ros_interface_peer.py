"""A separate process for test_ros_interfaces: serves QueryScene, publishes ActivityLabel and Image.

Run as a script by the test; exits after --seconds or on SIGTERM. ``--drop-first N``: the first N
requests are handled but their responses never sent (printed as "dropped response N"), as Fast DDS
loses an answer sent before the server has matched the client's response reader.
"""

from __future__ import annotations

import argparse
import signal

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

from frozen_vlm_perception_interfaces.msg import ActivityLabel
from frozen_vlm_perception_interfaces.srv import QueryScene


class Peer(Node):
    def __init__(self, drop_first: int = 0) -> None:
        super().__init__("interface_peer")
        self.count = 0
        self.labels = self.create_publisher(ActivityLabel, "peer/activity", 10)
        self.images = self.create_publisher(Image, "peer/image", 10)
        service = self.create_service(QueryScene, "peer/query", self.on_query)
        self.create_timer(0.05, self.publish)
        if drop_first > 0:
            send, dropped = service.send_response, [0]

            def send_or_drop(response, header) -> None:
                if dropped[0] < drop_first:
                    dropped[0] += 1
                    print(f"dropped response {dropped[0]}", flush=True)
                    return
                send(response, header)

            service.send_response = send_or_drop  # the executor sends every response through this

    def publish(self) -> None:
        self.count += 1
        stamp = self.get_clock().now().to_msg()
        image = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
        image.header.stamp = stamp
        image.header.frame_id = "camera"
        self.images.publish(image)
        label = ActivityLabel(
            label="walking",
            confidence=0.75,
            candidate_labels=["walking", "sitting"],
            scores=[0.75, 0.25],
            source=ActivityLabel.SOURCE_FUSED,
        )
        label.header = image.header
        self.labels.publish(label)

    def on_query(self, request: QueryScene.Request, response: QueryScene.Response) -> QueryScene.Response:
        response.success = bool(request.question.strip())
        response.message = "" if response.success else "empty question"
        response.answer = f"echo: {request.question} ({request.max_new_tokens})"
        response.activity = "walking"
        response.confidence = 0.75
        response.scene_stamp = request.stamp
        response.latency = 0.001
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--drop-first", type=int, default=0, help="never send the first N responses")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    rclpy.init()
    node = Peer(drop_first=args.drop_first)
    node.create_timer(args.seconds, lambda: rclpy.try_shutdown())
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
