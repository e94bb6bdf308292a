"""mix: combine the trimmed sources so that each makes up its `weight` share of the mixed set.

Shares are of conversations or of tokens (mix.by). The mixed set is as large as its input; a
source above its share is down-sampled, one below it is up-sampled (whole copies first, then a
seeded subset). Which conversations are taken, and the final order, are pure functions of
(mix.seed, conversation id). The shuffle goes through hash buckets on disk, so memory stays flat.
"""

import math
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress
from transformers import AutoTokenizer

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import atomic_dir, read_parquet, stable_hash, write_json, write_parquet
from chatmill.params import load_params, require
from chatmill.prompt import render_text
from chatmill.schema import CONVERSATION_SCHEMA
from chatmill.sources import validate_sources
from chatmill.stats import StageStats

IN_FILE = Path("data/trimmed/conversations.parquet")
TOKENIZER_DIR = Path("models/base")
OUT_DIR = Path("data/mixed")
MIX_BY = ("conversations", "tokens")
ROWS_PER_BUCKET = 50_000
TOKENIZE_BATCH = 512


def source_budgets(costs: dict[str, int], weights: dict[str, float], by: str) -> dict[str, float]:
    """Each source's target size: its weight's share of the total input size."""
    total_weight = sum(weights.values())
    total_cost = sum(costs.values())
    budgets = {name: weights[name] / total_weight * total_cost for name in weights}
    return {
        name: float(round(budget)) if by == "conversations" else budget for name, budget in budgets.items()
    }


def copies_per_conversation(ids: list[str], costs: list[int], budget: float, seed: int) -> list[int]:
    """How many times each conversation goes into the mix so that the copies' cost meets `budget`:
    as many whole passes as fit, then conversations in seeded order until the budget is spent."""
    total = sum(costs)
    if total == 0 or budget <= 0:
        return [0] * len(ids)
    full_passes = int(budget // total)
    remaining = budget - full_passes * total
    copies = [full_passes] * len(ids)
    for index in sorted(range(len(ids)), key=lambda i: stable_hash(seed, "take", ids[i])):
        if remaining <= 0:
            break
        copies[index] += 1
        remaining -= costs[index]
    return copies


def conversation_costs(conversations, by: str, tokenizer) -> list[int]:
    if by == "conversations":
        return [1] * len(conversations)
    texts = [render_text(conversation, tokenizer.eos_token) for conversation in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def measure(path: Path, by: str, tokenizer) -> tuple[list[str], list[str], list[int]]:
    """Pass 1: id, source and cost of every conversation, in file order."""
    ids, sources, costs = [], [], []
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=TOKENIZE_BATCH):
        rows = batch.to_pylist()
        ids += [row["id"] for row in rows]
        sources += [row["source"] for row in rows]
        costs += conversation_costs(rows, by, tokenizer)
    return ids, sources, costs


def shuffle_key(seed: int, conversation_id: str, copy: int) -> str:
    return stable_hash(seed, "order", conversation_id, copy)


def write_shuffled(rows, copies: list[int], seed: int, out_file: Path, work_dir: Path) -> int:
    """Pass 2: spread the copies over hash buckets on disk, then sort each bucket in memory."""
    n_buckets = max(1, math.ceil(sum(copies) / ROWS_PER_BUCKET))
    keyed_schema = CONVERSATION_SCHEMA.append(pa.field("order", pa.string()))
    writers, pending = {}, defaultdict(list)

    def flush(bucket: int) -> None:
        if bucket not in writers:
            writers[bucket] = pq.ParquetWriter(work_dir / f"bucket-{bucket:05d}.parquet", keyed_schema)
        writers[bucket].write_table(pa.Table.from_pylist(pending.pop(bucket), schema=keyed_schema))

    for row, count in zip(rows, copies, strict=True):
        for copy in range(count):
            key = shuffle_key(seed, row["id"], copy)
            bucket = int(key[:8], 16) * n_buckets >> 32
            pending[bucket].append({**row, "order": key})
            if len(pending[bucket]) >= 1024:
                flush(bucket)
    for bucket in list(pending):
        flush(bucket)
    for writer in writers.values():
        writer.close()

    def ordered_rows():
        for bucket in range(n_buckets):
            path = work_dir / f"bucket-{bucket:05d}.parquet"
            if path.exists():
                table = pq.read_table(path).sort_by("order").drop_columns(["order"])
                path.unlink()
                yield from table.to_pylist()

    return write_parquet(out_file, CONVERSATION_SCHEMA, ordered_rows())


def composition(
    weights: dict[str, float], by_source: dict[str, list[int]], costs: list[int], copies: list[int], by: str
) -> dict:
    """Per source: conversations in, kept, rows (with repeats), size in `by`, target and actual share."""
    total_cost = sum(cost * count for cost, count in zip(costs, copies, strict=True)) or 1
    table = {}
    for name in sorted(weights):
        picked = by_source[name]
        kept = sum(1 for i in picked if copies[i] > 0)
        rows = sum(copies[i] for i in picked)
        cost = sum(costs[i] * copies[i] for i in picked)
        table[name] = {
            "in": len(picked),
            "kept": kept,
            "rows": rows,
            "repeats": rows - kept,
            by: cost,
            "weight": weights[name],
            "target_share": round(weights[name] / sum(weights.values()), 6),
            "share": round(cost / total_cost, 6),
        }
    return table


@exit_on_error
def main() -> None:
    params = load_params("mix", "sources")
    sources = validate_sources(params["sources"])
    by = require(params["mix"], "by", "mix", str)
    seed = require(params["mix"], "seed", "mix", int)
    if by not in MIX_BY:
        raise ChatmillError(f"params.yaml: mix.by is {by!r}; use one of {', '.join(MIX_BY)}")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR) if by == "tokens" else None
    weights = {name: float(source["weight"]) for name, source in sources.items()}

    ids, row_sources, costs = measure(IN_FILE, by, tokenizer)
    by_source: dict[str, list[int]] = {name: [] for name in weights}
    for index, source in enumerate(row_sources):
        by_source[source].append(index)
    budgets = source_budgets({name: sum(costs[i] for i in by_source[name]) for name in weights}, weights, by)
    copies = [0] * len(ids)
    for name, picked in by_source.items():
        chosen = copies_per_conversation(
            [ids[i] for i in picked], [costs[i] for i in picked], budgets[name], seed
        )
        for index, count in zip(picked, chosen, strict=True):
            copies[index] = count

    stats = StageStats(records_in=len(ids), records_out=sum(1 for count in copies if count > 0))
    for source, count in zip(row_sources, copies, strict=True):
        if count == 0:
            stats.drop("weight_zero" if weights[source] == 0 else "downsampled")
    with atomic_dir(OUT_DIR) as out, Progress(transient=True) as progress:
        rows = progress.track(read_parquet(IN_FILE), total=len(ids), description="mix")
        stats.extra["rows"] = write_shuffled(rows, copies, seed, out / "conversations.parquet", out)
        stats.extra["by"] = by
        stats.extra["composition"] = composition(weights, by_source, costs, copies, by)
        write_json(out / "stats.json", stats.to_dict())
    shares = ", ".join(f"{name} {entry['share']:.1%}" for name, entry in stats.extra["composition"].items())
    print(f"mix: {stats.extra['rows']} rows from {stats.records_out} conversations ({shares} of {by})")


if __name__ == "__main__":
    main()
