"""Where the pipeline keeps things, relative to the repository root: one place for every path that
more than one stage, command or dvc.yaml names."""

from pathlib import Path

SOURCES_DIR = Path("data/sources")
RAW_DIR = Path("data/raw")
CLEAN_DIR = Path("data/clean")
TRIMMED_DIR = Path("data/trimmed")
MIXED_DIR = Path("data/mixed")
SHARDS_DIR = Path("data/shards")
EVAL_SHARD_DIR = SHARDS_DIR / "eval"
CONVERSATIONS = "conversations.parquet"  # each data stage's output file
MODELS_DIR = Path("models")
BASE_DIR = MODELS_DIR / "base"
CHECKPOINTS_DIR = Path("checkpoints")  # a killed part's intermediate checkpoints (git-ignored)
DVCLIVE_DIR = Path("dvclive")
LENGTH_TRIM_PLOT = Path("reports/length-trim.csv")
METRICS_FILE = Path("metrics/sample-eval.json")  # sample-eval's headline numbers: DVC's metrics, in git
BREAKDOWN_FILE = Path("reports/sample-eval.json")  # every sample-eval metric of every group
SAMPLES_FILE = Path("reports/samples.jsonl")
REPORT_FILE = Path("reports/sample-eval.html")
COMPARE_FILE = Path("reports/compare.html")
RELEASE_DIR = Path("release")
STATS = "stats.json"


def part_name(part: int) -> str:
    return f"part-{part:02d}"


def model_dir(part: int) -> Path:
    """models/part-NN, or models/base for part 0 (what part 1 starts from)."""
    return BASE_DIR if part == 0 else MODELS_DIR / part_name(part)


def shard_dir(part: int) -> Path:
    return SHARDS_DIR / part_name(part)


def live_dir(part: int) -> Path:
    return DVCLIVE_DIR / part_name(part)


def is_model_folder(folder: Path) -> bool:
    """A model in transformers' layout: whole weights (config.json), or a part's adapters in peft's
    (adapter_config.json), which transformers loads over the base they name."""
    return (Path(folder) / "config.json").is_file() or (Path(folder) / "adapter_config.json").is_file()


def trained_parts() -> list[int]:
    """The parts with a trained model in models/, in order."""
    found = (path.name.removeprefix("part-") for path in MODELS_DIR.glob("part-*"))
    return sorted(int(part) for part in found if part.isdigit() and is_model_folder(model_dir(int(part))))
