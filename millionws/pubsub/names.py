"""What a client may call a channel, the reserved channel of a user, and how a request about channels is refused.

Theory of operation:

* Channel names are ``A-Z a-z 0-9 . _ : -``, 1 to 128 of them: nothing in that alphabet needs escaping in
  JSON, a NATS subject or a Redis key, so a name goes into a frame, a record or a broker command as it is,
  and a frame built around it (:func:`channels.message_frame`) cannot be broken by it.
* Users: a connection that carries a user id is subscribed to the reserved channel ``@user:<id>``.
  ``@`` is outside the client alphabet, so no client can name another user's channel; a user may name
  its own (to resume it with ``since``), which the apps layer allows for that connection only.
* User ids (token ``sub``, ``/users/{id}``, ``?user=``) are the channel alphabet plus what identity
  providers put in a subject (``auth0|5f7c...``, ``alice@example.com``, ``a+b``, base64 ``=``), still
  nothing that needs escaping.  Both patterns live in :mod:`records`, where names arriving from other
  workers are checked against them.
* Every refusal of a request about channels, wherever in pubsub it is decided (a limit of the registry,
  a name, an authorization in the apps layer), is one :class:`ChannelError` whose ``code`` the client gets.
"""

from __future__ import annotations

from .records import CHANNEL_RE, USER_PREFIX, USER_RE


def valid_channel(name: object) -> bool:
    """A client may name ``name``: a string of 1 to 128 of ``A-Z a-z 0-9 . _ : -``."""
    return isinstance(name, str) and CHANNEL_RE.match(name) is not None


def valid_user(user: object) -> bool:
    """A user id: a string of 1 to 128 of ``A-Z a-z 0-9 . _ : - @ + = |``."""
    return isinstance(user, str) and USER_RE.match(user) is not None


def user_channel(user: str) -> str:
    """The reserved channel of a user id (see :func:`valid_user`)."""
    return USER_PREFIX + user


class ChannelError(Exception):
    """A request refused: ``code`` is the error code the client gets."""

    def __init__(self, code: str, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.channel = channel
