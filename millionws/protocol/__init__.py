"""The protocols, sans-IO: HTTP/1.1 (h11), WebSocket frames (fast path + pooled wsproto), the lifecycle table.

Bytes in, events and bytes out; never a socket, never the connection record's state (docs/architecture.md)."""
