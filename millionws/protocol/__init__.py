"""The protocols, sans-IO: HTTP/1.1 (h11), WebSocket frames (fast path + pooled wsproto), permessage-deflate
(its negotiation and its frames), the lifecycle table.

Bytes in, events and bytes out; never a socket, never the connection record's state (docs/architecture.md)."""
