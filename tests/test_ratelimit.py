from __future__ import annotations

from millionws.ratelimit import KeyedBuckets, Rate


def test_bucket_allows_burst_then_rate():
    rate = Rate(10, burst=5)
    bucket = rate.new_bucket(0.0)
    assert [rate.take(bucket, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert rate.take(bucket, 0.1)  # 0.1 s at 10/s refills one token
    assert not rate.take(bucket, 0.1)
    assert [rate.take(bucket, 100.0) for _ in range(6)] == [True] * 5 + [False]  # capped at the burst


def test_cost_in_bytes():
    rate = Rate(1000)
    bucket = rate.new_bucket(0.0)
    assert rate.take(bucket, 0.0, 800)
    assert not rate.take(bucket, 0.0, 800)
    assert rate.take(bucket, 0.6, 800)


def test_keyed_buckets_forget_idle_keys():
    buckets = KeyedBuckets(Rate(1), idle=10)
    for i in range(100):
        assert buckets.take(f"10.0.0.{i}", 0.0)
    assert not buckets.take("10.0.0.1", 0.0)
    assert len(buckets) == 100
    buckets.take("new", 20.0)
    assert len(buckets) == 1
