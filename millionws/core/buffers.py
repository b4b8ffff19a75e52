"""Buffers borrowed from a pool and given back.

An idle connection holds no buffer at all: reads go into one receive buffer per worker,
and a connection takes a pending-output buffer only while the kernel refuses its bytes.
The pool keeps a bounded number of buffer objects so that a burst of slow writers does
not turn into a burst of object allocations.  ``bytearray.clear()`` gives the storage
back to the allocator, so a pooled buffer is an empty object: a 1 MiB backlog that
drained does not pin 1 MiB.
"""

from __future__ import annotations

from ..config import DEFAULTS


class BufferPool:
    """A free list of ``bytearray`` objects.

    ``max_free``: how many empty buffers are kept (``--buffer-pool-size``).
    """

    __slots__ = ("_free", "max_free", "created", "reused")

    def __init__(self, max_free: int = DEFAULTS.buffer_pool_size) -> None:
        self._free: list[bytearray] = []
        self.max_free = max_free
        self.created = 0
        self.reused = 0

    def acquire(self) -> bytearray:
        if self._free:
            self.reused += 1
            return self._free.pop()
        self.created += 1
        return bytearray()

    def release(self, buf: bytearray) -> None:
        buf.clear()
        if len(self._free) < self.max_free:
            self._free.append(buf)

    def __len__(self) -> int:
        return len(self._free)


class ReceiveBuffer:
    """The worker's single receive buffer and a view on it (``recv_into`` target); ``--receive-buffer``."""

    __slots__ = ("buf", "view", "iov")

    def __init__(self, size: int = DEFAULTS.receive_buffer) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.iov = [self.buf]  # os.readv wants a sequence; build it once
