"""Processes and the life of every connection: the supervisor, and the worker with its parts (acceptor,
HTTP pipeline, output, closing, keepalive, limits) around the connection record (docs/architecture.md)."""
