"""Benchmark harness for the notification server (see bench/README.md and docs/performance.md)."""
