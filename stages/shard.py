"""shard: mixed conversations -> packed token sequences, split into training parts and an eval set.

Each conversation is encoded in the Pygmalion format with loss on bot turns only (all of its bot
turns in one pass). A conversation longer than shard.seq_len is cut at turn boundaries into
windows that each repeat the persona header. Windows are packed first-fit into seq_len sequences;
position ids restart per window, so no token attends across windows. The eval split is held out
by conversation id; the training sequences are cut into train.parts parts of equal token budget,
each a whole number of global batches.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
from rich.progress import Progress
from transformers import AutoConfig, AutoTokenizer

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import atomic_dir, read_parquet, unit_interval, write_json, write_parquet
from chatmill.params import load_params, require
from chatmill.prompt import Encoded, encode_header, encode_turn
from chatmill.schema import CONVERSATION_SCHEMA, Conversation
from chatmill.shards import ARRAYS, IGNORE_INDEX, part_name, save_shard
from chatmill.stats import StageStats

MIXED_FILE = Path("data/mixed/conversations.parquet")
BASE_DIR = Path("models/base")
OUT_DIR = Path("data/shards")
OPEN_SEQUENCES = 64  # first-fit looks back this far: low padding, bounded memory


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

    def add(self, window: Encoded) -> None:
        for sequence in self.open:
            if sum(map(len, sequence)) + len(window) <= self.seq_len:
                sequence.append(window)
                return
        self.open.append([window])
        if len(self.open) > OPEN_SEQUENCES:
            self.sink(self.to_arrays(self.open.pop(0)))

    def flush(self) -> None:
        while self.open:
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


def encode_conversation(tokenizer, conversation: Conversation) -> tuple[Encoded, list[Encoded]]:
    turns = [encode_turn(tokenizer, turn, conversation["bot_name"]) for turn in conversation["turns"]]
    return encode_header(tokenizer, conversation), turns


def validate_shard(shard: dict, max_positions: int) -> dict:
    seq_len = require(shard, "seq_len", "shard", int)
    fraction = require(shard, "eval_fraction", "shard", (int, float))
    require(shard, "seed", "shard", int)
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
        for conversation in progress.track(read_parquet(MIXED_FILE), description="shard"):
            stats.records_in += 1
            held_out = is_eval(conversation, shard["seed"], shard["eval_fraction"])
            if held_out and conversation["id"] in eval_ids:
                stats.drop("eval_repeat")  # an up-sampled copy; the eval set holds each conversation once
                continue
            header, turns = encode_conversation(tokenizer, conversation)
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
