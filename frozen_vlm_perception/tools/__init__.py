"""Tools that drive the robot nodes from outside, to demonstrate or measure them: ``fvp demo``,
``fvp bench`` (and its system part), ``fvp soak``, the latency probe and the stamp echo node.

They start nodes in child processes through one harness (:mod:`.harness`). Nothing in ``nodes/``
imports them; outside this folder only ``cli.py`` does, and ``evaluation/through_ros.py`` uses the
harness (docs/ARCHITECTURE.md section 1).
"""
