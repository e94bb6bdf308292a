from chatmill.bench.machine import machine, spread, spread_text


def test_spread_is_median_and_range_and_keeps_every_repetition():
    summary = spread([3.0, 1.0, 10.0, 2.0])
    assert summary == {"median": 2.5, "min": 1.0, "max": 10.0, "repetitions": [3.0, 1.0, 10.0, 2.0]}
    assert spread_text(summary) == "2.5 (1.0–10.0)"


def test_machine_names_cpu_cores_threads_and_blas():
    info = machine()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1
    assert info["cpu"] and info["blas"] != ""
