"""Speed benchmarks of flowforge beside nflows, normflows and zuko (``python -m benchmarks``)."""
