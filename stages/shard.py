"""shard: mixed conversations -> packed token sequences, split into training parts and an eval set.

Each conversation is encoded in the Pygmalion format with loss on bot turns only (all of its bot
turns in one pass). A conversation longer than shard.seq_len is cut at turn boundaries into
windows that each repeat the persona header. Windows are packed first-fit into seq_len sequences;
position ids restart per window, so no token attends across windows. The eval split is held out
by conversation id; the training sequences are cut into train.parts parts of equal token budget,
each a whole number of global batches.
"""

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from rich.progress import Progress
from transformers import AutoConfig, AutoTokenizer

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import atomic_dir, batched, read_parquet, unit_interval, write_json, write_parquet
from chatmill.params import load_params, require
from chatmill.prompt import Encoded, encode_conversation
from chatmill.schema import CONVERSATION_SCHEMA, Conversation
from chatmill.shards import ARRAYS, IGNORE_INDEX, part_name, save_shard
from chatmill.stats import StageStats

MIXED_FILE = Path("data/mixed/conversations.parquet")
BASE_DIR = Path("models/base")
OUT_DIR = Path("data/shards")
OPEN_SEQUENCES = 64  # first-fit looks back this far: low padding, bounded memory
ENCODE_BATCH = 256  # conversations per task sent to a worker


def windows(header: Encoded, turns: list[Encoded], seq_len: int) -> tuple[list[Encoded], int]:
    """Cut a conversation at turn boundaries into windows of at most seq_len tokens, each starting
    with the header. A turn too long for any window is truncated. Returns (windows, truncated)."""
    header = Encoded(header.ids[: seq_len // 2], header.supervised[: seq_len // 2])
    room = seq_len - len(header)
    result, current, truncated = [], Encoded([], []), 0
    for turn in turns:
        if len(turn) > room:
            turn, truncated = Encoded(turn.ids[:room], turn.supervised[:room]), truncated + 1
        if len(current) + len(turn) > room:
            result.append(header + current)
            current = Encoded([], [])
        current = current + turn
    if len(current):
        result.append(header + current)
    return [window for window in result if any(window.supervised)], truncated


class Packer:
    """First-fit packing of windows into fixed-length sequences; full ones are emitted in order."""

    def __init__(self, seq_len: int, pad_id: int, sink):
        self.seq_len, self.pad_id, self.sink = seq_len, pad_id, sink
        self.open: list[list[Encoded]] = []
        self.used: list[int] = []  # tokens taken in each open sequence

    def add(self, window: Encoded) -> None:
        for index, used in enumerate(self.used):
            if used + len(window) <= self.seq_len:
                self.open[index].append(window)
                self.used[index] += len(window)
                return
        self.open.append([window])
        self.used.append(len(window))
        if len(self.open) > OPEN_SEQUENCES:
            self.emit_oldest()

    def flush(self) -> None:
        while self.open:
            self.emit_oldest()

    def emit_oldest(self) -> None:
        self.used.pop(0)
        self.sink(self.to_arrays(self.open.pop(0)))

    def to_arrays(self, sequence: list[Encoded]) -> dict[str, np.ndarray]:
        ids, labels, positions = [], [], []
        for window in sequence:
            ids += window.ids
            labels += [t if s else IGNORE_INDEX for t, s in zip(window.ids, window.supervised, strict=True)]
            positions += range(len(window))
        length, padding = len(ids), self.seq_len - len(ids)
        ids += [self.pad_id] * padding
        labels += [IGNORE_INDEX] * padding
        positions += range(padding)
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "length": length}


class SequenceFile:
    """Append-only raw int32 rows on disk (flat memory), read back as memory maps, plus the
    unpadded length of each row."""

    def __init__(self, folder: Path, seq_len: int):
        self.folder, self.seq_len, self.lengths = folder, seq_len, []
        folder.mkdir(parents=True, exist_ok=True)
        self.handles = {name: open(folder / f"{name}.bin", "wb") for name in ARRAYS}

    def __call__(self, arrays: dict) -> None:
        for name in ARRAYS:
            self.handles[name].write(np.asarray(arrays[name], dtype=np.int32).tobytes())
        self.lengths.append(arrays["length"])

    def close(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        for handle in self.handles.values():
            handle.close()
        shape = (len(self.lengths), self.seq_len)
        arrays = {name: np.memmap(self.folder / f"{name}.bin", np.int32, "r", shape=shape) for name in ARRAYS}
        return arrays, np.asarray(self.lengths, dtype=np.int64)


def part_sizes(n_sequences: int, parts: int, global_batch: int) -> int:
    per_part = n_sequences // parts // global_batch * global_batch
    if per_part == 0:
        raise ChatmillError(
            f"shard: {n_sequences} training sequences cannot fill {parts} parts of at least one global batch "
            f"({global_batch}); lower train.global_batch or train.parts, shorten shard.seq_len, or add data"
        )
    return per_part


def sequence_stats(arrays: dict[str, np.ndarray], lengths: np.ndarray) -> dict:
    tokens = int(arrays["input_ids"].size)
    return {
        "sequences": int(arrays["input_ids"].shape[0]),
        "tokens": tokens,
        "supervised_tokens": int((np.asarray(arrays["labels"]) != IGNORE_INDEX).sum()),
        "padding_fraction": round(1 - int(lengths.sum()) / max(tokens, 1), 6),
    }


def is_eval(conversation: Conversation, seed: int, fraction: float) -> bool:
    return unit_interval(seed, "eval", conversation["id"]) < fraction


_worker_tokenizer = None


def _load_worker_tokenizer(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode_batch(conversations: list[Conversation]) -> list[tuple[Encoded, list[Encoded]]]:
    return [encode_conversation(_worker_tokenizer, conversation) for conversation in conversations]


def encoded_conversations(
    rows: Iterable[Conversation], tokenizer_dir: Path, workers: int
) -> Iterator[tuple[Conversation, Encoded, list[Encoded]]]:
    """Tokenize on `workers` processes; results come back in input order, so the output is the
    same for any worker count. At most 2 x workers batches are in flight: memory stays flat."""
    _load_worker_tokenizer(str(tokenizer_dir))
    pool = (
        multiprocessing.Pool(workers, _load_worker_tokenizer, (str(tokenizer_dir),)) if workers > 1 else None
    )
    try:
        for group in batched(batched(rows, ENCODE_BATCH), 2 * workers):
            results = pool.map(_encode_batch, group) if pool else map(_encode_batch, group)
            for batch, encoded in zip(group, results, strict=True):
                for conversation, (header, turns) in zip(batch, encoded, strict=True):
                    yield conversation, header, turns
    finally:
        if pool:
            pool.terminate()


def worker_count(workers: int) -> int:
    """0 means every core this process may use."""
    return workers or len(os.sched_getaffinity(0))


def validate_shard(shard: dict, max_positions: int) -> dict:
    seq_len = require(shard, "seq_len", "shard", int)
    fraction = require(shard, "eval_fraction", "shard", (int, float))
    require(shard, "seed", "shard", int)
    if require(shard, "workers", "shard", int) < 0:
        raise ChatmillError(f"params.yaml: shard.workers={shard['workers']} must be >= 0 (0 = all cores)")
    if not 16 <= seq_len <= max_positions:
        raise ChatmillError(
            f"params.yaml: shard.seq_len={seq_len} must be 16..{max_positions} (the model's context)"
        )
    if not 0 < fraction < 1:
        raise ChatmillError(f"params.yaml: shard.eval_fraction={fraction} must be between 0 and 1")
    return shard


@exit_on_error
def main() -> None:
    params = load_params("shard", "train")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # our own worker processes parallelize
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    shard = validate_shard(params["shard"], AutoConfig.from_pretrained(BASE_DIR).max_position_embeddings)
    parts = require(params["train"], "parts", "train", int)
    global_batch = require(params["train"], "global_batch", "train", int)
    seq_len, pad_id = shard["seq_len"], tokenizer.pad_token_id

    stats, counts, eval_ids, eval_rows = StageStats(), Counter(), set(), []
    with atomic_dir(OUT_DIR) as out, Progress(transient=True) as progress:
        train_file, eval_file = (
            SequenceFile(out / "work-train", seq_len),
            SequenceFile(out / "work-eval", seq_len),
        )
        packers = {False: Packer(seq_len, pad_id, train_file), True: Packer(seq_len, pad_id, eval_file)}
        rows = progress.track(read_parquet(MIXED_FILE), description="shard")
        for conversation, header, turns in encoded_conversations(
            rows, BASE_DIR, worker_count(shard["workers"])
        ):
            stats.records_in += 1
            held_out = is_eval(conversation, shard["seed"], shard["eval_fraction"])
            if held_out and conversation["id"] in eval_ids:
                stats.drop("eval_repeat")  # an up-sampled copy; the eval set holds each conversation once
                continue
            conversation_windows, truncated = windows(header, turns, seq_len)
            counts["truncated_turns"] += truncated
            if not conversation_windows:
                stats.drop("no_supervised_tokens")
                continue
            if held_out:
                eval_ids.add(conversation["id"])
                eval_rows.append(conversation)
            for window in conversation_windows:
                packers[held_out].add(window)
            counts["windows"] += len(conversation_windows)
            counts["eval_conversations" if held_out else "train_rows"] += 1
            stats.records_out += 1
        for packer in packers.values():
            packer.flush()
        (train, train_lengths), (evaluation, eval_lengths) = train_file.close(), eval_file.close()

        per_part = part_sizes(len(train_lengths), parts, global_batch)
        stats.extra["parts"] = {}
        for part in range(1, parts + 1):
            rows = slice((part - 1) * per_part, part * per_part)
            arrays = {name: train[name][rows] for name in ARRAYS}
            save_shard(out / part_name(part), arrays)
            stats.extra["parts"][part_name(part)] = sequence_stats(arrays, train_lengths[rows])
        save_shard(out / "eval", evaluation)
        write_parquet(out / "eval" / "conversations.parquet", CONVERSATION_SCHEMA, eval_rows)
        stats.extra["eval"] = sequence_stats(evaluation, eval_lengths)
        stats.extra |= dict(counts) | {
            "seq_len": seq_len,
            "sequences_per_part": per_part,
            "sequences_unused": len(train_lengths) - parts * per_part,
        }
        del train, evaluation
        for work in ("work-train", "work-eval"):
            for path in (out / work).iterdir():
                path.unlink()
            (out / work).rmdir()
        write_json(out / "stats.json", stats.to_dict())
    print(
        f"shard: {parts} parts x {per_part} sequences of {seq_len} tokens; "
        f"eval {stats.extra['eval']['sequences']} sequences; "
        + json.dumps(stats.extra["parts"][part_name(1)])
    )


if __name__ == "__main__":
    main()
