"""Load tools: the bounded load driver, the failover measurement, benchmarks."""
