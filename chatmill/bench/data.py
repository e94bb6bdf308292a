"""Data-stage benchmark: `make bench-data SIZE_MB=N`.

Generates about N MB (uncompressed JSON) of PIPPA-format logs with the sample generator, then runs
fetch -> clean -> length-trim -> mix -> shard on them with the default params, each stage a
separate process as under DVC, --repetitions times. Reports per stage the median wall time with its
min-max, MB/s, and peak memory (RSS of its largest process, and PSS of all its processes together,
both sampled every 0.2 s), and two floors: the time this machine needs just to parse the same JSON
and tokenize the messages with the same tokenizer, batched, on all cores -- with the transformers call
the stages made before (`tokenizer(texts)`), and with the fastest call that gives the same ids
(`encode_batch_fast` of the backend, chatmill.prompt.exact_backend): the strict floor, the work no
design can avoid, which the ratio is taken against.
Results: printed, and written with the machine and every repetition to benchmarks/results/data.json.
"""

import argparse
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml
from rich.console import Console
from rich.table import Table

from chatmill.bench.machine import machine, spread, spread_text
from chatmill.io import write_json
from chatmill.pipeline import render

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks/results/data.json"
STAGES = ("fetch", "clean", "length_trim", "mix", "shard")
SAMPLE_MB_PER_SCALE = 11.5  # uncompressed PIPPA JSON that generate.py writes at --scale 1
TOKENIZE_BATCH = 1000
SAMPLE_S = 0.2
# The floors, by the tokenizer call: the transformers call the stages made before, and the strict one.
FLOORS = {"today": "floor, tokenizer()", "strict": "floor, encode_batch_fast"}


def run_stage(workdir: Path, script: str) -> tuple[float, float, float]:
    """Run one stage script as its own process; return (wall seconds, peak RSS of its largest
    process in MB, peak memory of the stage with its worker processes in MB), sampled every
    SAMPLE_S. The latter sums PSS (shared pages split between the processes sharing them, so forked
    workers are not counted twice). The child's own ru_maxrss would not do: a process started by
    exec keeps its parent's high-water mark, and this process has imported torch (~370 MB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{script}.py")], cwd=workdir)
    largest_peak = tree_peak = 0.0
    while process.poll() is None:
        largest, tree = tree_memory_mb(process.pid)
        largest_peak, tree_peak = max(largest_peak, largest), max(tree_peak, tree)
        time.sleep(SAMPLE_S)
    if process.returncode != 0:
        raise SystemExit(f"bench-data: stage {script} failed in {workdir}")
    return time.perf_counter() - started, largest_peak, tree_peak


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """The largest RSS among a process and its descendants, and the sum of their PSS, in MB; 0 for
    what has exited meanwhile."""
    largest = total = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            memory = process.memory_full_info()
            largest, total = max(largest, memory.rss), total + memory.pss
    return largest / 1e6, total / 1e6


def prepare(workdir: Path, size_mb: float) -> Path:
    """Generated logs as the only source, default params otherwise, and a base tokenizer trained on
    the committed sample (base-model is not a data stage; it is not timed)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data/sources").mkdir(parents=True)
    scale = size_mb / SAMPLE_MB_PER_SCALE
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "data/sources/generate.py"),
            "--scale",
            f"{scale:.4f}",
            "--out",
            str(workdir / "data/sources"),
        ],
        check=True,
    )
    pippa = workdir / "data/sources/pippa-sample.jsonl.gz"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sources"] = {
        "community_logs": {
            "uri": "data/sources/pippa-sample.jsonl.gz",
            "format": "pippa",
            "trim": True,
            "weight": 1.0,
        }
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workdir / "dvc.yaml").write_text(render(params))

    sample = workdir / "tokenizer-sample"
    shutil.copytree(
        ROOT / "data/sources", sample / "data/sources", ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    shutil.copy(ROOT / "params.yaml", sample / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", sample / "dvc.yaml")
    for script in ("fetch", "clean", "base_model"):
        run_stage(sample, script)
    shutil.copytree(sample / "models/base", workdir / "models/base")
    shutil.rmtree(sample)
    return pippa


def floor_seconds(pippa: Path, encode: Callable[[list[str]], object]) -> float:
    """Parse every line and tokenize every message with `encode`, TOKENIZE_BATCH messages a call."""
    started = time.perf_counter()
    texts: list[str] = []
    with gzip.open(pippa, "rt", encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                texts += [m["message"] for m in record["conversation"] if isinstance(m.get("message"), str)]
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            if len(texts) >= TOKENIZE_BATCH:
                encode(texts)
                texts = []
    if texts:
        encode(texts)
    return time.perf_counter() - started


def floors(pippa: Path, tokenizer_dir: Path) -> dict[str, float]:
    """Both floors in seconds, with the tokenizer's own threads: `today` with the transformers call,
    `strict` with the backend's encode_batch_fast, which gives the same ids (tests/test_prompt.py)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from transformers import AutoTokenizer

    from chatmill.prompt import exact_backend

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    backend = exact_backend(tokenizer)
    calls = {
        "today": lambda texts: tokenizer(texts, add_special_tokens=False),
        "strict": lambda texts: backend.encode_batch_fast(texts, add_special_tokens=False),
    }
    return {kind: floor_seconds(pippa, call) for kind, call in calls.items()}


def uncompressed_mb(path: Path) -> float:
    size = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
    return size / 1e6


def repetition(workdir: Path, pippa: Path) -> dict:
    """One run of the data stages, then both floors: wall seconds and peak memory per stage."""
    stages = {}
    for script in STAGES:
        wall, largest, tree = run_stage(workdir, script)
        memory = {"peak_rss_mb": largest, "peak_with_workers_mb": tree}
        stages[script.replace("_", "-")] = {"wall_s": wall, **memory}
    return {"stages": stages, "floors": floors(pippa, workdir / "models/base")}


def summarize(runs: list[dict], input_mb: float) -> dict:
    """Median and range of every figure over the repetitions; memory as its largest."""
    stages = {}
    for name in runs[0]["stages"]:
        per_run = [run["stages"][name] for run in runs]
        stages[name] = {
            "wall_s": spread([stage["wall_s"] for stage in per_run]),
            "peak_rss_mb": round(max(stage["peak_rss_mb"] for stage in per_run), 1),
            "peak_with_workers_mb": round(max(stage["peak_with_workers_mb"] for stage in per_run), 1),
        }
    totals = [sum(stage["wall_s"] for stage in run["stages"].values()) for run in runs]
    floor = {kind: spread([run["floors"][kind] for run in runs]) for kind in FLOORS}
    # each repetition's total over its own floors: load that slows one run slows both alike
    ratio = {
        kind: spread([total / run["floors"][kind] for total, run in zip(totals, runs, strict=True)])
        for kind in FLOORS
    }
    return {
        "input_mb": round(input_mb, 1),
        "repetitions": len(runs),
        "stages": stages,
        "wall_s": spread(totals),
        "peak_rss_mb": max(stage["peak_rss_mb"] for stage in stages.values()),
        "peak_with_workers_mb": max(stage["peak_with_workers_mb"] for stage in stages.values()),
        "floor_s": floor,
        "ratio_to_floor": ratio,
    }


def print_table(result: dict) -> None:
    input_mb = result["input_mb"]
    title = (
        f"bench-data: {input_mb} MB of PIPPA logs on {result['machine']['cores']} cores, "
        f"median (min–max) of {result['repetitions']} repetition(s)"
    )
    table = Table(title=title)
    for column in ("stage", "wall s", "MB/s", "peak RSS MB", "with workers MB"):
        table.add_column(column, justify="right")
    rows = [(name, stage["wall_s"], stage) for name, stage in result["stages"].items()]
    rows.append(("total", result["wall_s"], result))
    for name, wall, memory in rows:
        table.add_row(
            name,
            spread_text(wall),
            f"{input_mb / wall['median']:.1f}",
            f"{memory['peak_rss_mb']:.0f}",
            f"{memory['peak_with_workers_mb']:.0f}",
        )
    for kind, label in FLOORS.items():
        floor = result["floor_s"][kind]
        table.add_row(label, spread_text(floor), f"{input_mb / floor['median']:.1f}", "", "")
    Console(width=120).print(table)  # one line a row, also in a log file
    print(
        f"ratio to the strict floor {spread_text(result['ratio_to_floor']['strict'])}, "
        f"to tokenizer()'s floor {spread_text(result['ratio_to_floor']['today'])}"
        + ("" if result["repetitions"] > 1 else "; one repetition: no spread")
        + f"  (written to {RESULTS.relative_to(ROOT)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument(
        "--repetitions", type=int, help="runs of the stages and floors (default: 3 up to 100 MB, else 1)"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks/work/data")
    args = parser.parse_args()
    repetitions = args.repetitions or (3 if args.size_mb <= 100 else 1)

    host = machine()  # first: its load average is then that of the others on the machine
    pippa = prepare(args.workdir, args.size_mb)
    input_mb = uncompressed_mb(pippa)
    runs = [repetition(args.workdir, pippa) for _ in range(repetitions)]
    result = {"machine": host, **summarize(runs, input_mb)}
    write_json(RESULTS, result)
    print_table(result)


if __name__ == "__main__":
    main()
