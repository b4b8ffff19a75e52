"""millionws: a WebSocket server for a million concurrent connections (epoll, h11, wsproto)."""

__version__ = "0.1.0"
