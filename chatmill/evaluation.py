"""Sample evaluation (the sample-eval stage): sample replies from a trained model across a grid of
sampling settings, turn the logbook's impressions into numbers (chatmill.metrics), and show the
samples (chatmill.report).

Three prompt sets, every prompt replied to eval.samples_per_prompt times per setting of eval.grid
(temperature, top_p, top_k, repetition_penalty; top_k 0 = off; fixed seeds):
  heldout    the last user turn of eval.prompts held-out conversations (data/shards/eval);
  zero_shot  requests to an assistant-like character (instructions, recipes, code), on their own;
  few_shot   the same requests after worked examples (eval.prompt_sets, versioned in the repo).
Metrics (overall, per setting, per prompt set and per set and setting) go to
reports/sample-eval.json and their headline numbers (chatmill.metrics) to metrics/sample-eval.json,
the replies to reports/samples.jsonl and a self-contained page with the samples side by side, length
histograms and the metric table to reports/sample-eval.html.
"""

import heapq
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import Progress
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from chatmill.errors import ChatmillError
from chatmill.generation import (
    Reply,
    Setting,
    device,
    fit_prompt,
    generate_replies,
    generation_config,
    load_model,
    pad_id,
    validate_grid,
)
from chatmill.io import atomic_write_text, read_parquet, write_json
from chatmill.layout import (
    BREAKDOWN_FILE,
    CONVERSATIONS,
    EVAL_SHARD_DIR,
    METRICS_FILE,
    REPORT_FILE,
    SAMPLES_FILE,
)
from chatmill.metrics import (
    headline_metrics,
    is_short,
    keyword_recall,
    rep_n,
    sample_metrics,
    setting_mannerisms,
    words,
)
from chatmill.params import require
from chatmill.prompt import check_format, prompt_format
from chatmill.report import Run, render_report
from chatmill.schema import USER_NAME, Conversation, Turn, make_conversation
from chatmill.shards import ARRAYS, IGNORE_INDEX, load_shard
from chatmill.timings import mark

PROMPT_SETS = ("heldout", "zero_shot", "few_shot")


# --- Params --------------------------------------------------------------------------------------


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
    stops = prompt_format(tokenizer).stops
    jobs = [(index, sample) for index in range(len(prompts)) for sample in range(repeats)]
    samples = []
    with Progress(transient=True) as progress:
        task = progress.add_task("sample-eval", total=len(params["grid"]) * len(jobs))
        for number, setting in enumerate(params["grid"]):
            progress.update(task, description=f"sampling {setting.name}")
            torch.manual_seed(params["seed"] + number)  # each setting reproducible on its own
            config = generation_config(setting, params["max_new_tokens"], stops, pad_id(tokenizer))
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
        raise ChatmillError("sample-eval: the eval shard has no supervised tokens; check the shard stage")
    return total / count


# --- The evaluation ----------------------------------------------------------------------------------


def missing_model_hint(model_dir: Path) -> str:
    part = re.fullmatch(r"part-(\d+)", model_dir.name)
    return f"run `dvc repro train-part{int(part[1])}` or set eval.model" if part else "set eval.model"


def evaluate(
    model_dir: Path, params: dict[str, Any], expected_format: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Held-out loss on the eval shard, then every prompt set across the grid: (metrics, samples). The
    prompts are in the format the model's tokenizer records, which must be `expected_format` when
    given (the stage's prompt.format)."""
    if not model_dir.is_dir():
        raise ChatmillError(f"sample-eval: {model_dir} not found; {missing_model_hint(model_dir)}")
    conversations = EVAL_SHARD_DIR / CONVERSATIONS
    if not conversations.is_file():
        raise ChatmillError(f"sample-eval: {conversations} not found; run `dvc repro shard`")
    fixed = load_prompt_sets(params["prompt_sets"])
    heldout = heldout_prompts(read_parquet(conversations), params["prompts"])
    if not heldout:
        raise ChatmillError(f"sample-eval: no conversation in {EVAL_SHARD_DIR} has a user turn to reply to")
    if len(heldout) < params["prompts"]:
        # The metrics record the number used (prompt_sets.heldout.n_prompts); two runs with different
        # numbers are not measured alike.
        print(
            f"warning: sample-eval: eval.prompts={params['prompts']} but only {len(heldout)} conversations "
            f"of {EVAL_SHARD_DIR} have a user turn to reply to; using {len(heldout)} held-out prompts "
            "(a larger shard.eval_fraction holds out more)",
            file=sys.stderr,
        )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if expected_format is not None:
        check_format(
            tokenizer,
            expected_format,
            f"sample-eval: {model_dir}",
            "set eval.model to a model trained with it, or re-run its training (`dvc repro`)",
        )
    model = load_model(model_dir, device())
    mark("set-up")
    loss = eval_loss(model, load_shard(EVAL_SHARD_DIR), params["batch_size"])
    samples = sample_all(model, tokenizer, heldout + fixed, params)
    metrics = {"eval_loss": round(loss, 6), "perplexity": round(math.exp(loss), 6), **sample_metrics(samples)}
    return metrics, samples


def report_run(label: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> Run:
    """One run as the report shows it."""
    return Run(label, metrics, samples, setting_mannerisms(samples))


def write_results(label: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    """The stage's outputs: the samples, the report page, every metric and the headline ones."""
    atomic_write_text(SAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples))
    atomic_write_text(
        REPORT_FILE, render_report([report_run(label, metrics, samples)], f"sample-eval: {label}")
    )
    write_json(BREAKDOWN_FILE, metrics)
    write_json(METRICS_FILE, headline_metrics(metrics))
