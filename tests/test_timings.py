import json
import os
import subprocess
import sys

import pytest

from chatmill.timings import ENV, phase_split


def events(**times: float) -> list[dict]:
    return [{"pid": 1, "argv": ["stages/x.py"], "event": name, "time": when} for name, when in times.items()]


def test_phases_run_from_the_start_to_each_mark_and_work_to_the_exit():
    split = phase_split(events(start=10.0, **{"import": 12.0, "set-up": 15.0}, exit=20.0))
    assert split == pytest.approx({"import": 2.0, "set-up": 3.0, "work": 5.0, "wall": 10.0})


def test_a_phase_never_marked_takes_no_time():
    split = phase_split(events(start=10.0, **{"import": 12.0}, exit=20.0))
    assert split == pytest.approx({"import": 2.0, "set-up": 0.0, "work": 8.0, "wall": 10.0})


def test_a_later_mark_of_a_phase_wins():
    marks = events(start=0.0, **{"import": 1.0}) + events(**{"import": 3.0, "set-up": 4.0}, exit=6.0)
    assert phase_split(marks) == pytest.approx({"import": 3.0, "set-up": 1.0, "work": 2.0, "wall": 6.0})


def test_a_stage_process_records_its_start_its_import_mark_and_its_exit(tmp_path):
    script = "from chatmill.errors import exit_on_error\nexit_on_error(lambda: None)()\n"
    record = tmp_path / "timings.jsonl"
    subprocess.run([sys.executable, "-c", script], env={**os.environ, ENV: str(record)}, check=True)
    recorded = [json.loads(line) for line in record.read_text().splitlines()]
    assert [event["event"] for event in recorded] == ["start", "import", "exit"]
    split = phase_split(recorded)
    assert split["wall"] > 0 and split["import"] > 0


def test_nothing_is_recorded_without_the_variable(tmp_path):
    env = {name: value for name, value in os.environ.items() if name != ENV}
    subprocess.run([sys.executable, "-c", "import chatmill.errors"], env=env, cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []
