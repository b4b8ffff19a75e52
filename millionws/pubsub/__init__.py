"""Channels: subscriptions, sequencers, replay, and how messages travel between workers (mesh) and nodes (brokers/).

``channels`` is the entry the applications use (docs/architecture.md)."""
