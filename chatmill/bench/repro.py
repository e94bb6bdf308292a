"""`make repro` benchmark: `make bench-repro`.

Copies the repository's files (tracked and not ignored, as `git ls-files` lists them) into a new
git repo in a temporary folder, with this environment as its .venv, and runs `dvc repro` there:
every stage of the embedded default, from nothing. The stages record where their time goes through
CHATMILL_TIMINGS (chatmill/timings.py): import, set-up (model, tokenizer, DeepSpeed engine) and work
per stage process; the DVC overhead is the whole `dvc repro` wall less its stages'. Compares the
outputs' md5s with a dvc.lock (--expect: the committed one, or one a run before a change wrote).
Results: printed, and written to benchmarks/results/repro.json and, the dvc.lock the run wrote,
benchmarks/results/repro.dvc.lock.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from chatmill.bench.machine import machine, spread
from chatmill.io import write_json
from chatmill.timings import ENV, PHASES, phase_split

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks/results/repro.json"
LOCK = RESULTS.with_suffix(".dvc.lock")
COLUMNS = (*PHASES, "wall")
GIT_USER = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def stage_commands(dvc_yaml: dict) -> dict[str, list[str]]:
    """Each stage's script and arguments, as its process sees them in sys.argv, in pipeline order."""
    commands = {}
    for name, stage in dvc_yaml["stages"].items():
        words = shlex.split(stage["cmd"])
        commands[name] = words[words.index("python") + 1 :]
    return commands


def stage_splits(events: list[dict], commands: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """import / set-up / work / wall seconds of each stage, from the processes' recorded events: a
    stage is the first process started with its command (ranks it launches are part of its wall)."""
    by_pid: dict[int, list[dict]] = {}
    for event in events:
        by_pid.setdefault(event["pid"], []).append(event)
    processes = sorted(by_pid.values(), key=lambda recorded: recorded[0]["time"])
    splits = {}
    for name, argv in commands.items():
        process = next((p for p in processes if p[0]["argv"] == argv and p[0]["event"] == "start"), None)
        if process is None or not any(event["event"] == "exit" for event in process):
            raise SystemExit(f"bench-repro: no complete timing record of stage {name}")
        splits[name] = phase_split(process)
    return splits


def uncached_outputs(dvc_yaml: dict) -> set[str]:
    """Outputs declared `cache: false`: logs such as DVCLive's, with timings in them."""
    return {
        path
        for stage in dvc_yaml["stages"].values()
        for out in stage.get("outs", [])
        if isinstance(out, dict)
        for path, options in out.items()
        if options.get("cache") is False
    }


def changed_outputs(written: dict, expected: dict, ignored: set[str]) -> list[str]:
    """The outputs, but `ignored`, whose md5 differs between two dvc.lock files (code deps may differ:
    not compared)."""
    changed = []
    for name, stage in expected["stages"].items():
        ours = {out["path"]: out.get("md5") for out in written["stages"].get(name, {}).get("outs", [])}
        changed += [
            out["path"]
            for out in stage.get("outs", [])
            if out["path"] not in ignored and ours.get(out["path"]) != out.get("md5")
        ]
    return changed


def repo_copy(source: Path, target: Path) -> None:
    """The working tree's files (tracked and new, not ignored) as a fresh git repo, this .venv linked."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((source / name).read_bytes())
    env = {**os.environ, **GIT_USER}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=target, env=env, check=True)
    (target / ".venv").symlink_to(sys.prefix)  # after the commit: git would take the link as a file


def run_once(
    source: Path, expected: dict, console: Console
) -> tuple[dict[str, dict[str, float]], float, list[str]]:
    """One `dvc repro` from nothing: each stage's split, the whole wall, and the outputs whose md5 is
    not the `expected` dvc.lock's; the dvc.lock it wrote goes to LOCK."""
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as folder:
        repo = Path(folder) / "repo"
        repo.mkdir()
        repo_copy(source, repo)
        (repo / "dvc.lock").unlink(missing_ok=True)  # what `dvc repro` writes is compared below
        timings = Path(folder) / "timings.jsonl"
        # PYTHONPATH: the copy's chatmill, not the one this environment has installed (editable)
        env = {**os.environ, ENV: str(timings), "PYTHONPATH": str(repo)}
        with console.status("dvc repro (the whole pipeline, minutes)"):
            started = time.time()
            result = subprocess.run(
                [str(Path(sys.prefix) / "bin/dvc"), "repro"],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.time() - started
        if result.returncode:
            raise SystemExit(
                f"bench-repro: dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        events = [json.loads(line) for line in timings.read_text().splitlines()]
        dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
        splits = stage_splits(events, stage_commands(dvc_yaml))
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / "dvc.lock", LOCK)
        written = yaml.safe_load(LOCK.read_text())
        return splits, wall, changed_outputs(written, expected, uncached_outputs(dvc_yaml))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1, help="runs of the whole pipeline (median)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the repository to copy (default: this)")
    parser.add_argument("--expect", type=Path, help="the dvc.lock to compare with (default: the source's)")
    args = parser.parse_args()
    source = args.source.resolve()
    expect = args.expect or source / "dvc.lock"
    expected = yaml.safe_load(expect.read_text())
    console = Console()
    runs = [run_once(source, expected, console) for _ in range(args.repetitions)]
    stages = list(runs[0][0])
    per_stage = {
        name: {column: spread([splits[name][column] for splits, _, _ in runs]) for column in COLUMNS}
        for name in stages
    }
    totals = [wall for _, wall, _ in runs]
    overhead = [wall - sum(split["wall"] for split in splits.values()) for splits, wall, _ in runs]
    changed = sorted({path for _, _, paths in runs for path in paths})

    table = Table(title=f"dvc repro from nothing, median of {args.repetitions} (s)")
    table.add_column("stage")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for name in stages:
        table.add_row(name, *(f"{per_stage[name][column]['median']:.1f}" for column in COLUMNS))
    sums = [sum(per_stage[name][column]["median"] for name in stages) for column in COLUMNS]
    table.add_row("stages", *(f"{value:.1f}" for value in sums), style="bold")
    console.print(table)
    total, dvc = spread(totals), spread(overhead)
    console.print(f"dvc repro wall {total['median']:.1f} s, of which DVC itself {dvc['median']:.1f} s")
    console.print(
        f"outputs' md5 differ from {expect}: {', '.join(changed)}"
        if changed
        else f"outputs' md5 identical to {expect}'s (logs with cache: false aside)"
    )
    result = {
        "machine": machine(),
        "source": str(source),
        "expected_lock": str(expect),
        "repetitions": args.repetitions,
        "stages": per_stage,
        "total_s": total,
        "dvc_overhead_s": dvc,
        "changed_outputs": changed,
    }
    write_json(RESULTS, result)
    console.print(f"written {RESULTS.relative_to(ROOT)} and {LOCK.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
