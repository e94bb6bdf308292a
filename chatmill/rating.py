"""Testers' judgements of two runs, and the number they add up to.

`make rate A=... B=...` (chatmill.ratepage) shows testers a prompt with one reply of each run, blind,
and appends each judgement to ratings/<A>-vs-<B>.jsonl, one JSON line, on disk before the next item
shows. `make rate-report A=... B=...` (this module) turns them into the win rate of B over A with its
95% Wilson interval, per prompt set and overall; ties and "both bad" are counted apart, outside the
win rate. It prints the table and writes metrics/ratings.json (every rated pair under its file name),
which dvc.yaml declares, so `dvc exp show` and `dvc metrics diff` carry it.

    python -m chatmill.rating A B
"""

import argparse
import fcntl
import html
import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import write_json

RATINGS_DIR = Path("ratings")
RATINGS_METRICS = Path("metrics/ratings.json")
# What the tester clicked (the page's left reply is "A", the right one "B", whichever run wrote it).
CHOICES = {"left": "A is better", "right": "B is better", "tie": "Tie", "both_bad": "Both bad"}
RUNS = ("A", "B")  # the runs as `make rate A=... B=...` names them
# A judgement, one line of the ratings file: the item (opaque id; its prompt set, prompt, sampling
# setting and sample number), which run was shown left, what the tester chose, their note, when (UTC),
# who, the two runs, and the two replies as shown (the text judged, should a run's samples change).
FIELDS = (
    "item", "prompt_set", "prompt_id", "setting", "sample", "left", "choice", "note", "time", "tester",
    "a", "b", "reply_a", "reply_b",
)  # fmt: skip
Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval
OVERALL_METRICS = ("judgements", "b_win_rate", "b_win_low", "b_win_high", "tie_rate", "both_bad_rate")
COLUMNS = (
    "judgements",
    "testers",
    "A better",
    "B better",
    "tie",
    "both bad",
    "B win rate",
    "95% low",
    "95% high",
)


def file_part(source: str) -> str:
    """A run's name as part of a file name: models/part-03 -> models-part-03, HEAD~1 -> HEAD-1."""
    part = re.sub(r"[^A-Za-z0-9_-]+", "-", source).strip("-")
    if not part:
        raise ChatmillError(
            f"rate: {source!r} has nothing to name a ratings file by; name runs with letters or digits"
        )
    return part


def pair_name(a: str, b: str) -> str:
    return f"{file_part(a)}-vs-{file_part(b)}"


def ratings_file(a: str, b: str) -> Path:
    return RATINGS_DIR / f"{pair_name(a, b)}.jsonl"


def check_judgement(record: Any, a: str | None, b: str | None, where: str) -> dict[str, Any]:
    """A parsed line, or a one-line error naming the file and line."""
    if not isinstance(record, dict) or set(FIELDS) - set(record):
        missing = sorted(set(FIELDS) - set(record)) if isinstance(record, dict) else FIELDS
        raise ChatmillError(
            f"{where} is not a judgement: missing {', '.join(missing)}; fix or remove that line"
        )
    if record["choice"] not in CHOICES or record["left"] not in RUNS:
        raise ChatmillError(
            f"{where}: choice {record['choice']!r} or left {record['left']!r} is unknown "
            f"(choice: {', '.join(CHOICES)}; left: A or B)"
        )
    if a is not None and (record["a"], record["b"]) != (a, b):
        raise ChatmillError(
            f"{where} rates {record['a']} vs {record['b']}, not {a} vs {b} (their names make the same file "
            "name); move that file aside"
        )
    return record


class RatingLog:
    """The judgements of one pair of runs, in their file: each judgement one JSON line, appended and on
    disk (fsync) before `append` returns. Several servers may append to one file: an exclusive lock
    (flock) orders their lines, and each reads the others' new lines before it writes."""

    def __init__(self, path: Path, a: str | None, b: str | None) -> None:
        """The file's judgements of A vs B; with a and b None, of the pair its first line names."""
        self.path, self.a, self.b = path, a, b
        self.judgements: list[dict[str, Any]] = []
        self.rated: set[tuple[str, str]] = set()  # (tester, item)
        self.offset = 0  # bytes of the file read so far
        self.lock = threading.Lock()
        with self.lock:
            self.read_new()

    def read_new(self) -> None:
        """The lines written since the last read (by this server or another); a line still being
        written (no newline yet) is left for the next read."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.decode("utf-8").splitlines():
            where = f"{self.path}:{len(self.judgements) + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ChatmillError(f"{where} is not JSON ({error}); fix or remove that line") from None
            record = check_judgement(record, self.a, self.b, where)
            self.a, self.b = record["a"], record["b"]
            self.judgements.append(record)
            self.rated.add((record["tester"], record["item"]))
        self.offset += len(complete)

    def rated_by(self, tester: str) -> set[str]:
        with self.lock:
            self.read_new()
            return {item for who, item in self.rated if who == tester}

    def append(self, judgement: dict[str, Any]) -> bool:
        """Write the judgement and wait until it is on disk; False (nothing written) when this tester
        has already rated the item (a button clicked twice, a page sent again)."""
        line = json.dumps(check_judgement(judgement, self.a, self.b, "judgement"), ensure_ascii=False) + "\n"
        with self.lock:
            new_file = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                self.read_new()
                if (judgement["tester"], judgement["item"]) in self.rated:
                    return False
                os.write(descriptor, line.encode("utf-8"))  # one write: lines of two writers never mix
                os.fsync(descriptor)
            finally:
                os.close(descriptor)  # releases the lock
            if new_file:  # the file's name is on disk too, not only its bytes
                directory = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
            self.read_new()
        return True


def outcome(judgement: dict[str, Any]) -> str:
    """Which run the judgement favours: A or B, or tie, or both_bad."""
    if judgement["choice"] == "left":
        return judgement["left"]
    if judgement["choice"] == "right":
        return RUNS[1 - RUNS.index(judgement["left"])]
    return judgement["choice"]


def wilson(successes: np.ndarray, trials: np.ndarray, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of a proportion (NaN where there are no trials): unlike p ± z·se, it
    stays within [0, 1] and is not empty at 0 or n successes, which a few dozen judgements often give."""
    trials = np.asarray(trials, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.asarray(successes, dtype=float) / trials
        centre = (p + z**2 / (2 * trials)) / (1 + z**2 / trials)
        half = z / (1 + z**2 / trials) * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2))
    return centre - half, centre + half


def tally(judgements: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per prompt set and one overall: counts, the win rate of B over A (B better / (A better
    + B better)) and its 95% Wilson interval. A tester who rated an item twice (files merged from two
    machines) counts once, with the later judgement."""
    frame = pd.DataFrame(judgements, columns=list(FIELDS))
    frame = frame.drop_duplicates(["tester", "item"], keep="last")
    frame["outcome"] = [outcome(row) for row in frame.to_dict("records")]
    counts = pd.crosstab(frame["prompt_set"], frame["outcome"]).reindex(
        columns=[*RUNS, "tie", "both_bad"], fill_value=0
    )
    counts.loc["overall"] = counts.sum()
    testers = frame.groupby("prompt_set")["tester"].nunique()
    testers.loc["overall"] = frame["tester"].nunique()
    table = pd.DataFrame(
        {
            "judgements": counts.sum(axis=1),
            "testers": testers,
            "A better": counts["A"],
            "B better": counts["B"],
            "tie": counts["tie"],
            "both bad": counts["both_bad"],
        }
    ).reindex(counts.index)
    decisive = table["A better"] + table["B better"]
    table["B win rate"] = (table["B better"] / decisive.where(decisive > 0)).astype(float)
    table["95% low"], table["95% high"] = wilson(table["B better"].to_numpy(), decisive.to_numpy())
    table.index.name = "prompt set"
    return table[list(COLUMNS)]


def group_metrics(row: pd.Series, keys: tuple[str, ...]) -> dict[str, float | int]:
    """A table row as metrics (the win rate and its interval left out where no run won a judgement)."""
    values = {
        "judgements": int(row["judgements"]),
        "b_win_rate": row["B win rate"],
        "b_win_low": row["95% low"],
        "b_win_high": row["95% high"],
        "tie_rate": row["tie"] / row["judgements"],
        "both_bad_rate": row["both bad"] / row["judgements"],
    }
    return {
        key: value if isinstance(value, int) else round(float(value), 6)
        for key, value in values.items()
        if key in keys and not (isinstance(value, float) and math.isnan(value))
    }


def pair_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """One pair's metrics, laid out as sample-eval's: overall, then per prompt set only the count and
    the win rate, so that `dvc exp show` stays readable (the full table: `make rate-report`)."""
    return {
        "overall": group_metrics(table.loc["overall"], OVERALL_METRICS),
        "prompt_sets": {
            name: group_metrics(row, ("judgements", "b_win_rate"))
            for name, row in table.drop(index="overall").iterrows()
        },
    }


def write_metrics() -> dict[str, Any]:
    """metrics/ratings.json from every ratings file: a function of ratings/ alone, so it never holds a
    pair that lost its file, and two branches' versions merge by writing it again."""
    metrics = {}
    for path in sorted(RATINGS_DIR.glob("*.jsonl")):
        judgements = RatingLog(path, None, None).judgements
        if judgements:
            metrics[path.stem] = pair_metrics(tally(judgements))
    write_json(RATINGS_METRICS, metrics)
    return metrics


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(float_format=lambda value: f"{value:.3f}", na_rep="-")


def rating_section(a: str, b: str) -> str:
    """The testers' verdict on A vs B for `make compare`'s page, or "" when nobody rated the pair."""
    path = ratings_file(a, b)
    judgements = RatingLog(path, a, b).judgements if path.is_file() else []
    if not judgements:
        return ""
    table = tally(judgements)
    overall = table.loc["overall"]
    html_table = table.to_html(
        classes="metrics", float_format=lambda value: f"{value:.3f}", na_rep="–", border=0, index_names=False
    )
    return (
        f'<h2 id="ratings">Testers\' judgements</h2>\n<p>{int(overall["judgements"])} blind judgements by '
        f"{int(overall['testers'])} tester(s) in {html.escape(str(path))}: the win rate of B "
        f"({html.escape(b)}) over A ({html.escape(a)}) counts the judgements with a winner; ties and "
        "“both bad” are counted apart. 95% Wilson interval.</p>\n" + html_table
    )


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs=2, metavar="RUN", help="the two runs as `make rate` named them")
    a, b = parser.parse_args().runs
    path = ratings_file(a, b)
    judgements = RatingLog(path, a, b).judgements
    if not judgements:
        raise ChatmillError(
            f"rate-report: no judgements of {a} vs {b} yet ({path}); run `make rate A={a} B={b}`"
        )
    table = tally(judgements)
    print(f"B = {b} over A = {a}: {int(table.loc['overall', 'judgements'])} judgements in {path}")
    print(format_table(table))
    write_metrics()
    print(f"\nmetrics of every rated pair: {RATINGS_METRICS} (`dvc metrics diff` shows the change)")


if __name__ == "__main__":
    main()
