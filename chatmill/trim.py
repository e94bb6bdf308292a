"""Length-trim: drop conversations whose bot replies are too short, with a probability curve.

For each conversation m = median length of its bot replies (trim.unit). P(keep) is 0 for
m <= threshold, rises along trim.curve to 1 at m >= threshold + ramp. The coin is a hash of
(trim.seed, conversation id): the same decision in any order, shard or worker count.
Sources with `trim: false` (instruction data) pass untouched.
"""

import math
import statistics
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, atomic_write_text, record_batches, unit_interval, write_json
from chatmill.params import require
from chatmill.schema import CONVERSATION_SCHEMA, Conversation, bot_turn_texts
from chatmill.stats import StageStats

UNITS = ("words", "chars")
CURVES = ("linear", "cosine")
HISTOGRAM_BINS = 24
DECISION_COLUMNS = ["id", "source", "turns"]


def validate_trim(trim: dict) -> dict:
    unit = require(trim, "unit", "trim", str)
    curve = require(trim, "curve", "trim", str)
    if unit not in UNITS:
        raise ChatmillError(f"params.yaml: trim.unit is {unit!r}; use one of {', '.join(UNITS)}")
    if curve not in CURVES:
        raise ChatmillError(f"params.yaml: trim.curve is {curve!r}; use one of {', '.join(CURVES)}")
    for key in ("threshold", "ramp"):
        if require(trim, key, "trim", (int, float)) < 0:
            raise ChatmillError(f"params.yaml: trim.{key} must be >= 0, got {trim[key]}")
    require(trim, "enabled", "trim", bool)
    require(trim, "seed", "trim", int)
    return trim


def median_reply_length(conversation: Conversation, unit: str) -> float:
    lengths = [len(text.split()) if unit == "words" else len(text) for text in bot_turn_texts(conversation)]
    return float(statistics.median(lengths)) if lengths else 0.0


def keep_probability(median: float, threshold: float, ramp: float, curve: str) -> float:
    if median <= threshold:
        return 0.0
    if median >= threshold + ramp:
        return 1.0
    progress = (median - threshold) / ramp
    return progress if curve == "linear" else (1 - math.cos(math.pi * progress)) / 2


def keeps(conversation: Conversation, median: float, trim: dict, source_trimmed: bool) -> bool:
    if not trim["enabled"] or not source_trimmed:
        return True
    probability = keep_probability(median, trim["threshold"], trim["ramp"], trim["curve"])
    return unit_interval(trim["seed"], conversation["id"]) < probability


def histogram_bin_width(trim: dict) -> int:
    """Bins fine enough to show the ramp, wide enough to reach three times its end."""
    return max(1, math.ceil(3 * (trim["threshold"] + trim["ramp"]) / HISTOGRAM_BINS))


def histogram_csv(before: Counter, after: Counter, bin_width: int) -> str:
    """Plot data for `dvc plots`: conversations per median-reply-length bin, before and after."""
    rows = ["median_reply_length,before,after"]
    for index in range(HISTOGRAM_BINS + 1):
        rows.append(f"{index * bin_width},{before[index]},{after[index]}")
    return "\n".join(rows) + "\n"


class Trimmer:
    """Applies the keep decision to record batches and counts what it sees. `trimmed` says which
    sources are trimmed (sources.NAME.trim)."""

    def __init__(self, trim: dict, trimmed: dict[str, bool]):
        self.trim, self.trimmed = trim, trimmed
        self.stats = StageStats()
        self.stats.add_sources(trimmed)  # a source clean or trim left empty is listed too, as 0
        self.bin_width = histogram_bin_width(trim)
        self.before, self.after = Counter(), Counter()

    def decide(self, conversation: Conversation) -> bool:
        """Whether to keep the conversation (its id, source and turns are read), counted."""
        median = median_reply_length(conversation, self.trim["unit"])
        source = conversation["source"]
        kept = keeps(conversation, median, self.trim, self.trimmed[source])
        bin_index = min(int(median // self.bin_width), HISTOGRAM_BINS)
        self.before[bin_index] += 1
        if kept:
            self.stats.keep(source)
            self.after[bin_index] += 1
        else:
            self.stats.drop("short_replies", source)
        return kept

    def filter(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The kept rows of a batch, as they are: only the columns the decision reads become Python
        objects, so persona and meta are never converted and written back."""
        decisions = [self.decide(conversation) for conversation in batch.select(DECISION_COLUMNS).to_pylist()]
        return batch.filter(pa.array(decisions, type=pa.bool_()))

    def summary(self) -> dict:
        self.stats.extra["sources"] = {
            name: {**counts, "trimmed": self.trim["enabled"] and self.trimmed[name]}
            for name, counts in self.stats.source_table(("in", "out")).items()
        }
        self.stats.extra["keep_rate"] = round(self.stats.records_out / max(self.stats.records_in, 1), 6)
        return self.stats.to_dict()


def trim_file(in_file: Path, out_dir: Path, plot_file: Path, trim: dict, trimmed: dict[str, bool]) -> dict:
    """The length-trim stage: the kept conversations of in_file into out_dir (replaced only when
    complete) with stats.json, and the before/after histogram for `dvc plots` in plot_file."""
    trimmer = Trimmer(trim, trimmed)
    with atomic_dir(out_dir) as out, Progress(transient=True) as progress:
        total = pq.ParquetFile(in_file).metadata.num_rows
        task = progress.add_task("length-trim", total=total)
        with pq.ParquetWriter(
            out / "conversations.parquet", CONVERSATION_SCHEMA, compression="zstd"
        ) as writer:
            for batch in record_batches(in_file):
                writer.write_batch(trimmer.filter(batch))
                progress.advance(task, batch.num_rows)
        summary = trimmer.summary()
        if summary["out"] == 0:
            raise ChatmillError(
                f"length-trim kept 0 of {summary['in']} conversations; lower trim.threshold "
                f"(now {trim['threshold']} {trim['unit']})"
            )
        write_json(out / "stats.json", summary)
    atomic_write_text(plot_file, histogram_csv(trimmer.before, trimmer.after, trimmer.bin_width))
    for name, counts in summary["sources"].items():
        if counts["in"] and not counts["out"]:
            print(
                f"warning: length-trim kept 0 of the {counts['in']} conversations of source '{name}' "
                f"(trim.threshold is {trim['threshold']} {trim['unit']}); mix.on_empty says what mix does",
                file=sys.stderr,
            )
    print(f"length-trim: kept {summary['out']} of {summary['in']} conversations ({summary['keep_rate']:.1%})")
    return summary
