from chatmill.bench.machine import machine, ratios, round_orders, spread, spread_text


def test_spread_is_median_and_range_and_keeps_every_repetition():
    summary = spread([3.0, 1.0, 10.0, 2.0])
    assert summary == {"median": 2.5, "min": 1.0, "max": 10.0, "repetitions": [3.0, 1.0, 10.0, 2.0]}
    assert spread_text(summary) == "2.5 (1.0–10.0)"


def test_machine_names_cpu_cores_threads_and_blas():
    info = machine()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1
    assert info["cpu"] and info["blas"] != ""


def test_round_orders_rotate_so_each_run_takes_each_place_equally_often():
    orders = round_orders(["a", "b", "c"], rounds=6)
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert orders[3:] == orders[:3]
    for place in range(3):
        assert sorted(order[place] for order in orders) == ["a", "a", "b", "b", "c", "c"]


def test_ratios_pair_the_ways_timed_in_the_same_round():
    speeds = [{"packed": 10.0, "padded": 5.0}, {"packed": 6.0, "padded": 4.0}]
    assert ratios(speeds, "packed", "padded") == [2.0, 1.5]
