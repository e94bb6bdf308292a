"""CPU training-throughput benchmark: `make bench-train`.

Trains the embedded default's tiny scratch Llama (params.yaml `model.scratch`, built in-process from
config with `model.seed`; its byte-level BPE tokenizer trained as base-model trains it, on the
source's conversations) on the same conversations three ways, from the same initial weights:
  packed       chatmill's way: every bot turn of a conversation supervised in one pass; windows
               (stages/shard.py) packed first-fit into rows of seq_len tokens whose position ids
               restart per window; attention within each window only, as train runs it on the
               CPU (chatmill/attention.py: causal SDPA per document);
  padded       one sequence per window (a conversation, cut at seq_len like shard cuts it), padded
               to the longest in its micro batch, attention_mask over the padding;
  per-reply    the original data tool's way: one example per bot reply, the window up to and
               including that reply, only that reply supervised, padded per micro batch.
All three supervise exactly the same tokens, each with the same context (checked before
training), so they do the same learning work; what differs is how many tokens run through the
model for it. Padded and per-reply examples are shuffled (seeded) as a trainer's sampler would and
grouped into micro batches of at most train.micro_batch x seq_len tokens including padding: the
size of one packed micro batch. Each micro batch is one AdamW step (train.lr, train.weight_decay,
train.grad_clip) in fp32 on the CPU, in a plain torch loop rather than DeepSpeed (the same work per
step for every way; DeepSpeed adds the same overhead to each); the loss is transformers' causal-LM
loss on labels that are -100 outside the supervised tokens.

The context is the logbook's run's (presets/experiment-7.yaml shard.seq_len, 2048; --seq-len to
change it): RoPE has no weights per position, so the tiny model is the same at any length.
The ways take turns, a slice of micro batches each, so load from other processes on a shared
machine slows all three alike.

Data: the first --conversations conversations of a committed sample source (params.yaml
`sources`, default community_logs: the PIPPA chat logs), parsed and normalised with the clean
stage's functions; no PII scrubbing, filters or dedup (they drop or mask some conversations but
do not change how a conversation is laid out for training).
Results: printed, and written to benchmarks/results/train.json.
"""

import argparse
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from chatmill import attention, clean, modeling, packing
from chatmill.containers import iter_records
from chatmill.io import write_json
from chatmill.params import load_params
from chatmill.prompt import Encoded, corpus_texts, encode_conversation
from chatmill.records import RecordError
from chatmill.schema import Conversation
from chatmill.shards import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "benchmarks/results/train.json"
# The conversations of the logbook's run fit whole in its 2048-token context, so its per-reply and
# padded costs are set by whole conversations; params.yaml's 256 cuts them into near-full windows.
REAL_RUN = ROOT / "presets/experiment-7.yaml"
WAYS = ("packed", "padded", "per-reply")
GOAL_VS_PER_REPLY = 5.0
GOAL_VS_PADDED = 1.5
TURNS = 20  # slices per way; the ways take turns


@dataclass
class MicroBatch:
    """The model's inputs for one optimizer step, and how many of its tokens are padding."""

    inputs: dict[str, torch.Tensor]
    padding: int


def read_conversations(path: Path, format_name: str, source: str) -> list[Conversation]:
    """Every readable conversation with a bot turn, normalised as clean does, in file order."""
    conversations = []
    for raw in iter_records(path):
        try:
            conversation = clean.to_conversation(raw, source, format_name)
        except RecordError:
            continue
        if any(turn["role"] == "bot" for turn in conversation["turns"]):
            conversations.append(conversation)
    return conversations


def conversation_windows(tokenizer, conversations: list[Conversation], seq_len: int) -> list[Encoded]:
    """Every conversation encoded and cut into windows exactly as the shard stage does."""
    result = []
    for conversation in conversations:
        header, turns = encode_conversation(tokenizer, conversation)
        result += packing.windows(header, turns, seq_len)[0]
    return result


def reply_spans(window: Encoded) -> list[tuple[int, int]]:
    """(start, end) of each run of supervised tokens: one bot reply's text and its EOS. The
    "{bot}:" prefix and the newline around a reply are unsupervised, so replies never touch."""
    spans, start = [], None
    for index, supervised in enumerate([*window.supervised, False]):
        if supervised and start is None:
            start = index
        elif not supervised and start is not None:
            spans.append((start, index))
            start = None
    return spans


def per_reply_examples(window: Encoded) -> list[Encoded]:
    """One example per bot reply: the window up to the end of that reply, only the reply supervised."""
    return [
        Encoded(window.ids[:end], [start <= index < end for index in range(end)])
        for start, end in reply_spans(window)
    ]


def labels_of(example: Encoded) -> list[int]:
    return [
        token if supervised else IGNORE_INDEX
        for token, supervised in zip(example.ids, example.supervised, strict=True)
    ]


def packed_batches(windows: list[Encoded], seq_len: int, pad_id: int, micro_batch: int) -> list[MicroBatch]:
    """Windows packed by packing.Packer into seq_len rows, micro_batch rows per step, in packing order."""
    rows: list[dict] = []
    packer = packing.Packer(seq_len, pad_id, rows.append)
    for window in windows:
        packer.add((np.array(window.ids, dtype=np.int32), np.array(labels_of(window), dtype=np.int32)))
    packer.flush()
    batches = []
    for first in range(0, len(rows), micro_batch):
        group = rows[first : first + micro_batch]
        inputs = {
            name: torch.from_numpy(np.stack([row[name] for row in group])).long()
            for name in ("input_ids", "labels", "position_ids")
        }
        inputs["cu_seq_lens_q"] = attention.document_starts(inputs["position_ids"])
        batches.append(MicroBatch(inputs, sum(seq_len - row["length"] for row in group)))
    return batches


def padded_batch(examples: list[Encoded], pad_id: int) -> MicroBatch:
    """Right-padded to the longest example: the usual dynamic-padding collator."""
    longest = max(len(example) for example in examples)
    input_ids, labels, attention_mask = [], [], []
    for example in examples:
        padding = longest - len(example)
        input_ids.append(example.ids + [pad_id] * padding)
        labels.append(labels_of(example) + [IGNORE_INDEX] * padding)
        attention_mask.append([1] * len(example) + [0] * padding)
    inputs = {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(attention_mask),
    }
    return MicroBatch(inputs, longest * len(examples) - sum(len(example) for example in examples))


def padded_batches(examples: list[Encoded], pad_id: int, token_budget: int, seed: int) -> list[MicroBatch]:
    """Shuffled examples, each micro batch as many as fit in token_budget once padded to its longest."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    batches, group, longest = [], [], 0
    for example in order:
        if group and max(longest, len(example)) * (len(group) + 1) > token_budget:
            batches.append(padded_batch(group, pad_id))
            group, longest = [], 0
        group.append(example)
        longest = max(longest, len(example))
    if group:
        batches.append(padded_batch(group, pad_id))
    return batches


def token_counts(batches: list[MicroBatch]) -> dict[str, int]:
    """Supervised tokens are those the loss sees: labels != -100 after the causal shift."""
    return {
        "supervised_tokens": sum(int((b.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
        "forward_tokens": sum(b.inputs["input_ids"].numel() for b in batches),
        "padding_tokens": sum(b.padding for b in batches),
        "micro_batches": len(batches),
    }


def supervised_targets(batches: list[MicroBatch]) -> list[int]:
    """A fingerprint of each supervised token with its context (the tokens before it in its own
    document), sorted: equal lists mean the ways train on the same targets in the same contexts."""
    targets = []
    for batch in batches:
        ids, labels = batch.inputs["input_ids"].tolist(), batch.inputs["labels"].tolist()
        positions = batch.inputs["position_ids"].tolist() if "position_ids" in batch.inputs else None
        for row, (row_ids, row_labels) in enumerate(zip(ids, labels, strict=True)):
            prefix = 0
            for index, token in enumerate(row_ids):
                if positions is not None and positions[row][index] == 0:  # a packed document starts
                    prefix = 0
                prefix = hash((prefix, token))  # ints hash the same in every process
                if index and row_labels[index] != IGNORE_INDEX:
                    targets.append(prefix)
    return sorted(targets)


class WayTrainer:
    """One way's model and AdamW optimizer, trained one micro batch per step; counts its wall time."""

    def __init__(self, model: torch.nn.Module, train_params: dict):
        self.model, self.grad_clip, self.wall_s = model, train_params["grad_clip"], 0.0
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=train_params["lr"], weight_decay=train_params["weight_decay"]
        )
        model.train()

    def step(self, batch: MicroBatch) -> float:
        """Train on one micro batch; returns its loss."""
        started = time.perf_counter()
        loss = self.model(**batch.inputs, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        self.wall_s += time.perf_counter() - started
        return value


def turns(batches: dict[str, list[MicroBatch]], rounds: int) -> list[tuple[str, list[MicroBatch]]]:
    """Each way's micro batches cut into `rounds` consecutive slices, the ways taking turns slice by
    slice: load from other processes on a shared machine then slows every way alike."""
    return [
        (way, way_batches[len(way_batches) * turn // rounds : len(way_batches) * (turn + 1) // rounds])
        for turn in range(rounds)
        for way, way_batches in batches.items()
    ]


def figures(counts: dict[str, int], wall_s: float) -> dict:
    return counts | {
        "wall_s": round(wall_s, 2),
        "supervised_tokens_per_s": round(counts["supervised_tokens"] / wall_s, 1),
        "forward_per_supervised": round(counts["forward_tokens"] / counts["supervised_tokens"], 3),
        "padding_fraction": round(counts["padding_tokens"] / counts["forward_tokens"], 4),
    }


def machine() -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=60, help="first N conversations (default 60)")
    parser.add_argument(
        "--source", default="community_logs", help="a params.yaml source (default community_logs)"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        help=f"default: shard.seq_len of {REAL_RUN.relative_to(ROOT)}, the logbook's run",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    params = load_params("sources", "model", "train")
    source = params["sources"][args.source]
    seq_len = args.seq_len or load_params("shard", path=REAL_RUN)["shard"]["seq_len"]
    train_params, seed = params["train"], params["model"]["seed"]

    conversations = read_conversations(ROOT / source["uri"], source["format"], args.source)
    scratch = params["model"]["scratch"]
    tokenizer = modeling.train_tokenizer(corpus_texts(conversations), scratch["vocab_size"])
    # RoPE has no weights per position: a longer context is the same model.
    scratch = scratch | {"max_position_embeddings": max(scratch["max_position_embeddings"], seq_len)}
    initial = modeling.scratch_model(scratch, tokenizer, seed).state_dict()

    windows = conversation_windows(tokenizer, conversations[: args.conversations], seq_len)
    pad_id, budget = tokenizer.pad_token_id, train_params["micro_batch"] * seq_len
    replies = [example for window in windows for example in per_reply_examples(window)]
    batches = {
        "packed": packed_batches(windows, seq_len, pad_id, train_params["micro_batch"]),
        "padded": padded_batches(windows, pad_id, budget, seed),
        "per-reply": padded_batches(replies, pad_id, budget, seed),
    }
    targets = {way: supervised_targets(way_batches) for way, way_batches in batches.items()}
    if not targets["packed"] == targets["padded"] == targets["per-reply"]:
        raise SystemExit("bench-train: the three ways do not supervise the same tokens in the same contexts")

    trainers = {}
    for way in WAYS:
        model = modeling.scratch_model(scratch, tokenizer, seed)
        if way == "packed":
            model.set_attn_implementation(attention.packed_attention(torch.device("cpu"), False, seq_len))
        model.load_state_dict(initial)
        trainers[way] = WayTrainer(model, train_params)
    columns = (*Progress.get_default_columns(), "loss {task.fields[loss]:.3f}")
    with Progress(*columns, transient=True) as progress:
        tasks = {way: progress.add_task(way, total=len(batches[way]), loss=float("nan")) for way in WAYS}
        for way, turn_batches in turns(batches, TURNS):
            for batch in turn_batches:
                progress.update(tasks[way], advance=1, loss=trainers[way].step(batch))
    results = {way: figures(token_counts(batches[way]), trainers[way].wall_s) for way in WAYS}

    speed = {way: results[way]["supervised_tokens_per_s"] for way in WAYS}
    ratio_vs_per_reply = round(speed["packed"] / speed["per-reply"], 2)
    ratio_vs_padded = round(speed["packed"] / speed["padded"], 2)
    passed = ratio_vs_per_reply >= GOAL_VS_PER_REPLY and ratio_vs_padded >= GOAL_VS_PADDED
    result = {
        "machine": machine(),
        "source": args.source,
        "conversations": min(args.conversations, len(conversations)),
        "windows": len(windows),
        "replies": len(replies),
        "seq_len": seq_len,
        "token_budget_per_micro_batch": budget,
        "parameters": trainers["packed"].model.num_parameters(),
        "ways": results,
        "ratio_vs_per_reply": ratio_vs_per_reply,
        "ratio_vs_padded": ratio_vs_padded,
        "goal": {
            "ratio_vs_per_reply": GOAL_VS_PER_REPLY,
            "ratio_vs_padded": GOAL_VS_PADDED,
            "passed": passed,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)

    info = result["machine"]
    table = Table(
        title=f"bench-train: {result['conversations']} conversations, seq_len {seq_len}, "
        f"{result['parameters']:,} parameters, {info['cores']} cores / {info['torch_threads']} threads"
    )
    for column in (
        "way",
        "supervised tok/s",
        "forward / supervised",
        "padding",
        "wall s",
        "supervised tokens",
    ):
        table.add_column(column, justify="right")
    for way in WAYS:
        row = results[way]
        table.add_row(
            way,
            f"{row['supervised_tokens_per_s']:,.0f}",
            f"{row['forward_per_supervised']:.2f}",
            f"{row['padding_fraction']:.1%}",
            f"{row['wall_s']:.1f}",
            f"{row['supervised_tokens']:,}",
        )
    Console().print(table)
    verdict = "PASS" if passed else "FAIL"
    print(
        f"ratio_vs_per_reply {ratio_vs_per_reply} (goal >= {GOAL_VS_PER_REPLY}), "
        f"ratio_vs_padded {ratio_vs_padded} (goal >= {GOAL_VS_PADDED}): {verdict}  "
        f"(written to {RESULTS.relative_to(ROOT)})"
    )


if __name__ == "__main__":
    main()
