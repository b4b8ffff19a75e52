#!/bin/sh
# Raise the open-files soft limit to the hard limit, then run millionws.
#
# One WebSocket is one file descriptor. Container runtimes hand the container
# the limits of the runtime's own service (containerd.service LimitNOFILE):
# with containerd 2.x that is typically soft 1024 / hard 524288, so without
# this line a worker stops accepting (EMFILE) at ~1000 connections. Raising
# the soft limit up to the hard limit needs no privilege; raising the hard
# limit does (see infra/terraform/modules/nodegroup: LimitNOFILE drop-in).
set -eu

hard="$(ulimit -Hn)"
if [ "$hard" != "unlimited" ]; then
    ulimit -Sn "$hard"
fi
echo "millionws: open files limit soft=$(ulimit -Sn) hard=$(ulimit -Hn)" >&2

exec python -m millionws "$@"
