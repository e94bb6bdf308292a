import pytest

from chatmill.bench.repro import changed_outputs, stage_commands, stage_splits, uncached_outputs


def test_stage_commands_are_the_argv_of_each_stage_process_in_pipeline_order():
    dvc_yaml = {
        "stages": {
            "fetch": {"cmd": "PATH=$PWD/.venv/bin:$PATH python stages/fetch.py"},
            "train-part1": {"cmd": "PATH=$PWD/.venv/bin:$PATH python stages/train.py --part 1"},
        }
    }
    assert stage_commands(dvc_yaml) == {
        "fetch": ["stages/fetch.py"],
        "train-part1": ["stages/train.py", "--part", "1"],
    }


def process(pid: int, argv: list[str], start: float, **marks: float) -> list[dict]:
    times = {"start": start, **marks}
    return [{"pid": pid, "argv": argv, "event": name, "time": when} for name, when in times.items()]


def test_each_stage_is_split_from_the_first_process_that_ran_its_command():
    commands = {"fetch": ["stages/fetch.py"], "train-part1": ["stages/train.py", "--part", "1"]}
    events = (
        process(1, ["stages/fetch.py"], 0.0, **{"import": 0.5}, exit=1.0)
        + process(2, ["stages/train.py", "--part", "1"], 2.0, **{"import": 3.0, "set-up": 5.0}, exit=9.0)
        # a rank it launched: same command, later start, not the stage's own process
        + process(3, ["stages/train.py", "--part", "1"], 2.5, exit=8.0)
    )
    splits = stage_splits(events, commands)
    assert splits["fetch"] == pytest.approx({"import": 0.5, "set-up": 0.0, "work": 0.5, "wall": 1.0})
    assert splits["train-part1"] == pytest.approx({"import": 1.0, "set-up": 2.0, "work": 4.0, "wall": 7.0})


def test_a_stage_without_a_complete_record_is_an_error():
    with pytest.raises(SystemExit, match="fetch"):
        stage_splits(process(1, ["stages/fetch.py"], 0.0), {"fetch": ["stages/fetch.py"]})


def test_changed_outputs_compares_the_md5_of_outs_but_the_ignored_ones():
    expected = {
        "stages": {
            "fetch": {
                "deps": [{"path": "stages/fetch.py", "md5": "a"}],
                "outs": [{"path": "data/raw", "md5": "1.dir"}],
            },
            "shard": {"outs": [{"path": "data/shards", "md5": "2.dir"}]},
            "train-part1": {"outs": [{"path": "dvclive/part-01", "md5": "4.dir"}]},
        }
    }
    written = {
        "stages": {
            "fetch": {
                "deps": [{"path": "stages/fetch.py", "md5": "b"}],
                "outs": [{"path": "data/raw", "md5": "1.dir"}],
            },
            "shard": {"outs": [{"path": "data/shards", "md5": "3.dir"}]},
            "train-part1": {"outs": [{"path": "dvclive/part-01", "md5": "5.dir"}]},
        }
    }
    assert changed_outputs(written, expected, {"dvclive/part-01"}) == ["data/shards"]
    assert changed_outputs(expected, expected, set()) == []


def test_uncached_outputs_are_the_ones_declared_cache_false():
    dvc_yaml = {
        "stages": {
            "shard": {"outs": ["data/shards"]},
            "train-part1": {"outs": ["models/part-01", {"dvclive/part-01": {"cache": False}}]},
        }
    }
    assert uncached_outputs(dvc_yaml) == {"dvclive/part-01"}
