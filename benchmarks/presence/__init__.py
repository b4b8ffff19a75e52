"""Presence benchmark (issue 13): join cost, memory per member, coalescing and list time at 10 000 members."""
