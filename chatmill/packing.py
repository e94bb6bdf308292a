"""Packing (the shard stage): mixed conversations -> packed token sequences, split into training
parts and an eval set.

Each conversation is encoded in the prompt format models/base's tokenizer was prepared for
(prompt.format, chatmill.prompt) with loss on bot turns only (all of its bot turns in one pass). A
conversation longer than shard.seq_len is cut at turn boundaries into windows that each repeat the
persona header. Windows are packed first-fit into seq_len sequences; position ids restart per
window, so no token attends across windows. The eval split is held out by conversation id; the
training sequences are cut into train.parts parts of equal token budget, each a whole number of
global batches. A conversation the format cannot write (prompt.format: base, a chat template that
refuses it) is dropped with the reason chat_template_refused.

Memory stays flat at any input size: conversations stream through the worker processes a record
batch at a time, packed sequences go straight to work files on disk and are copied into the parts
a chunk at a time, and the eval conversations are written in a second read of the mixed file.
"""

import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress
from transformers import AutoConfig, AutoTokenizer

from chatmill.errors import ChatmillError
from chatmill.io import (
    atomic_dir,
    ordered_pool_map,
    record_batches,
    remove,
    unit_interval,
    write_json,
    write_parquet,
)
from chatmill.layout import part_name
from chatmill.params import require
from chatmill.prompt import Encoded, Refused, check_format, encode_conversations
from chatmill.schema import CONVERSATION_SCHEMA, Conversation
from chatmill.shards import ARRAYS, IGNORE_INDEX
from chatmill.stats import StageStats

OPEN_SEQUENCES = 64  # first-fit looks back this far: low padding, bounded memory
ENCODE_BATCH = 256  # conversations per task sent to a worker
COPY_ROWS = 4096  # sequences per chunk when the work files are copied into the parts
WRITE_BYTES = 1 << 22  # packed sequences are written to the work files in pieces of about 4 MB
READ_BATCH = 2048  # conversations per record batch when the mixed file is read again

Window = tuple[np.ndarray, np.ndarray]  # a window's token ids and labels (IGNORE_INDEX: no loss), int32


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
        current += turn  # in place: current is always a fresh Encoded
    if len(current):
        result.append(header + current)
    return [window for window in result if any(window.supervised)], truncated


class Packer:
    """First-fit packing of windows into fixed-length sequences; full ones are emitted in order."""

    def __init__(self, seq_len: int, pad_id: int, sink):
        self.seq_len, self.sink = seq_len, sink
        self.padding = np.full(seq_len, pad_id, dtype=np.int32)
        self.ignored = np.full(seq_len, IGNORE_INDEX, dtype=np.int32)
        self.positions = np.arange(seq_len, dtype=np.int32)
        self.open: list[list[Window]] = []
        self.free: list[int] = []  # tokens still free in each open sequence

    def add(self, window: Window) -> None:
        size = len(window[0])
        for index, free in enumerate(self.free):
            if size <= free:
                self.open[index].append(window)
                self.free[index] -= size
                return
        self.open.append([window])
        self.free.append(self.seq_len - size)
        if len(self.open) > OPEN_SEQUENCES:
            self.emit_oldest()

    def flush(self) -> None:
        while self.open:
            self.emit_oldest()

    def emit_oldest(self) -> None:
        self.free.pop(0)
        self.sink(self.to_arrays(self.open.pop(0)))

    def to_arrays(self, sequence: list[Window]) -> dict[str, np.ndarray | int]:
        lengths = [len(window_ids) for window_ids, _ in sequence]
        padding = self.seq_len - sum(lengths)
        ids = np.concatenate(
            [*(window_ids for window_ids, _ in sequence), self.padding[:padding]], dtype=np.int32
        )
        labels = np.concatenate(
            [*(window_labels for _, window_labels in sequence), self.ignored[:padding]], dtype=np.int32
        )
        # positions restart with each window, and again for the padding
        positions = np.concatenate([self.positions[:length] for length in [*lengths, padding]])
        return {
            "input_ids": ids,
            "labels": labels,
            "position_ids": positions,
            "length": self.seq_len - padding,
        }


class SequenceFile:
    """Append-only raw int32 rows on disk (flat memory) with each row's unpadded length; copied
    into the shard folders a chunk at a time."""

    def __init__(self, folder: Path, seq_len: int):
        self.folder, self.seq_len, self.rows = folder, seq_len, 0
        folder.mkdir(parents=True, exist_ok=True)
        self.handles = {name: open(folder / f"{name}.bin", "wb") for name in (*ARRAYS, "length")}
        self.pending: dict[str, list[bytes]] = {name: [] for name in self.handles}  # rows not yet written
        self.rows_per_write = max(1, WRITE_BYTES // (len(ARRAYS) * seq_len * 4))

    def __call__(self, arrays: dict) -> None:
        for name in ARRAYS:
            self.pending[name].append(arrays[name].tobytes())
        self.pending["length"].append(np.int32(arrays["length"]).tobytes())
        self.rows += 1
        if len(self.pending["length"]) == self.rows_per_write:  # one write per file per piece, not per row
            self.write_pending()

    def write_pending(self) -> None:
        for name, rows in self.pending.items():
            self.handles[name].write(b"".join(rows))
            rows.clear()

    def close(self) -> None:
        self.write_pending()
        for handle in self.handles.values():
            handle.close()

    def chunks(self, name: str, rows: range) -> Iterator[np.ndarray]:
        """Rows `rows` of one work file, COPY_ROWS at a time."""
        width = 1 if name == "length" else self.seq_len
        with open(self.folder / f"{name}.bin", "rb") as handle:
            handle.seek(rows.start * width * 4)
            for start in range(rows.start, rows.stop, COPY_ROWS):
                count = min(COPY_ROWS, rows.stop - start)
                yield np.frombuffer(handle.read(count * width * 4), dtype=np.int32)

    def save(self, rows: range, folder: Path) -> dict:
        """Write rows `rows` into `folder` as the .npy files chatmill.shards.save_shard writes, without
        holding them in memory; return their sequence statistics."""
        folder.mkdir(parents=True, exist_ok=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False}
        supervised = 0
        for name in ARRAYS:
            with open(folder / f"{name}.npy", "wb") as out:
                np.lib.format.write_array_header_1_0(out, header | {"shape": (len(rows), self.seq_len)})
                for chunk in self.chunks(name, rows):
                    out.write(chunk.tobytes())
                    if name == "labels":
                        supervised += int(np.count_nonzero(chunk != IGNORE_INDEX))
        tokens = len(rows) * self.seq_len
        unpadded = sum(int(chunk.sum()) for chunk in self.chunks("length", rows))
        return {
            "sequences": len(rows),
            "tokens": tokens,
            "supervised_tokens": supervised,
            "padding_fraction": round(1 - unpadded / max(tokens, 1), 6),
        }

    def remove(self) -> None:
        remove(self.folder)


def part_sizes(n_sequences: int, parts: int, global_batch: int) -> int:
    per_part = n_sequences // parts // global_batch * global_batch
    if per_part == 0:
        raise ChatmillError(
            f"shard: {n_sequences} training sequences cannot fill {parts} parts of at least one global batch "
            f"({global_batch}); lower train.global_batch or train.parts, shorten shard.seq_len, or add data"
        )
    return per_part


def is_eval(conversation: Conversation, seed: int, fraction: float) -> bool:
    return unit_interval(seed, "eval", conversation["id"]) < fraction


@functools.cache
def load_tokenizer(tokenizer_dir: str):
    """Once per process: the workers keep theirs across batches."""
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@dataclass
class EncodedBatch:
    """A batch of conversations cut into windows, held as a few flat arrays so that it crosses the
    process boundary cheaply: all windows' token ids and labels end to end, and their lengths."""

    conversation_ids: list[str] = field(default_factory=list)
    held_out: list[bool] = field(default_factory=list)
    truncated_turns: list[int] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why the format could not write it; "" if it could
    window_counts: list[int] = field(default_factory=list)  # per conversation
    window_lengths: list[int] = field(default_factory=list)
    token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def conversations(self) -> Iterator[tuple[str, bool, int, str, list[Window]]]:
        """(id, held out, truncated turns, refusal, windows) per conversation, in batch order."""
        ends = np.cumsum(self.window_lengths, dtype=np.int64).tolist()
        bounds = iter(zip([0, *ends], ends, strict=False))
        for conversation_id, held_out, truncated, refusal, count in zip(
            self.conversation_ids,
            self.held_out,
            self.truncated_turns,
            self.refusals,
            self.window_counts,
            strict=True,
        ):
            conversation_windows = [
                (self.token_ids[start:end], self.labels[start:end]) for start, end in islice(bounds, count)
            ]
            yield conversation_id, held_out, truncated, refusal, conversation_windows


@dataclass(frozen=True)
class BatchEncoder:
    """Encodes and windows a record batch of conversations; what the worker processes run. Small to
    pickle: the tokenizer itself is loaded once per process."""

    tokenizer_dir: str
    seq_len: int
    eval_seed: int
    eval_fraction: float

    def __call__(self, batch: pa.RecordBatch) -> EncodedBatch:
        tokenizer = load_tokenizer(self.tokenizer_dir)
        encoded, ids, supervised = EncodedBatch(), [], []
        conversations = batch.to_pylist()
        for conversation, written in zip(
            conversations, encode_conversations(tokenizer, conversations), strict=True
        ):
            refused = isinstance(written, Refused)
            conversation_windows, truncated = ([], 0) if refused else windows(*written, self.seq_len)
            encoded.conversation_ids.append(conversation["id"])
            encoded.held_out.append(is_eval(conversation, self.eval_seed, self.eval_fraction))
            encoded.truncated_turns.append(truncated)
            encoded.refusals.append(str(written) if refused else "")
            encoded.window_counts.append(len(conversation_windows))
            for window in conversation_windows:
                encoded.window_lengths.append(len(window))
                ids += window.ids
                supervised += window.supervised
        encoded.token_ids = np.array(ids, dtype=np.int32)
        encoded.labels = np.where(np.array(supervised, dtype=bool), encoded.token_ids, np.int32(IGNORE_INDEX))
        return encoded


def held_out_conversations(path: Path, eval_ids: set[str]) -> Iterator[Conversation]:
    """Each eval conversation once, in file order, from a second read of the file: never all in memory."""
    remaining = set(eval_ids)
    for batch in record_batches(path, batch_size=READ_BATCH):
        picked = []
        for index, conversation_id in enumerate(batch.column("id").to_pylist()):
            if conversation_id in remaining:
                remaining.remove(conversation_id)
                picked.append(index)
        yield from batch.take(picked).to_pylist()


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


def build_shards(
    mixed_file: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    shard: dict,
    parts: int,
    global_batch: int,
    workers: int,
    prompt_format: str,
) -> dict:
    """The shard stage: mixed_file's conversations packed into out_dir/part-01..NN and out_dir/eval
    (replaced only when complete) with stats.json; tokenized on `workers` processes in prompt_format,
    which tokenizer_dir's tokenizer must have been prepared for."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # our own worker processes parallelize
    tokenizer = load_tokenizer(str(tokenizer_dir))
    check_format(tokenizer, prompt_format, f"shard: {tokenizer_dir}", "run `dvc repro base-model`")
    shard = validate_shard(shard, AutoConfig.from_pretrained(tokenizer_dir).max_position_embeddings)
    seq_len = shard["seq_len"]
    encoder = BatchEncoder(str(tokenizer_dir), seq_len, shard["seed"], shard["eval_fraction"])

    stats, counts, eval_ids, refusal = StageStats(), Counter(), set(), ""
    with atomic_dir(out_dir) as out, Progress(transient=True) as progress:
        train = SequenceFile(out / "work-train", seq_len)
        evaluation = SequenceFile(out / "work-eval", seq_len)
        packers = {
            False: Packer(seq_len, tokenizer.pad_token_id, train),
            True: Packer(seq_len, tokenizer.pad_token_id, evaluation),
        }
        task = progress.add_task("shard", total=pq.ParquetFile(mixed_file).metadata.num_rows)
        # batches come back in file order, so the output is the same for any worker count
        batches = record_batches(mixed_file, batch_size=ENCODE_BATCH)
        for _, batch in ordered_pool_map(encoder, batches, workers):
            for conversation_id, held_out, truncated, refused, conversation_windows in batch.conversations():
                if refused:
                    stats.drop("chat_template_refused")
                    refusal = refusal or f"{conversation_id}: {refused}"
                    continue
                if held_out and conversation_id in eval_ids:
                    stats.drop("eval_repeat")  # an up-sampled copy; the eval set holds each conversation once
                    continue
                counts["truncated_turns"] += truncated
                if not conversation_windows:
                    stats.drop("no_supervised_tokens")
                    continue
                if held_out:
                    eval_ids.add(conversation_id)
                for window in conversation_windows:
                    packers[held_out].add(window)
                counts["windows"] += len(conversation_windows)
                counts["eval_conversations" if held_out else "train_rows"] += 1
                stats.keep()
            progress.advance(task, len(batch.conversation_ids))
        for packer in packers.values():
            packer.flush()
        train.close()
        evaluation.close()

        per_part = part_sizes(train.rows, parts, global_batch)
        stats.extra["parts"] = {
            part_name(part): train.save(range((part - 1) * per_part, part * per_part), out / part_name(part))
            for part in range(1, parts + 1)
        }
        stats.extra["eval"] = evaluation.save(range(evaluation.rows), out / "eval")
        write_parquet(
            out / "eval" / "conversations.parquet",
            CONVERSATION_SCHEMA,
            held_out_conversations(mixed_file, eval_ids),
        )
        stats.extra |= dict(counts) | {
            "seq_len": seq_len,
            "sequences_per_part": per_part,
            "sequences_unused": train.rows - parts * per_part,
        }
        train.remove()
        evaluation.remove()
        summary = stats.to_dict()
        write_json(out / "stats.json", summary)
    if refusal:
        print(
            f"warning: shard: dropped {stats.dropped['chat_template_refused']} conversations that the chat "
            f"template of {tokenizer_dir} refuses (stats.json: chat_template_refused); the first: {refusal}",
            file=sys.stderr,
        )
    print(
        f"shard: {parts} parts x {per_part} sequences of {seq_len} tokens; "
        f"eval {stats.extra['eval']['sequences']} sequences; "
        + json.dumps(stats.extra["parts"][part_name(1)])
    )
    return summary
