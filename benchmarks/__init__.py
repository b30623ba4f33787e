"""e-Link benchmarks: load generators and cost measurements; results are
written to docs/performance.md."""
