"""Data-stage benchmark: `make bench-data SIZE_MB=N`.

Generates about N MB (uncompressed JSON) of PIPPA-format logs with the sample generator, then runs
fetch -> clean -> length-trim -> mix -> shard on them with the default params, each stage a
separate process as under DVC. Reports wall time per stage, MB/s, peak RSS per stage (its largest
process, and all its processes together, as PSS sampled every 0.2 s), and the
floor: the time this machine needs just to parse the same JSON and tokenize the same text with the
same tokenizer, batched, on all cores -- the work no design can avoid.
Results: printed, and written to benchmarks/results/data.json.
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
from pathlib import Path

import psutil
import yaml
from rich.console import Console
from rich.table import Table

from chatmill.pipeline import render

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks/results/data.json"
STAGES = ("fetch", "clean", "length_trim", "mix", "shard")
SAMPLE_MB_PER_SCALE = 11.5  # uncompressed PIPPA JSON that generate.py writes at --scale 1
TOKENIZE_BATCH = 1000
SAMPLE_S = 0.2


def run_stage(workdir: Path, script: str) -> tuple[float, float, float]:
    """Run one stage script as its own process; return (wall seconds, peak RSS of its largest
    process in MB, peak memory of the stage with its worker processes in MB). The latter sums PSS
    (shared pages split between the processes sharing them, so forked workers are not counted
    twice), sampled every SAMPLE_S."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{script}.py")], cwd=workdir)
    tree_peak = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, tree_pss_mb(process.pid))
        time.sleep(SAMPLE_S)
    if status != 0:
        raise SystemExit(f"bench-data: stage {script} failed in {workdir}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, tree_peak


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and all its descendants, in MB; 0 for what has exited meanwhile."""
    total = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_full_info().pss
    return total / 1e6


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


def floor_seconds(pippa: Path, tokenizer_dir: Path) -> float:
    """Parse every line and tokenize every message, batched, with the tokenizer's own threads."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
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
                tokenizer(texts, add_special_tokens=False)
                texts = []
    if texts:
        tokenizer(texts, add_special_tokens=False)
    return time.perf_counter() - started


def uncompressed_mb(path: Path) -> float:
    size = 0
    with gzip.open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
    return size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks/work/data")
    args = parser.parse_args()

    pippa = prepare(args.workdir, args.size_mb)
    input_mb = uncompressed_mb(pippa)
    stages = {}
    for script in STAGES:
        wall, rss, tree = run_stage(args.workdir, script)
        stages[script.replace("_", "-")] = {
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(rss, 1),
            "peak_memory_with_workers_mb": round(tree, 1),
        }
    total = sum(stage["wall_s"] for stage in stages.values())
    floor = floor_seconds(pippa, args.workdir / "models/base")
    result = {
        "input_mb": round(input_mb, 1),
        "cores": len(os.sched_getaffinity(0)),
        "stages": stages,
        "wall_s": round(total, 2),
        "mb_per_s": round(input_mb / total, 2),
        "peak_rss_mb": max(stage["peak_rss_mb"] for stage in stages.values()),
        "peak_memory_with_workers_mb": max(stage["peak_memory_with_workers_mb"] for stage in stages.values()),
        "floor_s": round(floor, 2),
        "ratio_to_floor": round(total / floor, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"bench-data: {result['input_mb']} MB of PIPPA logs on {result['cores']} cores")
    for column in ("stage", "wall s", "MB/s", "peak RSS MB", "with workers MB"):
        table.add_column(column, justify="right")
    for name, stage in stages.items():
        table.add_row(
            name,
            f"{stage['wall_s']:.1f}",
            f"{input_mb / stage['wall_s']:.1f}",
            f"{stage['peak_rss_mb']:.0f}",
            f"{stage['peak_memory_with_workers_mb']:.0f}",
        )
    table.add_row(
        "total",
        f"{total:.1f}",
        f"{result['mb_per_s']:.1f}",
        f"{result['peak_rss_mb']:.0f}",
        f"{result['peak_memory_with_workers_mb']:.0f}",
    )
    table.add_row("floor", f"{floor:.1f}", f"{input_mb / floor:.1f}", "")
    Console().print(table)
    print(f"ratio_to_floor {result['ratio_to_floor']}  (written to {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
