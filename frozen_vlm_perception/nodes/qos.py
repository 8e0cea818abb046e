"""QoS from parameters: the reliability choices, keep-last profiles, 'auto' reliability that follows
the publishers on a topic (:class:`FollowingSubscription`), and the incompatible-QoS warning."""

from __future__ import annotations

from collections.abc import Iterable

RELIABILITY_CHOICES = ("reliable", "best_effort")
# Subscriptions may also follow the publishers on their topic (see resolve_reliability).
RELIABILITY_AUTO = "auto"
SUBSCRIPTION_RELIABILITY_CHOICES = (RELIABILITY_AUTO, *RELIABILITY_CHOICES)


def qos_profile(depth: int, reliability: str):
    """Keep-last ``depth`` with the given reliability ('reliable' or 'best_effort'), volatile."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policies = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
    policy = policies[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy)


def resolve_reliability(setting: str, offered: Iterable[str]) -> str:
    """The reliability a subscription should use: ``setting`` unless it is 'auto'; for 'auto',
    'best_effort' when any publisher in ``offered`` (their reliabilities, 'reliable' | 'best_effort')
    is best effort, else 'reliable' (also with no publisher yet).

    A best-effort subscription receives from reliable and best-effort publishers alike, a reliable
    one from reliable publishers only; reliable is kept whenever it reaches every publisher because
    large images over loopback lose samples under best effort.
    """
    if setting != RELIABILITY_AUTO:
        return setting
    return "best_effort" if "best_effort" in set(offered) else "reliable"


def offered_reliabilities(node, topic: str) -> list[str]:
    """'reliable' | 'best_effort' for each publisher on ``topic`` (a resolved topic name) now."""
    from rclpy.qos import ReliabilityPolicy

    return ["best_effort" if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT else "reliable"
            for info in node.get_publishers_info_by_topic(topic)]


def incompatible_qos_warning(node, topic: str, parameter: str | None = None, on_lost=None,
                             auto_reliability=None):
    """Event callbacks that say loudly, once, when a publisher's QoS cannot reach our subscription.

    The classic case: a camera driver publishing best-effort (SensorDataQoS) and a subscription
    explicitly set to reliable; DDS then delivers nothing at all and, without this, nothing says why.
    The error is logged once per policy for the life of the subscription and names ``parameter``
    (e.g. 'camera.qos_reliability'), the setting that fixes it.
    ``auto_reliability()``: True while the subscription follows its publishers ('auto'); a reliability
    mismatch is then transient (:class:`FollowingSubscription` switches within its check period) and
    only logged at debug level.
    ``on_lost(n)``: called with the number of messages DDS reports lost on the way (a best-effort
    sample that never arrived, a reliable one its writer gave up on), which no callback ever sees.
    """
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.qos import QoSPolicyKind

    logged: set[int] = set()
    name = parameter or "*.qos_reliability"

    def on_incompatible(event) -> None:
        kind = int(event.last_policy_kind)
        try:
            policy = QoSPolicyKind(kind).name
        except ValueError:
            policy = str(kind)
        if kind == QoSPolicyKind.RELIABILITY and auto_reliability is not None and auto_reliability():
            node.get_logger().debug(f"{topic}: a best-effort publisher appeared; switching to best_effort")
            return
        if kind in logged:
            return
        logged.add(kind)
        if kind == QoSPolicyKind.RELIABILITY:
            fix = f"set parameter {name} to auto (or best_effort)"
        else:
            fix = f"the publisher must offer a compatible {policy} policy"
        node.get_logger().error(
            f"{topic}: a publisher's QoS is incompatible with this subscription (policy {policy}); "
            f"no message from it will arrive; {fix}"
        )

    def on_message_lost(event) -> None:
        if event.total_count_change > 0:
            on_lost(int(event.total_count_change))

    return SubscriptionEventCallbacks(
        incompatible_qos=on_incompatible, message_lost=on_message_lost if on_lost is not None else None
    )


class FollowingSubscription:
    """A keep-last subscription whose reliability is a parameter, 'auto' included.

    With 'reliable' or 'best_effort' it is an ordinary subscription. With 'auto' it starts with what
    :func:`resolve_reliability` picks for the publishers on the topic at creation, and ``check()``
    (the node calls it from a timer, every ``AUTO_QOS_CHECK_S``) looks at the publishers again and
    recreates the subscription when the pick changes, so a driver started after the node, or
    restarted with another profile, is still heard. The choice is logged when made and changed.
    """

    def __init__(self, node, msg_type, topic: str, callback, depth: int, setting: str, parameter: str,
                 on_lost=None):
        self.node, self.msg_type, self.callback = node, msg_type, callback
        self.depth, self.setting, self.parameter, self.on_lost = int(depth), setting, parameter, on_lost
        self.subscription = None
        self.reliability = ""
        self.topic_name = node.resolve_topic_name(topic)  # namespace and remaps applied
        offered = offered_reliabilities(node, self.topic_name) if self.auto else []
        self._create(resolve_reliability(setting, offered))
        self._log_choice(offered)

    @property
    def auto(self) -> bool:
        return self.setting == RELIABILITY_AUTO

    def _create(self, reliability: str) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.subscription = None
        self.subscription = self.node.create_subscription(
            self.msg_type, self.topic_name, self.callback, qos_profile(self.depth, reliability),
            event_callbacks=incompatible_qos_warning(
                self.node, self.topic_name, self.parameter, on_lost=self.on_lost,
                auto_reliability=lambda: self.auto,
            ),
        )
        self.reliability = reliability

    def check(self) -> bool:
        """Follow the publishers ('auto' only); True when the subscription was recreated."""
        if not self.auto or self.subscription is None:
            return False
        offered = offered_reliabilities(self.node, self.topic_name)
        wanted = resolve_reliability(self.setting, offered)
        if wanted == self.reliability:
            return False
        self._create(wanted)
        self._log_choice(offered)
        return True

    def _log_choice(self, offered: list[str]) -> None:
        if self.auto:
            counts = {r: offered.count(r) for r in sorted(set(offered))}
            why = f"{self.parameter} auto; publishers now: {counts or 'none yet'}"
        else:
            why = f"{self.parameter} {self.setting}"
        self.node.get_logger().info(f"{self.topic_name}: subscribed {self.reliability} ({why})")

    def destroy(self) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
        self.subscription = None


# Period of FollowingSubscription.check for 'auto' subscriptions (a graph query, cheap).
AUTO_QOS_CHECK_S = 0.5
