"""The pipeline's table of contents: dvc.yaml, written from params.yaml.

    python -m chatmill.pipeline            (`make pipeline`) write dvc.yaml
    python -m chatmill.pipeline --check    exit 1 if dvc.yaml is not what params.yaml makes

train.parts decides how many train-partN stages exist, and the sources which keys are declared.
Each stage declares the param keys that change its outputs: not whole sections, and not the keys
that only change how fast or where it runs (worker counts, GPU counts, train.save_every,
train.peak_tflops, ...): changing those re-runs nothing. A stage reads exactly what it declares
(chatmill.params.stage_params). Its code dependencies are its script and the chatmill modules the
script imports, directly or not, found by reading the imports: a changed module re-runs exactly the
stages that use it.
"""

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.layout import (
    BASE_DIR,
    BREAKDOWN_FILE,
    CLEAN_DIR,
    EVAL_SHARD_DIR,
    LENGTH_TRIM_PLOT,
    METRICS_FILE,
    MIXED_DIR,
    RAW_DIR,
    REPORT_FILE,
    SAMPLES_FILE,
    SHARDS_DIR,
    TRIMMED_DIR,
    live_dir,
    model_dir,
    shard_dir,
)
from chatmill.params import PARAMS_FILE, PIPELINE_FILE, load_params, require
from chatmill.rating import RATINGS_METRICS
from chatmill.sources import DATASET_KEYS, LocalPath, parse_uri, validate_sources
from chatmill.training import WEIGHT_KEYS

ROOT = Path(__file__).resolve().parents[1]  # the repository: stages/ and chatmill/
# Per-step logs plotted across parts: (DVCLive metric, plot title).
TRAIN_PLOTS = (
    ("train/loss", "Training loss across parts"),
    ("train/lr", "Training lr across parts"),
    ("train/tokens_per_s", "Training tokens per s across parts"),
    ("train/grad_norm", "Gradient norm (before clipping) across parts"),
    ("train/mfu", "Model FLOPs utilisation across parts"),
)
# The python a stage runs with: the project's .venv (`make setup`) when there is one, whatever PATH
# says, so that `.venv/bin/dvc repro` works without activating .venv (a bare `python` would be the
# system's, without chatmill); any other python on PATH when there is none.
PYTHON = "PATH=$PWD/.venv/bin:$PATH python"
HEADER = """\
# The pipeline, top to bottom: written from params.yaml by `make pipeline` (chatmill/pipeline.py);
# do not edit by hand. Each stage is one script in stages/ with the param keys that change its
# outputs. `dvc repro train-part1` builds what part 1 needs; `dvc exp run -S trim.threshold=150`
# re-runs length-trim and everything after it. Stages run with .venv/bin first on PATH, so
# `.venv/bin/dvc` works without activating .venv.
"""


@dataclass
class Stage:
    name: str
    script: str  # stages/NAME.py
    params: list[str]
    deps: list[str]  # data the stage reads (its script and modules are added)
    outs: list[Any]
    args: str = ""
    metrics: list[Any] = field(default_factory=list)


# --- Code dependencies ----------------------------------------------------------------------------


def imported_modules(path: Path) -> set[Path]:
    """The files of chatmill/ that the Python file imports (anywhere in it, lazily too)."""
    files = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chatmill":
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "chatmill"]
        else:
            continue
        for name in names:
            module = ROOT / (name.replace(".", "/") + ".py")
            files.add(module if module.exists() else ROOT / name.replace(".", "/") / "__init__.py")
    return {file for file in files if file.exists()}


def code_dependencies(script: str) -> list[str]:
    """The script and every chatmill module it imports directly or not, as repository paths."""
    seen: set[Path] = set()
    todo = list(imported_modules(ROOT / script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules(module)
    return [script, *sorted(str(module.relative_to(ROOT)) for module in seen)]


# --- The stages ------------------------------------------------------------------------------------


def source_keys(sources: dict[str, dict], *keys: str) -> list[str]:
    """sources.NAME.KEY of every source (by name) that has the key."""
    return [f"sources.{name}.{key}" for name, spec in sorted(sources.items()) for key in keys if key in spec]


def data_stages(params: dict[str, Any]) -> list[Stage]:
    sources = validate_sources(require(params, "sources", "params"))
    raw_sources = params["sources"]
    model = require(params, "model", "params", dict)
    scratch = require(model, "base", "model", str) == "scratch"
    by_tokens = require(require(params, "mix", "params", dict), "by", "mix", str) == "tokens"
    # Local files are tracked by path (interpolated, so `-S sources.NAME.uri=...` moves the dep too).
    local = [
        f"${{sources.{name}.uri}}"
        for name, spec in sources.items()
        if isinstance(parse_uri(spec["uri"]), LocalPath)
    ]
    clean_keys = ("max_quarantine_fraction", "pii", "filters", "near_dup")
    return [
        Stage(
            "fetch",
            "stages/fetch.py",
            source_keys(raw_sources, "uri", "sha256", *DATASET_KEYS),
            local,
            [str(RAW_DIR)],
        ),
        Stage(
            "clean",
            "stages/clean.py",
            [*source_keys(raw_sources, "format"), *(f"clean.{key}" for key in clean_keys)],
            [str(RAW_DIR)],
            [str(CLEAN_DIR)],
        ),
        Stage(
            "length-trim",
            "stages/length_trim.py",
            ["trim", *source_keys(raw_sources, "trim")],
            [str(CLEAN_DIR)],
            [str(TRIMMED_DIR), str(LENGTH_TRIM_PLOT)],
        ),
        Stage(
            "base-model",
            "stages/base_model.py",
            # prompt.format: the tokenizer's markers, its recorded format and chat template
            (["model.base", "model.seed", "model.scratch"] if scratch else ["model.base", "model.revision"])
            + ["prompt.format"],
            # The scratch tokenizer is trained on the cleaned data; a local base folder is data too.
            [str(CLEAN_DIR)] if scratch else (["${model.base}"] if Path(model["base"]).exists() else []),
            [str(BASE_DIR)],
        ),
        Stage(
            "mix",
            "stages/mix.py",
            ["mix.by", "mix.seed", "mix.max_repeat", "mix.on_empty", *source_keys(raw_sources, "weight")]
            + (["prompt.format"] if by_tokens else []),  # tokens as the format writes them
            [str(TRIMMED_DIR)] + ([str(BASE_DIR)] if by_tokens else []),  # its tokenizer counts tokens
            [str(MIXED_DIR)],
        ),
        Stage(
            "shard",
            "stages/shard.py",
            ["shard.seq_len", "shard.eval_fraction", "shard.seed", "train.parts", "train.global_batch"]
            + ["prompt.format"],
            [str(MIXED_DIR), str(BASE_DIR)],
            [str(SHARDS_DIR)],
        ),
    ]


def train_stages(parts: int, adapter: bool) -> list[Stage]:
    """Part N continues part N-1; with an adapter, part N-1 holds only the adapters, and every part
    also reads the base model under them."""
    return [
        Stage(
            f"train-part{part}",
            "stages/train.py",
            [f"train.{key}" for key in WEIGHT_KEYS],
            [
                str(shard_dir(part)),
                str(EVAL_SHARD_DIR),
                str(model_dir(part - 1)),
                *([str(BASE_DIR)] if adapter and part > 1 else []),
            ],
            # The DVCLive logs (metrics.json, the per-step plots) in git, as DVC has them: every commit
            # and experiment shows its curves. Not DVC metrics: 10 parts x 4 numbers would crowd
            # sample-eval's headline out of `dvc exp show`; `dvc plots show` draws them across parts.
            [str(model_dir(part)), {str(live_dir(part)): {"cache": False}}],
            args=f" --part {part}",
        )
        for part in range(1, parts + 1)
    ]


def eval_stage(adapter: bool) -> Stage:
    """sample-eval of eval.model; an adapter part is evaluated over the base model it adapts."""
    return Stage(
        "sample-eval",
        "stages/sample_eval.py",
        ["eval", "prompt.format"],
        [str(EVAL_SHARD_DIR), "${eval.model}", "${eval.prompt_sets}", *([str(BASE_DIR)] if adapter else [])],
        [str(SAMPLES_FILE), str(REPORT_FILE), str(BREAKDOWN_FILE)],
        # Only the headline numbers are DVC metrics (every metric would be hundreds of columns in
        # `dvc exp show`); in git, as DVC has metrics files, so every commit and experiment shows them.
        metrics=[{str(METRICS_FILE): {"cache": False}}],
    )


def stage_entry(stage: Stage) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cmd": f"{PYTHON} {stage.script}{stage.args}",
        "deps": [*code_dependencies(stage.script), *stage.deps],
    }
    if stage.params:
        entry["params"] = stage.params
    entry["outs"] = stage.outs
    if stage.metrics:
        entry["metrics"] = stage.metrics
    return entry


def plots(parts: int) -> list[dict[str, Any]]:
    live = [f"{live_dir(part)}/plots/metrics" for part in range(1, parts + 1)]
    return [
        {
            "Median bot reply length before and after length-trim": {
                "template": "linear",
                "x": "median_reply_length",
                "y": {str(LENGTH_TRIM_PLOT): ["before", "after"]},
            }
        },
        *(
            {title: {"x": "step", "y": {f"{folder}/{metric}.tsv": metric.split("/")[1] for folder in live}}}
            for metric, title in TRAIN_PLOTS
        ),
        {
            "Held-out loss after each part": {
                "template": "scatter",
                "x": "step",
                "y": {f"{folder}/eval/loss.tsv": "loss" for folder in live},
            }
        },
    ]


def render(params: dict[str, Any]) -> str:
    """dvc.yaml's text for these params."""
    parts = require(require(params, "train", "params", dict), "parts", "train", int)
    if parts < 1:
        raise ChatmillError(f"params.yaml: train.parts={parts} must be positive")
    adapter = params["train"].get("adapter", "none") != "none"
    stages = [*data_stages(params), *train_stages(parts, adapter), eval_stage(adapter)]
    pipeline = {
        "stages": {stage.name: stage_entry(stage) for stage in stages},
        # The testers' verdicts on pairs of runs (`make rate-report`), in git; no stage writes them.
        "metrics": [str(RATINGS_METRICS)],
        "plots": plots(parts),
    }
    body = yaml.safe_dump(pipeline, sort_keys=False, width=110, allow_unicode=True)
    # A blank line before each stage and section, for the reader.
    return HEADER + re.sub(r"\n(?=(?:  )?[\w-]+:\n)", "\n\n", body).replace(":\n\n  ", ":\n  ", 1)


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that dvc.yaml is up to date")
    args = parser.parse_args()
    text = render(load_params(path=PARAMS_FILE))
    current = PIPELINE_FILE.read_text() if PIPELINE_FILE.is_file() else None
    if args.check:
        if current != text:
            print(f"{PIPELINE_FILE} is not what {PARAMS_FILE} makes; run `make pipeline`", file=sys.stderr)
            sys.exit(1)
        return
    if current != text:
        PIPELINE_FILE.write_text(text)
        print(f"pipeline: wrote {PIPELINE_FILE} from {PARAMS_FILE}")
    else:
        print(f"pipeline: {PIPELINE_FILE} is up to date")


if __name__ == "__main__":
    main()
