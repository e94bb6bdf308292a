"""Mixing: combine the trimmed sources so that each makes up its `weight` share of the mixed set.

Shares are of conversations or of tokens (mix.by). The mixed set is as large as its input; a
source above its share is down-sampled, one below it is up-sampled (whole copies first, then a
seeded subset), at most mix.max_repeat copies of each conversation. The share a source cannot fill
within that cap, or at all when it is empty (mix.on_empty), goes to the other sources in proportion
to their weights; each such source is one warning line, printed and kept in stats.json. Which
conversations are taken, and the final order, are pure functions of (mix.seed, conversation id).
Memory stays flat: per conversation only its source, cost and take key are kept (numpy arrays, a few
bytes each), and the shuffle goes through hash buckets on disk.
"""

import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, read_json, record_batches, stable_hash, write_json
from chatmill.layout import STATS
from chatmill.params import require
from chatmill.prompt import PromptFormat, Refused, check_format, prompt_format, validate_format
from chatmill.schema import CONVERSATION_SCHEMA, Conversation
from chatmill.stats import StageStats

MIX_BY = ("conversations", "tokens")
ON_EMPTY = ("redistribute", "fail")  # what mix.on_empty may ask for a source left with no conversations
ROWS_PER_BUCKET = 8192  # rows sorted in memory at a time
READ_BATCH = 2048  # conversations per record batch read from the input
TOKENIZE_BATCH = 512  # conversations per tokenizer call when mix.by is tokens (its output is bulky)
ROW_GROUP = 2048  # rows per output row group, as chatmill.io.write_parquet writes them


def source_budgets(
    costs: dict[str, int], weights: dict[str, float], by: str, max_repeat: int
) -> dict[str, float]:
    """Each source's target size: its weight's share of the total input size, but at most max_repeat
    times its own size. What a source cannot fill goes to the others in proportion to their weights,
    round after round, until all is given or every source with a weight is at its cap. In
    conversations the budgets are whole and add up to the input's size."""
    budgets = dict.fromkeys(weights, 0.0)
    left = float(sum(costs.values()))
    filling = [name for name in weights if weights[name] > 0]
    while filling and left > 0:
        total_weight = sum(weights[name] for name in filling)
        shares = {name: weights[name] / total_weight * left for name in filling}
        full = [name for name in filling if shares[name] >= max_repeat * costs[name]]
        if not full:
            budgets.update(shares)
            break
        for name in full:
            budgets[name] = float(max_repeat * costs[name])
            left -= budgets[name]
        filling = [name for name in filling if name not in full]
    return whole_budgets(budgets) if by == "conversations" else budgets


def whole_budgets(budgets: dict[str, float]) -> dict[str, float]:
    """Budgets in whole conversations that add up to their rounded sum: the largest remainders (ties
    by name) are rounded up. Rounding each alone could make the mix larger or smaller than its input."""
    whole = {name: math.floor(budget) for name, budget in budgets.items()}
    missing = round(sum(budgets.values())) - sum(whole.values())
    for name in sorted(budgets, key=lambda name: (whole[name] - budgets[name], name))[:missing]:
        whole[name] += 1
    return {name: float(budget) for name, budget in whole.items()}


def source_limits(costs: dict[str, int], weights: dict[str, float], max_repeat: int) -> dict[str, str]:
    """The sources with a weight that cannot fill their share: "empty" (nothing left of them) or
    "max_repeat" (it would take more copies of each conversation than mix.max_repeat)."""
    total_weight, total_cost = sum(weights.values()), sum(costs.values())
    limits = {}
    for name, weight in weights.items():
        if weight > 0 and costs[name] == 0:
            limits[name] = "empty"
        elif weight / total_weight * total_cost > max_repeat * costs[name]:
            limits[name] = "max_repeat"
    return limits


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
    form = prompt_format(tokenizer)
    texts = [written(form, conversation) for conversation in batch.to_pylist()]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def written(form: PromptFormat, conversation: Conversation) -> str:
    """The conversation as the prompt format writes it; "" (no tokens) for one it cannot, which shard
    drops (chat_template_refused)."""
    try:
        return form.render_text(conversation)
    except Refused:
        return ""


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
    weights: dict[str, float],
    members: dict[str, np.ndarray],
    costs: np.ndarray,
    copies: np.ndarray,
    by: str,
    limits: dict[str, str],
) -> dict:
    """Per source: conversations in, kept, rows (with repeats), size in `by`, target and actual share,
    repeat factor (its size in the mix over its size in), and what kept it from its share (`limit`:
    "empty", "max_repeat" or None). `members` holds each source's conversations as a mask over all."""
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
            "repeat_factor": round(cost / max(int(costs[members[name]].sum()), 1), 3),
            "limit": limits.get(name),
        }
    return table


def validate_mix(section: dict) -> dict:
    by = require(section, "by", "mix", str)
    require(section, "seed", "mix", int)
    max_repeat = require(section, "max_repeat", "mix", int)
    on_empty = require(section, "on_empty", "mix", str)
    if by not in MIX_BY:
        raise ChatmillError(f"params.yaml: mix.by is {by!r}; use one of {', '.join(MIX_BY)}")
    if max_repeat < 1:
        raise ChatmillError(
            f"params.yaml: mix.max_repeat={max_repeat} must be >= 1 (copies of a conversation)"
        )
    if on_empty not in ON_EMPTY:
        raise ChatmillError(f"params.yaml: mix.on_empty is {on_empty!r}; use one of {', '.join(ON_EMPTY)}")
    return section


def emptied_by(name: str, trimmed_stats: Path) -> tuple[str, str]:
    """What left the source with nothing, from length-trim's stats.json (it lists every source), and
    what would keep some of it."""
    counts = read_json(trimmed_stats)["sources"].get(name, {})
    if counts.get("in"):
        cause = f"length-trim kept 0 of its {counts['in']} conversations"
        return cause, f"lower trim.threshold or set sources.{name}.trim: false to keep some, "
    return "clean kept none of its records; see data/clean/stats.json", ""


def empty_source_error(name: str, share: float, trimmed_stats: Path) -> ChatmillError:
    cause, fix = emptied_by(name, trimmed_stats)
    return ChatmillError(
        f"mix: source '{name}' is empty ({cause}); {fix}set sources.{name}.weight: 0 to mix without it, "
        f"or mix.on_empty: redistribute to give its {share:.1%} share to the others"
    )


def limit_warnings(
    table: dict,
    limits: dict[str, str],
    input_costs: dict[str, int],
    filled: bool,
    section: dict,
    trimmed_stats: Path,
) -> list[str]:
    """One line per source that could not fill its share (`table`: the composition; `filled`: whether
    the other sources took the rest, or the mix is smaller than its input)."""
    rest = "the rest goes to the other sources by weight" if filled else "no other source can take the rest"
    total_cost = sum(input_costs.values())
    warnings = []
    for name, limit in sorted(limits.items()):
        asked, given = table[name]["target_share"], table[name]["share"]
        if limit == "empty":
            cause = emptied_by(name, trimmed_stats)[0]
            warnings.append(
                f"mix: source '{name}' is empty ({cause}): it makes 0.0% of the mix, not {asked:.1%}; {rest} "
                "(mix.on_empty=redistribute)"
            )
        else:
            needed = asked * total_cost / input_costs[name]
            warnings.append(
                f"mix: source '{name}' would be repeated {needed:.1f}x to make its {asked:.1%} share, more "
                f"than mix.max_repeat={section['max_repeat']}: repeated {table[name]['repeat_factor']:g}x it "
                f"makes {given:.1%}; {rest}"
            )
    return warnings


def mix_file(
    in_file: Path,
    out_dir: Path,
    weights: dict[str, float],
    section: dict,
    tokenizer_dir: Path,
    prompt: dict | None = None,
) -> dict:
    """The mix stage: in_file's conversations, down- or up-sampled to their source's weight share and
    shuffled, into out_dir (replaced only when complete) with stats.json; when mix.by is tokens, the
    tokenizer of tokenizer_dir counts the tokens of each conversation written in the prompt format
    of `prompt` (the params section). length-trim's stats.json beside in_file says what emptied a
    source."""
    section = validate_mix(section)
    by, seed, max_repeat = section["by"], section["seed"], section["max_repeat"]
    trimmed_stats = in_file.with_name(STATS)
    tokenizer = None
    if by == "tokens":
        from transformers import AutoTokenizer  # only here: it pulls in torch, ~200 MB of memory

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        where, fix = f"mix: {tokenizer_dir}", "run `dvc repro base-model`"
        check_format(tokenizer, validate_format(prompt or {}), where, fix)

    source_index, costs, take_keys = measure(in_file, by, tokenizer, list(weights), seed)
    members = {name: source_index == position for position, name in enumerate(weights)}
    input_costs = {name: int(costs[member].sum()) for name, member in members.items()}
    limits = source_limits(input_costs, weights, max_repeat)
    empty = sorted(name for name, limit in limits.items() if limit == "empty")
    if empty and section["on_empty"] == "fail":
        raise empty_source_error(empty[0], weights[empty[0]] / sum(weights.values()), trimmed_stats)
    budgets = source_budgets(input_costs, weights, by, max_repeat)
    if sum(budgets.values()) == 0:
        raise ChatmillError(
            f"mix: nothing to mix: every source with a weight is empty ({', '.join(empty)}); lower "
            "trim.threshold, or give a source with conversations a weight (sources.NAME.weight)"
        )
    filled = math.isclose(sum(budgets.values()), sum(input_costs.values()))
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
    table = composition(weights, members, costs, copies, by, limits)
    warnings = limit_warnings(table, limits, input_costs, filled, section, trimmed_stats)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    with atomic_dir(out_dir) as out, Progress(transient=True) as progress:
        batches = progress.track(
            record_batches(in_file, batch_size=READ_BATCH),
            total=math.ceil(len(copies) / READ_BATCH),
            description="mix",
        )
        stats.extra["rows"] = write_shuffled(batches, copies, seed, out / "conversations.parquet", out)
        stats.extra["by"] = by
        stats.extra["composition"] = table
        stats.extra["warnings"] = warnings
        summary = stats.to_dict()
        write_json(out / "stats.json", summary)
    shares = ", ".join(f"{name} {entry['share']:.1%}" for name, entry in table.items())
    print(f"mix: {stats.extra['rows']} rows from {stats.records_out} conversations ({shares} of {by})")
    return summary
