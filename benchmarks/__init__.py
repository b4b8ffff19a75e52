"""Benchmark instruments for millionws: peer servers, a load generator and a memory driver."""
