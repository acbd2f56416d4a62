"""Performance measurements that return rows of results (`benchmarks/` prints them)."""
