"""Benchmarks: ``python benchmarks/run.py`` (executors on circuits) and
``python benchmarks/overhead.py`` (framework cost on a no-op task)."""
