"""Sample-eval generation benchmark: `make bench-eval [MODEL=models/part-NN]`.

Generates replies to sample-eval's prompts (held-out conversations from data/shards/eval and the
zero-/few-shot prompt sets of params.yaml) with the first setting of eval.grid, three ways:
  naive      one prompt at a time, without the KV cache (every step re-reads the whole context);
  one-by-one one prompt at a time, with the KV cache;
  batched    eval.batch_size prompts at a time, left-padded, with the KV cache (what sample-eval does).
Throughput is generated tokens (up to where each reply ended) per second, in --repeats rounds:
each round runs every mode once, the order rotated from round to round; printed as the median and
min-max over the rounds, speedups as ratios within a round. On a GPU it runs there; on the CPU with
torch's thread count (--threads to change it). Results: printed, and written to
benchmarks/results/eval.json with every round and the machine.
"""

import argparse
import copy
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from chatmill import evaluation
from chatmill.bench.machine import machine, ratios, round_orders, spread, spread_text
from chatmill.generation import device, generate_replies, generation_config, load_model, pad_id
from chatmill.io import read_parquet, write_json
from chatmill.layout import CONVERSATIONS, EVAL_SHARD_DIR, is_model_folder, trained_parts
from chatmill.layout import model_dir as model_dir_of
from chatmill.params import load_params
from chatmill.prompt import prompt_format

ROOT = Path(__file__).resolve().parents[2]

RESULTS = ROOT / "benchmarks/results/eval.json"


def timed(model, tokenizer, prompts: list[list[int]], config, batch_size: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    replies = generate_replies(model, tokenizer, prompts, config, batch_size)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(reply.new_tokens for reply in replies)
    return {
        "seconds": round(seconds, 3),
        "replies": len(replies),
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "replies_per_s": round(len(replies) / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a model folder (default: the last trained part)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, help="default: eval.batch_size")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every mode (default 5)")
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = evaluation.validate_eval(load_params("eval")["eval"])
    batch_size = args.batch_size or params["batch_size"]
    trained = trained_parts()
    model_dir = Path(args.model) if args.model else model_dir_of(trained[-1] if trained else 1)
    if not is_model_folder(model_dir):
        raise SystemExit(f"bench-eval: {model_dir} is not a model folder; run `dvc repro` or pass MODEL=")
    if not (EVAL_SHARD_DIR / CONVERSATIONS).is_file():
        raise SystemExit(f"bench-eval: {EVAL_SHARD_DIR} not found; run `dvc repro shard`")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, device())
    prompts = evaluation.heldout_prompts(
        read_parquet(EVAL_SHARD_DIR / CONVERSATIONS), params["prompts"]
    ) + evaluation.load_prompt_sets(params["prompt_sets"])
    max_prompt = model.config.max_position_embeddings - params["max_new_tokens"]
    encoded = [evaluation.prompt_ids(tokenizer, prompt, max_prompt) for prompt in prompts]
    stops = prompt_format(tokenizer).stops
    config = generation_config(params["grid"][0], params["max_new_tokens"], stops, pad_id(tokenizer))
    timed(model, tokenizer, encoded[:2], config, 2, params["seed"])  # warm-up: kernels, stop-string tables

    no_cache = copy.deepcopy(config)
    no_cache.use_cache = False
    modes = {"naive": (no_cache, 1), "one-by-one": (config, 1), "batched": (config, batch_size)}
    rounds: list[dict[str, dict[str, float]]] = []
    for order in round_orders(list(modes), args.repeats):  # a busy moment of the machine hits every mode
        timings = {}
        for name in order:
            mode_config, size = modes[name]
            timings[name] = timed(model, tokenizer, encoded, mode_config, size, params["seed"])
        rounds.append(timings)
    speeds = [{name: timings[name]["tokens_per_s"] for name in modes} for timings in rounds]
    runs = {
        name: {
            "replies": rounds[0][name]["replies"],
            "new_tokens": rounds[0][name]["new_tokens"],  # seeded: the same replies every round
            "seconds": spread([timings[name]["seconds"] for timings in rounds], 3),
            "tokens_per_s": spread([speed[name] for speed in speeds], 1),
            "replies_per_s": spread([timings[name]["replies_per_s"] for timings in rounds]),
            "speedup_vs_one_by_one": spread(ratios(speeds, name, "one-by-one")),
        }
        for name in modes
    }
    results = {
        "machine": machine(),
        "model": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if model.device.type == "cuda" else "CPU",
        "prompts": len(encoded),
        "mean_prompt_tokens": round(sum(map(len, encoded)) / len(encoded), 1),
        "max_new_tokens": params["max_new_tokens"],
        "batch_size": batch_size,
        "rounds": args.repeats,
        "setting": params["grid"][0].name,
        "runs": runs,
    }
    write_json(RESULTS, results)

    info = results["machine"]
    table = Table(
        title=f"sample-eval generation: {model_dir} on {results['device']} ({info['cpu']}, {info['cores']} "
        f"cores / {info['torch_threads']} threads, {info['blas']}), {len(encoded)} prompts, "
        f"{args.repeats} rounds: median (min–max)"
    )
    for column in ("mode", "batch", "cache", "tokens", "seconds", "tokens/s", "speedup"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for name, result in runs.items():
        table.add_row(
            name,
            str(batch_size if name == "batched" else 1),
            "no" if name == "naive" else "yes",
            str(result["new_tokens"]),
            spread_text(result["seconds"]),
            spread_text(result["tokens_per_s"]),
            spread_text(result["speedup_vs_one_by_one"]),
        )
    Console(width=140).print(table)
    print(f"{RESULTS.relative_to(ROOT)}: {results['parameters']:,} parameters")


if __name__ == "__main__":
    main()
