"""GPU training benchmark: `make bench-gpu` on a CUDA machine with one or more GPUs; no downloads.

A Llama of 1.1B parameters (TinyLlama-1.1B's shape: 22 layers, hidden 2048, 32 heads, 4 KV heads,
vocab 32000) built from config, sequence length 2048, bf16, DeepSpeed ZeRO-1, fused AdamW, trained
for a few dozen steps two ways on the same documents:

  packed  chatmill's way: windows packed first-fit into 2048-token rows (the shard stage's Packer),
          flash-attention varlen over each document (chatmill/attention.py)
  padded  one window per row, each micro batch right-padded to its longest row: the usual
          dynamic-padding collator, with the same flash kernel over each row

The documents are the committed sample conversations, encoded and cut into windows as the shard
stage does, with a 32k byte-level BPE trained on them in seconds. Several GPUs: the script starts
itself under the DeepSpeed launcher, one rank per GPU.

Each way trains --warmup untimed steps, then --repetitions timed blocks of --steps steps; figures
are the median and min-max over the blocks (the ways are not interleaved: a 1.1B model and its
optimizer state are built once per way). Figures per way: real (non-padding) tokens/s per GPU,
supervised tokens/s per GPU, padding share, peak memory, and MFU = real tokens/s per GPU x model
FLOPs per token / the GPU's peak dense bf16 FLOP/s. Model FLOPs per token = 6 x matmul weights +
12 x layers x hidden x L, PaLM's formula with L the length of the token's own document: the
attention work that matters either way; padding counts zero. `mfu_palm_2048` is the same with
L = 2048 for every token, as most published MFU figures do. Writes benchmarks/results/gpu.json,
with every block and the host machine.
"""

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatmill import attention
from chatmill.bench import train as bench_train  # the CPU benchmark's data and batch builders
from chatmill.bench.machine import machine, spread, spread_text
from chatmill.flops import flops_per_token, matmul_parameters
from chatmill.io import write_json
from chatmill.modeling import train_tokenizer
from chatmill.params import load_params
from chatmill.prompt import Encoded, corpus_texts
from chatmill.ranks import single_process_environment
from chatmill.shards import IGNORE_INDEX
from chatmill.training import deepspeed_config

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "benchmarks/results/gpu.json"
SEQ_LEN = 2048
MODEL = {  # TinyLlama-1.1B's shape
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": SEQ_LEN,
}
# Peak dense bf16 tensor FLOP/s by device name (datasheets); --peak-tflops for any other card.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "A6000": 154.8, "L40S": 362.0}


@dataclass
class MicroBatch:
    tensors: dict[str, torch.Tensor]  # the model's inputs, with cu_seq_lens_q, on the host
    real_tokens: int
    supervised_tokens: int
    model_flops: float  # PaLM FLOPs of the real tokens, attention over each token's own document


def sample_conversations() -> list[dict]:
    """The conversations of every committed sample source of params.yaml."""
    return [
        conversation
        for name, source in load_params("sources")["sources"].items()
        for conversation in bench_train.read_conversations(ROOT / source["uri"], source["format"], name)
    ]


def sample_windows(conversations: list[dict], tokenizer, seed: int) -> list[Encoded]:
    """The conversations cut into windows of SEQ_LEN as shard cuts them, shuffled."""
    windows = bench_train.conversation_windows(tokenizer, conversations, SEQ_LEN)
    random.Random(seed).shuffle(windows)
    return windows


def flops_per_document(length: int, matmul_params: int) -> float:
    layers, hidden = MODEL["num_hidden_layers"], MODEL["hidden_size"]
    return length * (6 * matmul_params + 12 * layers * hidden * length)


def gpu_batch(batch: bench_train.MicroBatch, pad_id: int, matmul_params: int) -> MicroBatch:
    """A CPU benchmark micro batch with the figures counted. Padded rows are right-padded, one
    document a row: causal attention keeps the padding out of every real token's view, so they go
    through the same varlen kernel (their attention_mask is not used) over whole rows."""
    tensors = dict(batch.inputs)
    ids = tensors["input_ids"]
    if "cu_seq_lens_q" not in tensors:
        tensors["cu_seq_lens_q"] = attention.document_starts(torch.arange(ids.shape[1]).expand_as(ids))
    bounds, flat = tensors["cu_seq_lens_q"].tolist(), ids.reshape(-1)
    lengths = [int((flat[start:end] != pad_id).sum()) for start, end in zip(bounds, bounds[1:], strict=False)]
    return MicroBatch(
        tensors,
        real_tokens=sum(lengths),
        supervised_tokens=int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum()),
        model_flops=sum(flops_per_document(n, matmul_params) for n in lengths),
    )


def packed_batches(docs: list[Encoded], micro: int, pad_id: int) -> list[bench_train.MicroBatch]:
    return bench_train.packed_batches(docs, SEQ_LEN, pad_id, micro)


def padded_batches(docs: list[Encoded], micro: int, pad_id: int) -> list[bench_train.MicroBatch]:
    """`micro` windows a micro batch, padded to the longest: the usual dynamic-padding collator."""
    return [
        bench_train.padded_batch(docs[i : i + micro], pad_id) for i in range(0, len(docs) - micro + 1, micro)
    ]


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"bench-gpu: unknown peak bf16 FLOP/s for {name!r}; pass --peak-tflops")


@dataclass
class Block:
    """One timed block of steps, summed over the ranks."""

    seconds: float
    real_tokens: float
    supervised_tokens: float
    model_flops: float


def block_figures(
    blocks: list[Block], steps: int, world: int, peak_flops: float, palm_flops_per_token: float
):
    """Median and min-max over the blocks of each per-GPU figure."""

    def over_blocks(figure, digits: int) -> dict:
        return spread([figure(block) for block in blocks], digits)

    return {
        "tokens_per_s_per_gpu": over_blocks(lambda b: b.real_tokens / b.seconds / world, 0),
        "supervised_tokens_per_s_per_gpu": over_blocks(lambda b: b.supervised_tokens / b.seconds / world, 0),
        "step_s": over_blocks(lambda b: b.seconds / steps, 4),
        "mfu": over_blocks(lambda b: b.model_flops / b.seconds / world / peak_flops, 4),
        "mfu_palm_2048": over_blocks(
            lambda b: b.real_tokens * palm_flops_per_token / b.seconds / world / peak_flops, 4
        ),
    }


def train_steps(engine, steps: Iterator[list[MicroBatch]], count: int, device: torch.device) -> torch.Tensor:
    """Train `count` optimizer steps, each on the next micro batches of `steps`; returns their real
    tokens, supervised tokens and model FLOPs."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for _ in range(count):
        for batch in next(steps):
            inputs = {name: t.to(device, non_blocking=True) for name, t in batch.tensors.items()}
            engine.backward(engine(**inputs, use_cache=False).loss)
            engine.step()
            totals += torch.tensor(
                [batch.real_tokens, batch.supervised_tokens, batch.model_flops], device=device
            )
    return totals


def run_way(way: str, batches: list[MicroBatch], args, device: torch.device, rank: int, world: int) -> dict:
    """Build the model and engine afresh, train warmup steps and timed blocks, return this way's figures."""
    import deepspeed
    import deepspeed.comm as dist

    torch.manual_seed(0)
    config = LlamaConfig(**MODEL, tie_word_embeddings=False)
    with device:
        model = LlamaForCausalLM(config)
    model.set_attn_implementation(attention.packed_attention(device, True, SEQ_LEN))
    train = {"global_batch": args.micro_batch * args.accumulation * world, "micro_batch": args.micro_batch}
    train |= {"grad_clip": 1.0, "bf16": True, "zero_stage": 1}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(train, args.accumulation)
    )
    if args.compile:
        engine.compile()

    mine = batches[rank::world]
    needed = args.warmup + args.repetitions * args.steps  # optimizer steps
    if len(mine) < needed * args.accumulation:
        raise SystemExit(
            f"bench-gpu: {way}: {len(mine)} micro batches per GPU, {needed * args.accumulation} needed; "
            "fewer --steps or --repetitions"
        )
    steps = (mine[step * args.accumulation : (step + 1) * args.accumulation] for step in range(needed))
    torch.cuda.reset_peak_memory_stats(device)
    train_steps(engine, steps, args.warmup, device)
    blocks = []
    for _ in range(args.repetitions):
        torch.cuda.synchronize(device)
        dist.barrier()
        started = time.perf_counter()
        totals = train_steps(engine, steps, args.steps, device)
        torch.cuda.synchronize(device)
        dist.barrier()
        seconds = time.perf_counter() - started
        dist.all_reduce(totals)
        blocks.append(Block(seconds, *totals.tolist()))
    forward_tokens = sum(b.tensors["input_ids"].numel() for b in batches)
    peak = peak_tflops(torch.cuda.get_device_name(device), args.peak_tflops) * 1e12
    result = {
        "way": way,
        **block_figures(blocks, args.steps, world, peak, flops_per_token(model, SEQ_LEN)),
        "padding_fraction": 1 - sum(b.real_tokens for b in batches) / forward_tokens,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
    }
    del engine, model, optimizer
    torch.cuda.empty_cache()
    return result


def relaunch_on_all_gpus(gpus: int) -> None:
    """One rank per GPU through the DeepSpeed launcher (ranks read LOCAL_RANK from the environment)."""
    if shutil.which("deepspeed") is None:
        raise SystemExit("bench-gpu: the `deepspeed` launcher is not on PATH; activate .venv")
    command = ["deepspeed", "--no_local_rank", "--num_gpus", str(gpus), __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(command))


def print_table(results: list[dict], environment: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"bench-gpu: {environment['gpu']} x {environment['gpus']}, "
        f"1.1B Llama, seq {SEQ_LEN}, bf16, ZeRO-1; median (min–max) of {environment['repetitions']} blocks"
    )
    for column in (
        "way",
        "tokens/s/GPU",
        "supervised tok/s/GPU",
        "padding",
        "step s",
        "MFU",
        "MFU (PaLM@2048)",
        "peak GB",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["way"],
            spread_text(r["tokens_per_s_per_gpu"]),
            spread_text(r["supervised_tokens_per_s_per_gpu"]),
            f"{r['padding_fraction']:.1%}",
            f"{r['step_s']['median']:.3f}",
            f"{r['mfu']['median']:.1%}",
            f"{r['mfu_palm_2048']['median']:.1%}",
            f"{r['peak_memory_gb']:.1f}",
        )
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", default="packed,padded", help="comma-separated: packed, padded")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per timed block")
    parser.add_argument("--repetitions", type=int, default=5, help="timed blocks per way (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench-gpu: no CUDA GPU visible; this benchmark needs one")
    if torch.cuda.device_count() > 1 and "LOCAL_RANK" not in os.environ:
        relaunch_on_all_gpus(torch.cuda.device_count())
    single_process_environment(gpus=1)
    import deepspeed

    deepspeed.init_distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.backends.cuda.matmul.allow_tf32 = True

    started = time.perf_counter()
    os.chdir(ROOT)  # params.yaml and the sample sources
    conversations = sample_conversations()
    tokenizer = train_tokenizer(corpus_texts(conversations), MODEL["vocab_size"])
    docs = sample_windows(conversations, tokenizer, seed=0)
    with torch.device("meta"):  # the weight count, without building the weights
        matmul_params = matmul_parameters(LlamaForCausalLM(LlamaConfig(**MODEL, tie_word_embeddings=False)))
    builders = {"packed": packed_batches, "padded": padded_batches}
    pad_id = tokenizer.pad_token_id
    batches = {
        way: [gpu_batch(b, pad_id, matmul_params) for b in builders[way](docs, args.micro_batch, pad_id)]
        for way in args.ways.split(",")
    }
    if rank == 0:
        print(f"bench-gpu: {len(docs)} windows, data ready in {time.perf_counter() - started:.0f} s")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    results = [run_way(way, batches[way], args, device, rank, world) for way in batches]
    if rank == 0:
        environment = {
            "gpu": torch.cuda.get_device_name(0),
            "gpus": world,
            "peak_tflops": peak_tflops(torch.cuda.get_device_name(0), args.peak_tflops),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "deepspeed": deepspeed.__version__,
            "attention": attention.packed_attention(torch.device("cuda"), True, SEQ_LEN),
            "compile": args.compile,
            "model": MODEL,
            "matmul_params": matmul_params,
            "seq_len": SEQ_LEN,
            "micro_batch": args.micro_batch,
            "accumulation": args.accumulation,
            "steps": args.steps,
            "repetitions": args.repetitions,
            "host": platform.node(),
            "machine": machine(),
        }
        print_table(results, environment)
        ways = {r["way"]: r for r in results}
        if {"packed", "padded"} <= ways.keys():
            ratio = (
                ways["packed"]["supervised_tokens_per_s_per_gpu"]["median"]
                / ways["padded"]["supervised_tokens_per_s_per_gpu"]["median"]
            )
            print(f"packed / padded, median supervised tokens/s: {ratio:.2f}x")
        write_json(args.output, {"environment": environment, "results": results})
        print(f"bench-gpu: wrote {args.output}")


if __name__ == "__main__":
    main()
