"""sample-eval: sample replies from a trained model across a grid of sampling settings, turn the
logbook's impressions into numbers, and show the samples.

    python stages/sample_eval.py                   (the DVC stage: eval.model)
    python stages/sample_eval.py --compare A B     (`make compare`: two model folders, or two git
                                                    revisions / DVC experiments)

Three prompt sets, every prompt replied to eval.samples_per_prompt times per setting of eval.grid
(temperature, top_p, top_k, repetition_penalty; top_k 0 = off; fixed seeds):
  heldout    the last user turn of eval.prompts held-out conversations (data/shards/eval);
  zero_shot  requests to an assistant-like character (instructions, recipes, code), on their own;
  few_shot   the same requests after worked examples (eval.prompt_sets, versioned in the repo).
Metrics (overall, per setting, per prompt set and per set and setting) go to
metrics/sample-eval.json, the replies to reports/samples.jsonl and a self-contained page with the
samples side by side, length histograms and the metric table to reports/sample-eval.html.
"""

import argparse
import heapq
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import Progress
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.generation import (
    Reply,
    Setting,
    device,
    fit_prompt,
    generate_replies,
    generation_config,
    load_model,
    pad_id,
    setting_problem,
)
from chatmill.io import atomic_write_text, read_parquet, write_json
from chatmill.params import load_params, require
from chatmill.report import Run, render_report
from chatmill.schema import USER_NAME, Conversation, Turn, make_conversation
from chatmill.shards import ARRAYS, IGNORE_INDEX, load_shard

EVAL_DIR = Path("data/shards/eval")
METRICS_FILE = Path("metrics/sample-eval.json")
SAMPLES_FILE = Path("reports/samples.jsonl")
REPORT_FILE = Path("reports/sample-eval.html")
COMPARE_FILE = Path("reports/compare.html")
GRID_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
PROMPT_SETS = ("heldout", "zero_shot", "few_shot")
WORD = re.compile(r"\w+(?:['’]\w+)*")  # "don't" is one word; "..." is none
REP_N = 4  # rep_4 and cross_rep_4 count repeated word 4-grams
MANNERISMS = 5  # phrases per setting shown in the report


# --- Reply metrics -------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]


def is_short(text: str, short_words: int, cut_off: bool = False) -> bool:
    """At most one word whatever short_words says: "...", "Yes.", "Hm?" and an empty reply are the
    ultra-short replies the logbook complains about. Or under short_words words, unless the reply was
    cut off by max_new_tokens: then the model was not done, and the length says nothing."""
    count = len(words(text))
    return count <= 1 or (count < short_words and not cut_off)


def distinct_n(replies: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, n-grams taken within each reply; 0 when there are none."""
    grams = [gram for reply in replies for gram in ngrams(words(reply), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def rep_n(text: str, n: int = REP_N) -> float:
    """Share of a reply's word n-grams that repeat an earlier one in the same reply (0: none repeats,
    near 1: one phrase over and over); 0 for a reply shorter than n words."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def keyword_recall(text: str, expect: Iterable[str]) -> float | None:
    """Share of the expected words ("a|b": either) found among the reply's words; None without any."""
    expected = [set(option.lower().split("|")) for option in expect]
    if not expected:
        return None
    found = set(words(text))
    return sum(bool(options & found) for options in expected) / len(expected)


def prompt_grams(rows: list[dict[str, Any]], n: int = REP_N) -> dict[tuple[str, ...], set[tuple[str, str]]]:
    """For every word n-gram, the prompts (set, id) whose replies contain it."""
    prompts: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        for gram in ngrams(words(row["reply"]), n):
            prompts[gram].add((row["prompt_set"], row["prompt_id"]))
    return prompts


def cross_rep(rows: list[dict[str, Any]], n: int = REP_N) -> float:
    """The mannerism the logbook saw spread: mean, over replies of n words or more, of the share of a
    reply's distinct n-grams that also occur in a reply to another prompt of the same group."""
    prompts = prompt_grams(rows, n)
    shares = []
    for row in rows:
        grams = set(ngrams(words(row["reply"]), n))
        if grams:
            own = (row["prompt_set"], row["prompt_id"])
            shares.append(sum(bool(prompts[gram] - {own}) for gram in grams) / len(grams))
    return sum(shares) / len(shares) if shares else 0.0


def mannerisms(rows: list[dict[str, Any]], top: int = MANNERISMS) -> list[tuple[str, int]]:
    """The n-grams found in replies to the most prompts (at least two), with that number of prompts."""
    counts = Counter({" ".join(gram): len(where) for gram, where in prompt_grams(rows).items()})
    return [(phrase, count) for phrase, count in counts.most_common(top) if count >= 2]


def regens_to_accept(rows: list[dict[str, Any]]) -> float:
    """Mean over (prompt, setting) of the samples drawn until the first acceptable one, in sample
    order; samples_per_prompt + 1 when none is (a lower bound: "more than every sample drawn")."""
    draws: dict[tuple[str, str, str], list[tuple[int, bool]]] = defaultdict(list)
    for row in rows:
        draws[(row["prompt_set"], row["prompt_id"], row["setting"])].append(
            (row["sample"], row["acceptable"])
        )
    counts = []
    for samples in draws.values():
        flags = [acceptable for _, acceptable in sorted(samples)]
        counts.append(flags.index(True) + 1 if True in flags else len(flags) + 1)
    return sum(counts) / len(counts)


def share(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> float:
    return round(sum(map(test, rows)) / len(rows), 6)


def reply_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of a group of sample rows (see sample_row); README.md defines each one."""
    replies = [row["reply"] for row in rows]
    p10, median, p90 = (float(value) for value in np.percentile([row["words"] for row in rows], [10, 50, 90]))
    long_enough = [row["rep_4"] for row in rows if len(words(row["reply"])) >= REP_N]
    recalls = [row["keyword_recall"] for row in rows if row["keyword_recall"] is not None]
    metrics = {
        "n_replies": len(rows),
        "short_rate": share(rows, lambda row: row["short"]),
        "median_words": round(median, 6),
        "p10_words": round(p10, 6),
        "p90_words": round(p90, 6),
        "distinct_1": round(distinct_n(replies, 1), 6),
        "distinct_2": round(distinct_n(replies, 2), 6),
        "rep_4": round(sum(long_enough) / len(long_enough), 6) if long_enough else 0.0,
        "cross_rep_4": round(cross_rep(rows), 6),
        "hit_max_tokens_rate": share(rows, lambda row: row["stop"] == "max_tokens"),
        "accept_rate": share(rows, lambda row: row["acceptable"]),
        "regens_to_accept": round(regens_to_accept(rows), 6),
    }
    if recalls:
        metrics["keyword_recall"] = round(sum(recalls) / len(recalls), 6)
    return metrics


def group_by(rows: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Rows per value of `key`, in the order the values first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def sample_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over all replies, per setting, per prompt set, and per setting within each set."""
    return {
        "overall": reply_metrics(samples),
        "settings": {name: reply_metrics(rows) for name, rows in group_by(samples, "setting").items()},
        "prompt_sets": {
            name: {
                **reply_metrics(rows),
                "settings": {
                    setting: reply_metrics(group) for setting, group in group_by(rows, "setting").items()
                },
            }
            for name, rows in group_by(samples, "prompt_set").items()
        },
    }


def setting_mannerisms(samples: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    return {name: mannerisms(rows) for name, rows in group_by(samples, "setting").items()}


# --- Params --------------------------------------------------------------------------------------


def validate_grid(grid: Any) -> list[Setting]:
    """Every key of every entry is required: a missing one would silently fall back to a
    transformers default (top_k=50), which is not what the experiment says it ran."""
    if not isinstance(grid, list) or not grid:
        raise ChatmillError("params.yaml: eval.grid must be a non-empty list of sampling settings")
    settings = []
    for index, entry in enumerate(grid):
        where = f"eval.grid[{index}]"
        if not isinstance(entry, dict):
            raise ChatmillError(f"params.yaml: {where} must be a mapping of {', '.join(GRID_KEYS)}")
        unknown = sorted(set(entry) - set(GRID_KEYS))
        if unknown:
            raise ChatmillError(
                f"params.yaml: {where} has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(GRID_KEYS)}"
            )
        setting = Setting(
            temperature=float(require(entry, "temperature", where, (int, float))),
            top_p=float(require(entry, "top_p", where, (int, float))),
            top_k=require(entry, "top_k", where, int),
            repetition_penalty=float(require(entry, "repetition_penalty", where, (int, float))),
        )
        problem = setting_problem(setting)
        if problem:
            raise ChatmillError(f"params.yaml: {where}.{problem}")
        if setting in settings:
            raise ChatmillError(f"params.yaml: {where} repeats setting {setting.name}")
        settings.append(setting)
    return settings


def validate_eval(section: dict[str, Any]) -> dict[str, Any]:
    params = {
        "model": require(section, "model", "eval", str),
        "prompt_sets": require(section, "prompt_sets", "eval", str),
        "seed": require(section, "seed", "eval", int),
    }
    minimums = (("prompts", 1), ("samples_per_prompt", 1), ("max_new_tokens", 1), ("batch_size", 1))
    for key, minimum in (*minimums, ("short_words", 0)):
        params[key] = require(section, key, "eval", int)
        if params[key] < minimum:
            raise ChatmillError(f"params.yaml: eval.{key}={params[key]} must be >= {minimum}")
    params["max_rep_4"] = float(require(section, "max_rep_4", "eval", (int, float)))
    if not 0 <= params["max_rep_4"] <= 1:
        raise ChatmillError(f"params.yaml: eval.max_rep_4={params['max_rep_4']} must be in [0, 1]")
    params["grid"] = validate_grid(require(section, "grid", "eval"))
    return params


# --- Prompts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One prompt: the conversation's header and the turns before the reply to generate."""

    prompt_set: str
    prompt_id: str
    conversation: Conversation
    context: list[Turn]
    kind: str = "conversation"  # a fixed prompt's kind of task: recipe, code, ...
    reference: str | None = None  # the held-out conversation's real reply
    expect: tuple[str, ...] = ()  # words a complete answer contains, for keyword_recall


def reply_index(turns: list[Turn]) -> int | None:
    """Index of the last bot turn that answers a user turn, or None if there is none."""
    for index in range(len(turns) - 1, 0, -1):
        if turns[index]["role"] == "bot" and turns[index - 1]["role"] == "user":
            return index
    return None


def select_conversations(rows: Iterable[Conversation], count: int) -> list[Conversation]:
    """The `count` conversations with the smallest ids among those with a user turn to reply to
    (independent of file order; holds only `count` rows in memory)."""
    candidates = (row for row in rows if reply_index(row["turns"]) is not None)
    return heapq.nsmallest(count, candidates, key=lambda row: row["id"])


def heldout_prompts(rows: Iterable[Conversation], count: int) -> list[Prompt]:
    prompts = []
    for conversation in select_conversations(rows, count):
        index = reply_index(conversation["turns"])
        context, reply = conversation["turns"][:index], conversation["turns"][index]
        prompts.append(Prompt("heldout", conversation["id"], conversation, context, reference=reply["text"]))
    return prompts


def _text(spec: Any, key: str, where: str) -> str:
    value = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(value, str):
        raise ChatmillError(f"{where}.{key} must be a string")
    return value


def fixed_prompts(spec: Any, path: str) -> list[Prompt]:
    """The zero-shot and few-shot prompts of a prompt-set file (see chatmill/prompts/)."""
    if not isinstance(spec, dict) or not all(
        isinstance(spec.get(key), list) for key in ("examples", "tasks")
    ):
        raise ChatmillError(f"{path} must be a mapping with a character, examples and tasks (lists)")
    character = spec.get("character")
    if not isinstance(character, dict):
        raise ChatmillError(f"{path}: character must be a mapping of bot_name, persona, scenario")
    bot_name, persona, scenario = (
        _text(character, key, f"{path}: character") for key in ("bot_name", "persona", "scenario")
    )
    examples: list[Turn] = []
    for index, example in enumerate(spec["examples"]):
        where = f"{path}: examples[{index}]"
        examples.append(Turn(role="user", name=USER_NAME, text=_text(example, "user", where)))
        examples.append(Turn(role="bot", name=bot_name, text=_text(example, "bot", where)))
    prompts, ids = [], set()
    for index, task in enumerate(spec["tasks"]):
        where = f"{path}: tasks[{index}]"
        task_id, kind, request = (_text(task, key, where) for key in ("id", "kind", "request"))
        expect = task.get("expect", [])
        if task_id in ids:
            raise ChatmillError(f"{where} repeats id {task_id}")
        if not isinstance(expect, list) or not all(isinstance(word, str) for word in expect):
            raise ChatmillError(f"{where}.expect must be a list of words")
        ids.add(task_id)
        ask = Turn(role="user", name=USER_NAME, text=request)
        for prompt_set, context in (("zero_shot", [ask]), ("few_shot", [*examples, ask])):
            conversation = make_conversation(f"eval:{prompt_set}", bot_name, persona, scenario, context, {})
            prompts.append(Prompt(prompt_set, task_id, conversation, context, kind, expect=tuple(expect)))
    if not ids:
        raise ChatmillError(f"{path} has no tasks")
    return sorted(prompts, key=lambda prompt: PROMPT_SETS.index(prompt.prompt_set))


def load_prompt_sets(path: str) -> list[Prompt]:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ChatmillError(f"params.yaml: eval.prompt_sets={path} not found") from None
    except yaml.YAMLError as error:
        raise ChatmillError(f"{path} is not valid YAML: {error}".replace("\n", " ")) from None
    return fixed_prompts(spec, path)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, max_tokens: int) -> list[int]:
    """The prompt encoded as in training; the oldest turns (or few-shot examples) are dropped first
    when it does not fit."""
    return fit_prompt(tokenizer, prompt.conversation, prompt.context, max_tokens)


# --- Sampling ------------------------------------------------------------------------------------


def sample_row(
    setting: Setting, prompt: Prompt, sample: int, prompt_text: str, reply: Reply, params: dict[str, Any]
) -> dict[str, Any]:
    """One reply with what the metrics need: its length, flags and why it ended."""
    short = is_short(reply.text, params["short_words"], cut_off=reply.stop == "max_tokens")
    rep_4 = rep_n(reply.text)
    repetitive = rep_4 > params["max_rep_4"]
    return {
        "setting": setting.name,
        **asdict(setting),
        "prompt_set": prompt.prompt_set,
        "prompt_id": prompt.prompt_id,
        "kind": prompt.kind,
        "sample": sample,
        "conversation_id": prompt.conversation["id"],
        "bot_name": prompt.conversation["bot_name"],
        "prompt": prompt_text,
        "reference": prompt.reference,
        "reply": reply.text,
        "words": len(words(reply.text)),
        "new_tokens": reply.new_tokens,
        "stop": reply.stop,
        "short": short,
        "rep_4": round(rep_4, 6),
        "repetitive": repetitive,
        "keyword_recall": keyword_recall(reply.text, prompt.expect),
        "acceptable": not short and not repetitive and reply.stop != "max_tokens",
    }


def sample_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every prompt, samples_per_prompt times, for every setting; each setting seeded on its own."""
    max_prompt = model.config.max_position_embeddings - params["max_new_tokens"]
    if max_prompt < 1:
        raise ChatmillError(
            f"params.yaml: eval.max_new_tokens={params['max_new_tokens']} must be below the "
            f"model's context of {model.config.max_position_embeddings} tokens"
        )
    encoded = [prompt_ids(tokenizer, prompt, max_prompt) for prompt in prompts]
    texts = [tokenizer.decode(ids) for ids in encoded]
    repeats = params["samples_per_prompt"]
    jobs = [(index, sample) for index in range(len(prompts)) for sample in range(repeats)]
    samples = []
    with Progress(transient=True) as progress:
        task = progress.add_task("sample-eval", total=len(params["grid"]) * len(jobs))
        for number, setting in enumerate(params["grid"]):
            progress.update(task, description=f"sampling {setting.name}")
            torch.manual_seed(params["seed"] + number)  # each setting reproducible on its own
            config = generation_config(
                setting, params["max_new_tokens"], tokenizer.eos_token_id, pad_id(tokenizer)
            )
            replies = generate_replies(
                model,
                tokenizer,
                [encoded[index] for index, _ in jobs],
                config,
                params["batch_size"],
                lambda count: progress.advance(task, count),
            )
            for (index, sample), reply in zip(jobs, replies, strict=True):
                samples.append(sample_row(setting, prompts[index], sample, texts[index], reply, params))
    return samples


# --- Held-out loss -------------------------------------------------------------------------------


@torch.inference_mode()
def eval_loss(model: PreTrainedModel, shard: dict[str, np.ndarray], batch_size: int) -> float:
    """Mean next-token loss over the supervised tokens of the packed eval sequences. Position ids
    restart per packed document and attention_mask=None, so attention stays within documents."""
    total, count = 0.0, 0
    for first in range(0, len(shard["input_ids"]), batch_size):
        rows = slice(first, first + batch_size)
        input_ids, labels, position_ids = (
            torch.tensor(np.asarray(shard[name][rows]), dtype=torch.long, device=model.device)
            for name in ARRAYS
        )
        logits = model(
            input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False
        ).logits
        # Labels are aligned with input_ids: token t+1 is predicted from position t.
        targets = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ChatmillError(f"sample-eval: {EVAL_DIR} has no supervised tokens; check the shard stage")
    return total / count


# --- Comparing two runs --------------------------------------------------------------------------


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Dotted names of the numbers, as `dvc metrics diff` shows them."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def headline(name: str) -> bool:
    """The diff table's rows: everything but the per-setting numbers within each prompt set."""
    return not re.fullmatch(r"prompt_sets\.[^.]+\.settings\..*", name)


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, value in A, value in B) for every headline metric of either, A's order first."""
    flat_a, flat_b = flatten(a), flatten(b)
    names = [name for name in {**flat_a, **flat_b} if headline(name)]
    return [(name, flat_a.get(name), flat_b.get(name)) for name in names]


def diff_table(rows: list[tuple[str, float | None, float | None]], labels: tuple[str, str]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    lines = [("metric", *labels, "change (B - A)")]
    for name, a, b in rows:
        change = "-" if a is None or b is None else f"{b - a:+.4g}" if b != a else "0"
        lines.append((name, number(a), number(b), change))
    widths = [max(len(line[column]) for line in lines) for column in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def is_model_folder(source: str) -> bool:
    return (Path(source) / "config.json").is_file()


def revision_files(source: str) -> tuple[str, str]:
    """The text of the metrics and samples files in the workspace, a git revision or a DVC experiment
    (through the DVC cache)."""
    if source == "workspace":
        if not METRICS_FILE.is_file() or not SAMPLES_FILE.is_file():
            raise ChatmillError(f"compare: the workspace has no {METRICS_FILE}; run `dvc repro sample-eval`")
        return METRICS_FILE.read_text(), SAMPLES_FILE.read_text()
    import dvc.api  # only here: importing DVC takes seconds
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import resolve_rev
    from scmrepo.exceptions import SCMError

    try:
        with Repo(".") as repo:
            rev = resolve_rev(repo.scm, source)
        return dvc.api.read(str(METRICS_FILE), rev=rev), dvc.api.read(str(SAMPLES_FILE), rev=rev)
    except (DvcException, SCMError, FileNotFoundError) as error:
        raise ChatmillError(
            f"compare: {source} is not a model folder, and its sample-eval results cannot be read as a "
            f"git revision or DVC experiment ({type(error).__name__}: {error})".replace("\n", " ")
        ) from None


def read_revision(source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    metrics, samples = revision_files(source)
    rows = [json.loads(line) for line in samples.splitlines()]
    if rows and "acceptable" not in rows[0]:
        raise ChatmillError(
            f"compare: {source} was evaluated by an older sample-eval; re-run its sample-eval"
        )
    return json.loads(metrics), rows


# --- Stage ---------------------------------------------------------------------------------------


def missing_model_hint(model_dir: Path) -> str:
    part = re.fullmatch(r"part-(\d+)", model_dir.name)
    return f"run `dvc repro train-part{int(part[1])}` or set eval.model" if part else "set eval.model"


def evaluate(model_dir: Path, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Held-out loss, then every prompt set across the grid: (metrics, samples)."""
    if not model_dir.is_dir():
        raise ChatmillError(f"sample-eval: {model_dir} not found; {missing_model_hint(model_dir)}")
    if not (EVAL_DIR / "conversations.parquet").is_file():
        raise ChatmillError(f"sample-eval: {EVAL_DIR}/conversations.parquet not found; run `dvc repro shard`")
    fixed = load_prompt_sets(params["prompt_sets"])
    heldout = heldout_prompts(read_parquet(EVAL_DIR / "conversations.parquet"), params["prompts"])
    if not heldout:
        raise ChatmillError(f"sample-eval: no conversation in {EVAL_DIR} has a user turn to reply to")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, device())
    loss = eval_loss(model, load_shard(EVAL_DIR), params["batch_size"])
    samples = sample_all(model, tokenizer, heldout + fixed, params)
    metrics = {"eval_loss": round(loss, 6), "perplexity": round(math.exp(loss), 6), **sample_metrics(samples)}
    return metrics, samples


def run(label: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> Run:
    return Run(label, metrics, samples, setting_mannerisms(samples))


def compare(sources: list[str]) -> None:
    """Print the metric diff table of two runs and write both side by side to COMPARE_FILE. A model
    folder is evaluated here with the eval params of params.yaml; anything else is read as a git
    revision or DVC experiment."""
    runs = []
    for source in sources:
        if is_model_folder(source):
            print(f"compare: evaluating {source} with the eval params of params.yaml", file=sys.stderr)
            params = validate_eval(load_params("eval")["eval"])
            runs.append(run(source, *evaluate(Path(source), params)))
        else:
            runs.append(run(source, *read_revision(source)))
    print(diff_table(diff_rows(runs[0].metrics, runs[1].metrics), (sources[0], sources[1])))
    atomic_write_text(COMPARE_FILE, render_report(runs, f"sample-eval: {sources[0]} vs {sources[1]}"))
    print(f"\nsamples side by side: {COMPARE_FILE}")


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="model folders, git revisions or experiments"
    )
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return

    params = validate_eval(load_params("eval")["eval"])
    model_dir = Path(params["model"])
    metrics, samples = evaluate(model_dir, params)
    atomic_write_text(SAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples))
    atomic_write_text(
        REPORT_FILE, render_report([run(str(model_dir), metrics, samples)], f"sample-eval: {model_dir}")
    )
    write_json(METRICS_FILE, metrics)
    overall = metrics["overall"]
    print(
        f"sample-eval: {model_dir}: eval_loss {metrics['eval_loss']}, short_rate {overall['short_rate']}, "
        f"regens_to_accept {overall['regens_to_accept']} over {len(samples)} replies; {REPORT_FILE}"
    )


if __name__ == "__main__":
    main()
