from chatmill.bench.data import summarize


def run(clean_s: float, shard_s: float, today_s: float, strict_s: float, peak_mb: float) -> dict:
    stages = {
        "clean": {"wall_s": clean_s, "peak_rss_mb": peak_mb, "peak_with_workers_mb": peak_mb + 10},
        "shard": {"wall_s": shard_s, "peak_rss_mb": 100.0, "peak_with_workers_mb": 120.0},
    }
    return {"stages": stages, "floors": {"today": today_s, "strict": strict_s}}


def test_summary_gives_medians_ranges_and_each_repetitions_ratio_to_its_own_floors():
    runs = [
        run(10.0, 20.0, 40.0, 15.0, 300.0),
        run(12.0, 18.0, 36.0, 10.0, 500.0),
        run(11.0, 25.0, 30.0, 12.0, 400.0),
    ]
    result = summarize(runs, input_mb=100.04)
    assert result["input_mb"] == 100.0 and result["repetitions"] == 3
    assert result["stages"]["clean"]["wall_s"] == {
        "median": 11.0,
        "min": 10.0,
        "max": 12.0,
        "repetitions": [10.0, 12.0, 11.0],
    }
    assert result["wall_s"]["repetitions"] == [30.0, 30.0, 36.0]
    assert result["floor_s"]["strict"]["median"] == 12.0
    assert result["ratio_to_floor"]["strict"]["repetitions"] == [2.0, 3.0, 3.0]
    assert result["ratio_to_floor"]["today"]["repetitions"] == [0.75, 0.83, 1.2]
    assert result["peak_rss_mb"] == 500.0 and result["peak_with_workers_mb"] == 510.0
