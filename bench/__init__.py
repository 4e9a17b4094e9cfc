"""`make bench`: the service's throughput and latency against a minimal uninstrumented
reference app, side by side in one run (see docs/performance.md)."""
