"""CPU training-throughput benchmark: `make bench-train`.

Trains a Llama built in-process from config (BENCH_MODEL, large enough that matmuls and attention
kernels take most of a step on 2 cores; --tiny: the embedded default's tiny scratch model,
params.yaml `model.scratch`), from `model.seed`, with a byte-level BPE tokenizer trained as
base-model trains it, on the same conversations three ways, from the same initial weights:
  packed       chatmill's way: every bot turn of a conversation supervised in one pass; windows
               (stages/shard.py) packed first-fit into rows of seq_len tokens whose position ids
               restart per window; attention within each window only, as train runs it on the
               CPU (chatmill/attention.py, use_packed_attention);
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
loss on labels that are -100 outside the supervised tokens. Beside them, "packed LoRA" trains the
packed way's micro batches with train.lora's adapters over the frozen model, applied as train
applies them (chatmill/training.py, with_adapter): optimizer-state bytes and step time against
full fine-tuning.

The context is the logbook's run's (presets/experiment-7.yaml shard.seq_len, 2048; --seq-len to
change it). Timing runs in --rounds rounds, and within a round the ways take turns step by step:
each trains its next micro batch in turn (the order rotated at every turn), a way with fewer micro
batches going round its own again, until the way with the most has trained all of its. A slow
spell of the machine, which on a shared 2-core VM lasts seconds to minutes, so falls on every way
alike, and the ratio of two ways' speeds in a round compares steps taken side by side. Printed: the
median and min-max over the rounds of each way's supervised tokens/s and of each ratio (a ratio per
round); the verdict uses the medians. Then one step of each way under torch.profiler: the share of
its time in matmuls.

Data: the first --conversations conversations of a committed sample source (params.yaml
`sources`, default community_logs: the PIPPA chat logs), parsed and normalised with the clean
stage's functions; no PII scrubbing, filters or dedup (they drop or mask some conversations but
do not change how a conversation is laid out for training).
Results: printed, and written to benchmarks/results/train.json with every round.
"""

import argparse
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from chatmill import attention, clean, modeling, packing
from chatmill.bench.machine import machine, ratios, round_orders, spread, spread_text
from chatmill.containers import iter_records
from chatmill.io import write_json
from chatmill.params import load_params
from chatmill.prompt import Encoded, corpus_texts, encode_conversation
from chatmill.records import RecordError
from chatmill.schema import Conversation
from chatmill.shards import IGNORE_INDEX
from chatmill.training import with_adapter

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "benchmarks/results/train.json"
# The conversations of the logbook's run fit whole in its 2048-token context, so its per-reply and
# padded costs are set by whole conversations; params.yaml's 256 cuts them into near-full windows.
REAL_RUN = ROOT / "presets/experiment-7.yaml"
WAYS = ("packed", "padded", "per-reply")
LORA = "packed LoRA"  # the packed way's micro batches, train.lora adapters over the frozen model
GOAL_VS_PER_REPLY = 5.0
GOAL_VS_PADDED = 1.5
# A Llama of 4.3M parameters: on 2 cores at seq_len 2048 matmuls take 45-66% of a step and attention
# kernels 21-35% more (each run profiles one step a way; docs/benchmarks.md), and 3 rounds over
# DEFAULT_CONVERSATIONS take about 3.5 minutes. The vocabulary is the trained tokenizer's, as in
# model.scratch.
BENCH_MODEL = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 6,
}
DEFAULT_CONVERSATIONS = {"bench": 10, "tiny": 60}
# torch.profiler op names: matmuls forward (linear is addmm or matmul inside) and their backward
# nodes; attention kernels, fused or not.
MATMUL_OP = re.compile(r"aten::(mm|addmm|bmm|matmul|linear|mv|addmv)$|^(Mm|Addmm|Bmm|Mv)Backward")
ATTENTION_OP = re.compile(r"scaled_dot_product|ScaledDotProduct|flash_attention", re.IGNORECASE)


@dataclass
class MicroBatch:
    """The model's inputs for one optimizer step, and how many of its tokens are padding."""

    inputs: dict[str, torch.Tensor]
    padding: int


@dataclass
class RoundTimes:
    """What each run did in each round: its wall seconds, the supervised tokens and the steps they trained."""

    seconds: list[float]
    supervised_tokens: list[int]
    steps: list[int]

    def speeds(self) -> list[float]:
        pairs = zip(self.supervised_tokens, self.seconds, strict=True)
        return [tokens / seconds for tokens, seconds in pairs]

    def step_seconds(self) -> list[float]:
        return [seconds / steps for seconds, steps in zip(self.seconds, self.steps, strict=True)]


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
    """One way's model and AdamW optimizer over its trainable weights, trained one micro batch per
    step; counts its wall time."""

    def __init__(self, model: torch.nn.Module, train_params: dict):
        self.model, self.grad_clip, self.wall_s = model, train_params["grad_clip"], 0.0
        self.trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=train_params["lr"], weight_decay=train_params["weight_decay"]
        )
        model.train()

    def step(self, batch: MicroBatch) -> float:
        """Train on one micro batch; returns its loss."""
        started = time.perf_counter()
        loss = self.model(**batch.inputs, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        self.wall_s += time.perf_counter() - started
        return value


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (AdamW: two moments per trained weight, and a step)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def op_split(self_cpu_us: dict[str, float], wall_us: float) -> dict[str, float]:
    """Shares of one step's wall time: matmuls, attention kernels, every other op, and what no op
    accounts for (Python, the optimizer's bookkeeping between ops), from each op's self CPU time."""
    matmul = sum(time_us for name, time_us in self_cpu_us.items() if MATMUL_OP.search(name))
    attention_us = sum(
        time_us
        for name, time_us in self_cpu_us.items()
        if ATTENTION_OP.search(name) and not MATMUL_OP.search(name)
    )
    ops = sum(self_cpu_us.values())
    return {
        "step_ms": round(wall_us / 1000, 1),
        "matmul": round(matmul / wall_us, 3),
        "attention": round(attention_us / wall_us, 3),
        "other_ops": round((ops - matmul - attention_us) / wall_us, 3),
        "outside_ops": round(max(0.0, 1 - ops / wall_us), 3),
    }


def profile_step(trainer: WayTrainer, batch: MicroBatch) -> dict[str, float]:
    """One training step under torch.profiler (CPU): op_split of its time."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        trainer.step(batch)
        wall_us = (time.perf_counter() - started) * 1e6
    # key_averages() already sums the events of each op name: one entry per op
    return op_split({event.key: event.self_cpu_time_total for event in profiler.key_averages()}, wall_us)


def typical(batches: list[MicroBatch]) -> MicroBatch:
    """The micro batch of median size (forward tokens): the one a way's profile is taken on."""
    return sorted(batches, key=lambda batch: batch.inputs["input_ids"].numel())[len(batches) // 2]


def figures(counts: dict[str, int], times: RoundTimes) -> dict:
    return counts | {
        "forward_per_supervised": round(counts["forward_tokens"] / counts["supervised_tokens"], 3),
        "padding_fraction": round(counts["padding_tokens"] / counts["forward_tokens"], 4),
        "supervised_tokens_per_s": spread(times.speeds(), 1),
        "round_s": spread(times.seconds),
        "round_supervised_tokens": times.supervised_tokens,
    }


def lora_figures(trainer: WayTrainer, times: RoundTimes) -> dict:
    return {
        "trainable_parameters": sum(parameter.numel() for parameter in trainer.trainable),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "step_s": spread(times.step_seconds(), 3),
    }


def build_batches(tokenizer, conversations: list[Conversation], seq_len: int, micro_batch: int, seed: int):
    """Each way's micro batches, checked to supervise the same tokens in the same contexts."""
    windows = conversation_windows(tokenizer, conversations, seq_len)
    pad_id, budget = tokenizer.pad_token_id, micro_batch * seq_len
    replies = [example for window in windows for example in per_reply_examples(window)]
    batches = {
        "packed": packed_batches(windows, seq_len, pad_id, micro_batch),
        "padded": padded_batches(windows, pad_id, budget, seed),
        "per-reply": padded_batches(replies, pad_id, budget, seed),
    }
    targets = {way: supervised_targets(way_batches) for way, way_batches in batches.items()}
    if not targets["packed"] == targets["padded"] == targets["per-reply"]:
        raise SystemExit("bench-train: the three ways do not supervise the same tokens in the same contexts")
    return batches, len(windows), len(replies)


def build_trainers(model_config: dict, tokenizer, seed: int, train_params: dict, seq_len: int) -> dict:
    """A trainer per way and one for packed LoRA, each from the same initial weights."""
    cpu = torch.device("cpu")
    initial = modeling.scratch_model(model_config, tokenizer, seed).state_dict()
    trainers = {}
    for name in (*WAYS, LORA):
        model = modeling.scratch_model(model_config, tokenizer, seed)
        model.load_state_dict(initial)
        if name in ("packed", LORA):
            attention.use_packed_attention(model, cpu, False, seq_len)
        if name == LORA:  # new adapters, as part 1 makes them (no previous part to read)
            model = with_adapter(model, 1, Path(), train_params | {"adapter": "lora"})
        trainers[name] = WayTrainer(model, train_params)
    return trainers


def run_rounds(trainers: dict, batches: dict, rounds: int) -> dict[str, RoundTimes]:
    """Every run's seconds and supervised tokens in each round, its steps interleaved with the other
    runs' in round_orders' order (module docstring). One untimed step each first: kernels chosen and
    memory allocated."""
    turns = max(len(run_batches) for run_batches in batches.values())
    supervised = {
        name: [token_counts([batch])["supervised_tokens"] for batch in run_batches]
        for name, run_batches in batches.items()
    }
    times = {name: RoundTimes([0.0] * rounds, [0] * rounds, [0] * rounds) for name in trainers}
    columns = (*Progress.get_default_columns(), "loss {task.fields[loss]:.3f}")
    with Progress(*columns, transient=True) as progress:
        tasks = {name: progress.add_task(name, total=rounds * turns, loss=float("nan")) for name in trainers}
        for name, trainer in trainers.items():
            trainer.step(batches[name][0])
        for turn, order in enumerate(round_orders(list(trainers), rounds * turns)):
            number = turn // turns
            for name in order:
                trainer, index = trainers[name], turn % len(batches[name])
                trainer.wall_s = 0.0
                progress.update(tasks[name], advance=1, loss=trainer.step(batches[name][index]))
                times[name].seconds[number] += trainer.wall_s
                times[name].supervised_tokens[number] += supervised[name][index]
                times[name].steps[number] += 1
    return times


def print_report(result: dict) -> None:
    info, model = result["machine"], result["model"]
    console = Console()
    table = Table(
        title=f"bench-train: {model['name']} model ({model['parameters']:,} parameters), "
        f"{result['conversations']} conversations, seq_len {result['seq_len']}, {result['rounds']} rounds; "
        f"{info['cpu']}, {info['cores']} cores / {info['torch_threads']} threads, {info['blas']}"
    )
    for column in (
        "way",
        "supervised tok/s: median (min–max)",
        "forward / supervised",
        "padding",
        "s a round",
    ):
        table.add_column(column, justify="right")
    for way in WAYS:
        row = result["ways"][way]
        table.add_row(
            way,
            spread_text(row["supervised_tokens_per_s"]),
            f"{row['forward_per_supervised']:.2f}",
            f"{row['padding_fraction']:.1%}",
            f"{row['round_s']['median']:.1f}",
        )
    console.print(table)
    split = Table(title="one step under torch.profiler: share of its wall time")
    for column in ("way", "step ms", "matmul", "attention", "other ops", "outside ops"):
        split.add_column(column, justify="right")
    for way, shares in result["profile"].items():
        split.add_row(
            way,
            f"{shares['step_ms']:,.0f}",
            *(f"{shares[key]:.0%}" for key in ("matmul", "attention", "other_ops", "outside_ops")),
        )
    console.print(split)
    lora = Table(title="full fine-tuning vs LoRA (packed micro batches)")
    for column in ("", "trained parameters", "optimizer state MB", "step s: median (min–max)"):
        lora.add_column(column, justify="right")
    for name, row in result["lora"].items():
        lora.add_row(
            name,
            f"{row['trainable_parameters']:,}",
            f"{row['optimizer_state_bytes'] / 1e6:,.2f}",
            spread_text(row["step_s"]),
        )
    console.print(lora)
    goal = result["goal"]
    print(
        f"packed vs per-reply {spread_text(result['ratio_vs_per_reply'])} (goal >= {GOAL_VS_PER_REPLY}), "
        f"packed vs padded {spread_text(result['ratio_vs_padded'])} (goal >= {GOAL_VS_PADDED}), "
        f"medians: {'PASS' if goal['passed'] else 'FAIL'}  (written to {RESULTS.relative_to(ROOT)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--conversations",
        type=int,
        help="first N conversations (default {bench}; --tiny: {tiny})".format(**DEFAULT_CONVERSATIONS),
    )
    parser.add_argument(
        "--source", default="community_logs", help="a params.yaml source (default community_logs)"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        help=f"default: shard.seq_len of {REAL_RUN.relative_to(ROOT)}, the logbook's run",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every way (default 3)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model.scratch instead of BENCH_MODEL")
    args = parser.parse_args()
    os.chdir(ROOT)
    params = load_params("sources", "model", "train")
    source = params["sources"][args.source]
    seq_len = args.seq_len or load_params("shard", path=REAL_RUN)["shard"]["seq_len"]
    train_params, seed, scratch = params["train"], params["model"]["seed"], params["model"]["scratch"]

    conversations = read_conversations(ROOT / source["uri"], source["format"], args.source)
    tokenizer = modeling.train_tokenizer(corpus_texts(conversations), scratch["vocab_size"])
    # RoPE has no weights per position: a longer context is the same model.
    model_config = (scratch if args.tiny else scratch | BENCH_MODEL) | {
        "max_position_embeddings": max(scratch["max_position_embeddings"], seq_len)
    }
    model_name = "tiny" if args.tiny else "bench"
    conversations = conversations[: args.conversations or DEFAULT_CONVERSATIONS[model_name]]
    batches, windows, replies = build_batches(
        tokenizer, conversations, seq_len, train_params["micro_batch"], seed
    )
    batches[LORA] = batches["packed"]
    trainers = build_trainers(model_config, tokenizer, seed, train_params, seq_len)
    times = run_rounds(trainers, batches, args.rounds)
    profiles = {way: profile_step(trainers[way], typical(batches[way])) for way in WAYS}

    results = {way: figures(token_counts(batches[way]), times[way]) for way in WAYS}
    speeds = [{way: times[way].speeds()[number] for way in WAYS} for number in range(args.rounds)]
    vs_per_reply = spread(ratios(speeds, "packed", "per-reply"))
    vs_padded = spread(ratios(speeds, "packed", "padded"))
    result = {
        "machine": machine(),
        "model": {
            "name": model_name,
            "config": model_config,
            "parameters": trainers["packed"].model.num_parameters(),
            "packed_attention": trainers["packed"].model.config._attn_implementation,
        },
        "source": args.source,
        "conversations": len(conversations),
        "windows": windows,
        "replies": replies,
        "seq_len": seq_len,
        "token_budget_per_micro_batch": train_params["micro_batch"] * seq_len,
        "rounds": args.rounds,
        "ways": results,
        "ratio_vs_per_reply": vs_per_reply,
        "ratio_vs_padded": vs_padded,
        "profile": profiles,
        "lora": {
            "full": lora_figures(trainers["packed"], times["packed"]),
            "LoRA": lora_figures(trainers[LORA], times[LORA]) | {"lora": train_params["lora"]},
        },
        "goal": {
            "ratio_vs_per_reply": GOAL_VS_PER_REPLY,
            "ratio_vs_padded": GOAL_VS_PADDED,
            "passed": vs_per_reply["median"] >= GOAL_VS_PER_REPLY and vs_padded["median"] >= GOAL_VS_PADDED,
        },
    }
    write_json(RESULTS, result)
    print_report(result)


if __name__ == "__main__":
    main()
