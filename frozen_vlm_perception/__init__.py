"""frozen_vlm_perception: camera + IMU perception for frozen vision-language models, as ROS 2 nodes."""

__version__ = "0.2.0"
