"""Benchmarks (`make bench-data`, `bench-train`, `bench-eval`, `bench-gpu`): commands of the package,
`python -m chatmill.bench.NAME`; results are printed and written to benchmarks/results/."""
