"""Performance measurements that return rows of results (printed by benchmarks/ and `miniplaces bench`)."""
