"""Where a stage's wall time goes, for `make bench-repro`: with CHATMILL_TIMINGS=FILE set, each
chatmill process appends its start (the process's own, so interpreter start-up counts), its phase
marks and its exit to FILE as JSON lines. Without it, mark() does nothing.

A stage's phases end at its marks: `import` when main() starts (exit_on_error marks it) or, where a
stage imports its heavy libraries later, when it has imported them; `set-up` when its model, engine
or tokenizer is built; `work` at exit. A phase never marked takes no time.
"""

import atexit
import json
import os
import sys
import time
from pathlib import Path

ENV = "CHATMILL_TIMINGS"
PHASES = ("import", "set-up", "work")


def process_start() -> float:
    """When this process started (Unix time, to the clock tick), from /proc; now where there is none."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, StopIteration):
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def record(event: str, when: float) -> None:
    with open(os.environ[ENV], "a") as out:  # one short append per line: processes do not interleave
        out.write(json.dumps({"pid": os.getpid(), "argv": sys.argv, "event": event, "time": when}) + "\n")


def start() -> None:
    """Record this process's start and, at exit, its end; called once, when chatmill is imported."""
    if ENV in os.environ:
        record("start", process_start())
        atexit.register(lambda: record("exit", time.time()))


def mark(phase: str) -> None:
    """The end of `phase` (import or set-up) in this process."""
    if ENV in os.environ:
        record(phase, time.time())


def phase_split(events: list[dict]) -> dict[str, float]:
    """Seconds of import, set-up and work, and wall, of one process from its recorded events: each
    phase from the end of the one before (the start for import) to its own last mark."""
    times = {event["event"]: event["time"] for event in events}  # a later mark of a phase wins
    ends = [times.get("import"), times.get("set-up"), times["exit"]]
    split, begin = {}, times["start"]
    for phase, end in zip(PHASES, ends, strict=True):
        end = begin if end is None else max(end, begin)
        split[phase] = end - begin
        begin = end
    split["wall"] = times["exit"] - times["start"]
    return split
