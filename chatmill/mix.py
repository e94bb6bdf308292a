"""Mixing: combine the trimmed sources so that each makes up its `weight` share of the mixed set.

Shares are of conversations or of tokens (mix.by). The mixed set is as large as its input; a
source above its share is down-sampled, one below it is up-sampled (whole copies first, then a
seeded subset). Which conversations are taken, and the final order, are pure functions of
(mix.seed, conversation id). Memory stays flat: per conversation only its source, cost and take
key are kept (numpy arrays, a few bytes each), and the shuffle goes through hash buckets on disk.
"""

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, record_batches, stable_hash, write_json
from chatmill.params import require
from chatmill.prompt import render_text
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.stats import StageStats

MIX_BY = ("conversations", "tokens")
ROWS_PER_BUCKET = 8192  # rows sorted in memory at a time
READ_BATCH = 2048  # conversations per record batch read from the input
TOKENIZE_BATCH = 512  # conversations per tokenizer call when mix.by is tokens (its output is bulky)
ROW_GROUP = 2048  # rows per output row group, as chatmill.io.write_parquet writes them


def source_budgets(costs: dict[str, int], weights: dict[str, float], by: str) -> dict[str, float]:
    """Each source's target size: its weight's share of the total input size."""
    total_weight = sum(weights.values())
    total_cost = sum(costs.values())
    budgets = {name: weights[name] / total_weight * total_cost for name in weights}
    return {
        name: float(round(budget)) if by == "conversations" else budget for name, budget in budgets.items()
    }


def take_key(seed: int, conversation_id: str) -> int:
    """A conversation's place in the seeded order in which sampling takes conversations (64 bits)."""
    return int(stable_hash(seed, "take", conversation_id)[:16], 16)


def copies_per_conversation(take_keys: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """How many times each conversation goes into the mix so that the copies' cost meets `budget`:
    as many whole passes as fit, then conversations in take-key order until the budget is spent."""
    copies = np.zeros(len(costs), dtype=np.int64)
    total = int(costs.sum())
    if total == 0 or budget <= 0:
        return copies
    full_passes = int(budget // total)
    remaining = budget - full_passes * total
    order = np.argsort(take_keys, kind="stable")
    spent_before = np.cumsum(costs[order]) - costs[order]
    copies += full_passes
    copies[order[spent_before < remaining]] += 1  # taken while some budget was left
    return copies


def conversation_costs(batch: pa.RecordBatch, by: str, tokenizer) -> list[int]:
    if by == "conversations":
        return [1] * batch.num_rows
    texts = [render_text(conversation, tokenizer.eos_token) for conversation in batch.to_pylist()]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def measure(
    path: Path, by: str, tokenizer, sources: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1: every conversation's source (an index into `sources`), cost and take key, in file order."""
    index = {name: position for position, name in enumerate(sources)}
    source_chunks = [np.zeros(0, dtype=np.int32)]
    cost_chunks = [np.zeros(0, dtype=np.int64)]
    key_chunks = [np.zeros(0, dtype=np.uint64)]
    columns, batch_size = (None, TOKENIZE_BATCH) if by == "tokens" else (["id", "source"], READ_BATCH)
    for batch in record_batches(path, columns, batch_size):
        source_chunks.append(np.array([index[name] for name in batch.column("source").to_pylist()], np.int32))
        cost_chunks.append(np.array(conversation_costs(batch, by, tokenizer), dtype=np.int64))
        key_chunks.append(np.array([take_key(seed, i) for i in batch.column("id").to_pylist()], np.uint64))
    return np.concatenate(source_chunks), np.concatenate(cost_chunks), np.concatenate(key_chunks)


def shuffle_key(seed: int, conversation_id: str, copy: int) -> str:
    return stable_hash(seed, "order", conversation_id, copy)


def write_buckets(
    batches: Iterable[pa.RecordBatch], copies: np.ndarray, seed: int, n_buckets: int, work_dir: Path
) -> list[Path]:
    """Spread the copies over hash buckets on disk (Arrow IPC files), each with its shuffle key. A
    bucket is a range of keys, so the buckets in order, each sorted, are the whole mix sorted."""
    keyed_schema = CONVERSATION_SCHEMA.append(pa.field("order", pa.string()))
    paths = [work_dir / f"bucket-{bucket:05d}.arrows" for bucket in range(n_buckets)]
    writers = [pa.ipc.new_stream(str(path), keyed_schema) for path in paths]
    start = 0
    for batch in batches:
        rows, keys = [], []
        counts = copies[start : start + batch.num_rows].tolist()
        for row, (conversation_id, count) in enumerate(
            zip(batch.column("id").to_pylist(), counts, strict=True)
        ):
            for copy in range(count):
                rows.append(row)
                keys.append(shuffle_key(seed, conversation_id, copy))
        start += batch.num_rows
        keyed = pa.Table.from_batches([batch]).take(rows).append_column("order", pa.array(keys, pa.string()))
        buckets = np.array([int(key[:8], 16) * n_buckets >> 32 for key in keys], dtype=np.int64)
        for bucket in np.unique(buckets).tolist():
            writers[bucket].write_table(keyed.filter(buckets == bucket))
    for writer in writers:
        writer.close()
    return paths


def sorted_buckets(paths: list[Path]) -> Iterator[pa.Table]:
    """Each bucket sorted by shuffle key, in bucket order; a bucket's file goes once it is read."""
    for path in paths:
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        path.unlink()
        yield table.sort_by("order").drop_columns(["order"])


def write_row_groups(path: Path, tables: Iterable[pa.Table]) -> int:
    """Write the tables' rows end to end in row groups of ROW_GROUP rows, each one contiguous
    chunk: byte for byte the file chatmill.io.write_parquet writes for the same rows. Returns the
    number of rows written."""
    written = 0
    pending = CONVERSATION_SCHEMA.empty_table()
    with pq.ParquetWriter(path, CONVERSATION_SCHEMA, compression="zstd") as writer:
        for table in tables:
            pending = pa.concat_tables([pending, table])
            while pending.num_rows >= ROW_GROUP:
                writer.write_table(pending.slice(0, ROW_GROUP).combine_chunks())
                pending, written = pending.slice(ROW_GROUP), written + ROW_GROUP
        if pending.num_rows or written == 0:
            writer.write_table(pending.combine_chunks())
            written += pending.num_rows
    return written


def write_shuffled(
    batches: Iterable[pa.RecordBatch], copies: np.ndarray, seed: int, out_file: Path, work_dir: Path
) -> int:
    """Pass 2: the copies in shuffle-key order, through hash buckets on disk; returns the rows written."""
    n_buckets = max(1, math.ceil(int(copies.sum()) / ROWS_PER_BUCKET))
    return write_row_groups(
        out_file, sorted_buckets(write_buckets(batches, copies, seed, n_buckets, work_dir))
    )


def composition(
    weights: dict[str, float], members: dict[str, np.ndarray], costs: np.ndarray, copies: np.ndarray, by: str
) -> dict:
    """Per source: conversations in, kept, rows (with repeats), size in `by`, target and actual share.
    `members` holds each source's conversations as a mask over all of them."""
    total_cost = int((costs * copies).sum()) or 1
    table = {}
    for name in sorted(weights):
        picked_copies = copies[members[name]]
        kept = int(np.count_nonzero(picked_copies))
        rows = int(picked_copies.sum())
        cost = int((costs[members[name]] * picked_copies).sum())
        table[name] = {
            "in": len(picked_copies),
            "kept": kept,
            "rows": rows,
            "repeats": rows - kept,
            by: cost,
            "weight": weights[name],
            "target_share": round(weights[name] / sum(weights.values()), 6),
            "share": round(cost / total_cost, 6),
        }
    return table


def validate_mix(section: dict) -> tuple[str, int]:
    by = require(section, "by", "mix", str)
    seed = require(section, "seed", "mix", int)
    if by not in MIX_BY:
        raise ChatmillError(f"params.yaml: mix.by is {by!r}; use one of {', '.join(MIX_BY)}")
    return by, seed


def mix_file(
    in_file: Path, out_dir: Path, weights: dict[str, float], section: dict, tokenizer_dir: Path
) -> dict:
    """The mix stage: in_file's conversations, down- or up-sampled to their source's weight share and
    shuffled, into out_dir (replaced only when complete) with stats.json; the tokenizer of
    tokenizer_dir counts tokens when mix.by is tokens."""
    by, seed = validate_mix(section)
    tokenizer = None
    if by == "tokens":
        from transformers import AutoTokenizer  # only here: it pulls in torch, ~200 MB of memory

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    source_index, costs, take_keys = measure(in_file, by, tokenizer, list(weights), seed)
    members = {name: source_index == position for position, name in enumerate(weights)}
    budgets = source_budgets(
        {name: int(costs[member].sum()) for name, member in members.items()}, weights, by
    )
    copies = np.zeros(len(costs), dtype=np.int64)
    for name, member in members.items():
        copies[member] = copies_per_conversation(take_keys[member], costs[member], budgets[name])

    stats = StageStats()
    for name, member in members.items():
        picked = copies[member]
        stats.keep(name, int(np.count_nonzero(picked)))
        stats.drop(
            "weight_zero" if weights[name] == 0 else "downsampled", name, int(np.count_nonzero(picked == 0))
        )
    with atomic_dir(out_dir) as out, Progress(transient=True) as progress:
        batches = progress.track(
            record_batches(in_file, batch_size=READ_BATCH),
            total=math.ceil(len(copies) / READ_BATCH),
            description="mix",
        )
        stats.extra["rows"] = write_shuffled(batches, copies, seed, out / "conversations.parquet", out)
        stats.extra["by"] = by
        stats.extra["composition"] = composition(weights, members, costs, copies, by)
        summary = stats.to_dict()
        write_json(out / "stats.json", summary)
    shares = ", ".join(f"{name} {entry['share']:.1%}" for name, entry in stats.extra["composition"].items())
    print(f"mix: {stats.extra['rows']} rows from {stats.records_out} conversations ({shares} of {by})")
    return summary
