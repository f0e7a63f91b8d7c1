"""ldpool's benchmark suite: pytest-benchmark files (bench_*.py) plus the
`ldpool bench` and `ldpool demo` runners. Installed as `ldpool_benchmarks`."""
