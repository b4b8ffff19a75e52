from __future__ import annotations

from millionws.core.buffers import BufferPool, ReceiveBuffer


def test_pool_reuses_and_empties_buffers():
    pool = BufferPool(max_free=2)
    a = pool.acquire()
    a += b"x" * 100_000
    pool.release(a)
    assert len(pool) == 1
    b = pool.acquire()
    assert b is a and len(b) == 0
    assert b.__alloc__() < 100  # the storage went back to the allocator
    assert (pool.created, pool.reused) == (1, 1)


def test_pool_is_bounded():
    pool = BufferPool(max_free=2)
    buffers = [pool.acquire() for _ in range(5)]
    for buf in buffers:
        pool.release(buf)
    assert len(pool) == 2


def test_receive_buffer_views_one_allocation():
    rb = ReceiveBuffer(1024)
    assert len(rb.view) == 1024 and rb.iov[0] is rb.buf
