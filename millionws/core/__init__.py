"""Descriptors, readiness, deadlines and bytes: the epoll reactor and its timer wheel, the transport seam, buffers.

Knows nothing of HTTP or WebSocket; imports only config (docs/architecture.md)."""
