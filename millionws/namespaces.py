"""Channel options by namespace: replay, history, presence, who may publish, and publish rates per channel.

Theory of operation: one global setting per channel property fits no real product (a chat wants presence and
a long replay, a ticker wants neither and only backends publishing), so ``--channel-options`` holds rules,
each a pattern and the options it changes::

    chat:* presence=on join-leave=on replay-messages=200; ticker:* publish=backend replay-seconds=10

* A pattern is a channel name (exact) or a prefix ending in ``*`` (the only wildcard: a namespace).  The
  longest matching pattern wins, so ``chat:vip:*`` refines ``chat:*`` whatever the order of the rules; an
  exact name beats every prefix.  Patterns may name user channels (``@user:*``).
* What a rule leaves out comes from the global flags (``--replay-seconds``, ``--rate-limit-publishes``...),
  so a configuration without rules behaves as before.
* Every option is checked at start: an unknown key, a bad value or a pattern given twice stops the server
  with one line naming it (``Config.validate`` parses the rules).

A lookup costs one dict probe and, when prefix rules exist, one ``startswith`` per prefix rule (longest
first): no per-channel cache, so a million channels cost nothing here.  :class:`ChannelOptions` objects are
shared by every channel of a rule.
"""

from __future__ import annotations

import re
from typing import Any

_PATTERN_RE = re.compile(r"[A-Za-z0-9._:@+=|-]{1,128}\*?\Z|\*\Z")
_ON = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


class ChannelOptions:
    """What one channel may do, and how much of it is kept.  Read-only once built."""

    __slots__ = ("history", "join_leave", "pattern", "presence", "publish", "rate_limit_publishes",
                 "replay_max_bytes", "replay_max_messages", "replay_seconds")

    def __init__(self, pattern: str, replay_seconds: float, replay_max_messages: int, replay_max_bytes: int,
                 rate_limit_publishes: float, history: bool = True, presence: bool = False,
                 join_leave: bool = False, publish: str = "clients") -> None:
        self.pattern = pattern  # the rule it came from ("" for the global defaults): /stats and errors name it
        self.replay_seconds = replay_seconds
        self.replay_max_messages = replay_max_messages
        self.replay_max_bytes = replay_max_bytes
        self.rate_limit_publishes = rate_limit_publishes
        self.history = history  # GET /channels/{c}/history may read it
        self.presence = presence  # members are tracked (GET /channels/{c}/presence, counts)
        self.join_leave = join_leave  # subscribers that ask get join and leave events
        self.publish = publish  # "clients": /pubsub and backends; "backend": HTTP API (and broker) only

    @property
    def replays(self) -> bool:
        """Whether anything is kept for ``since`` and history."""
        return self.replay_seconds > 0 and self.replay_max_messages > 0

    @property
    def clients_publish(self) -> bool:
        return self.publish == "clients"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"<ChannelOptions {self.as_dict()}>"


def _number(kind: type, minimum: float, positive: bool = False) -> Any:
    def convert(raw: str) -> Any:
        value = kind(raw)
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (positive and value <= 0):
            raise ValueError
        return value
    return convert


def _switch(raw: str) -> bool:
    return _ON[raw.lower()]


def _publish(raw: str) -> str:
    if raw not in ("clients", "backend"):
        raise ValueError
    return raw


# key in a rule -> (attribute, converter, what a valid value is)
_KEYS: dict[str, tuple[str, Any, str]] = {
    "replay-seconds": ("replay_seconds", _number(float, 0), "a number of seconds >= 0"),
    "replay-messages": ("replay_max_messages", _number(int, 0), "an integer >= 0"),
    "replay-bytes": ("replay_max_bytes", _number(int, 0, positive=True), "an integer > 0"),
    "rate-limit-publishes": ("rate_limit_publishes", _number(float, 0), "publishes per second >= 0 (0: off)"),
    "history": ("history", _switch, "on or off"),
    "presence": ("presence", _switch, "on or off"),
    "join-leave": ("join_leave", _switch, "on or off"),
    "publish": ("publish", _publish, "clients or backend"),
}
KEYS = tuple(_KEYS)


class Namespaces:
    """The rules of ``--channel-options``, and the options of any channel."""

    __slots__ = ("default", "exact", "prefixes", "rules")

    def __init__(self, spec: str, default: ChannelOptions) -> None:
        self.default = default
        self.exact: dict[str, ChannelOptions] = {}
        self.rules: list[ChannelOptions] = []
        prefixes: list[tuple[str, ChannelOptions]] = []
        for text in spec.split(";"):
            words = text.split()
            if not words:
                continue
            pattern = words[0]
            if "=" in pattern or not _PATTERN_RE.match(pattern):
                raise ValueError(f"channel_options: {pattern!r} is not a pattern (a channel name, or a prefix "
                                 "ending in *, like chat:*)")
            values = default.as_dict()
            values["pattern"] = pattern
            for word in words[1:]:
                key, sep, raw = word.partition("=")
                if not sep or key not in _KEYS:
                    raise ValueError(f"channel_options: {pattern}: {word!r} is not key=value with a key among "
                                     f"{', '.join(KEYS)}")
                attribute, convert, valid = _KEYS[key]
                try:
                    values[attribute] = convert(raw)
                except (ValueError, KeyError):
                    raise ValueError(f"channel_options: {pattern}: {key} must be {valid}, not {raw!r}") from None
            if values["join_leave"] and not values["presence"]:
                raise ValueError(f"channel_options: {pattern}: join-leave=on needs presence=on")
            options = ChannelOptions(**values)
            if pattern in self.exact or any(p + "*" == pattern for p, _ in prefixes):
                raise ValueError(f"channel_options: {pattern} is given twice")
            if pattern.endswith("*"):
                prefixes.append((pattern[:-1], options))
            else:
                self.exact[pattern] = options
            self.rules.append(options)
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        self.prefixes = tuple(prefixes)

    def of(self, channel: str) -> ChannelOptions:
        """The options of ``channel``: its exact rule, else its longest prefix rule, else the defaults."""
        options = self.exact.get(channel)
        if options is not None:
            return options
        for prefix, options in self.prefixes:
            if channel.startswith(prefix):
                return options
        return self.default

    def any(self, attribute: str) -> bool:
        """Whether some channel may have ``attribute`` on (e.g. presence): lets a worker skip what no rule uses."""
        return bool(getattr(self.default, attribute)) or any(getattr(rule, attribute) for rule in self.rules)


def namespaces_of(config: Any) -> Namespaces:
    """The rules of a :class:`config.Config` (already validated: it parsed them once)."""
    default = ChannelOptions("", config.replay_seconds, config.replay_max_messages, config.replay_max_bytes,
                             config.rate_limit_publishes)
    return Namespaces(config.channel_options, default)
