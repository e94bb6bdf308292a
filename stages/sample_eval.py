"""sample-eval: sample replies from a trained model across a grid of sampling settings, and measure
held-out loss.

For each held-out conversation the model replies to its last user turn, once per setting of
eval.grid (temperature, top_p, top_k, repetition_penalty; top_k 0 = off). The logbook's complaint
was ultra-short replies ("...", "Yes.", "Hm?"), so the headline metric is the short-reply rate,
next to reply length, distinct-2 and the loss on the packed eval sequences.
"""

import heapq
import json
import math
import re
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.io import atomic_write_text, read_parquet, write_json
from chatmill.params import load_params, require
from chatmill.prompt import encode_prompt
from chatmill.schema import USER_NAME, Conversation, Turn
from chatmill.shards import ARRAYS, IGNORE_INDEX, load_shard

EVAL_DIR = Path("data/shards/eval")
METRICS_FILE = Path("metrics/sample-eval.json")
SAMPLES_FILE = Path("reports/samples.jsonl")
GRID_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
NEXT_USER_TURN = f"\n{USER_NAME}:"
WORD = re.compile(r"\w+(?:['’]\w+)*")  # "don't" is one word; "..." is none


# --- Reply metrics -------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_short(text: str, short_words: int) -> bool:
    """Under short_words words, or at most one word whatever short_words says: "...", "Yes.",
    "Hm?" and an empty reply are the ultra-short replies the logbook complains about."""
    count = len(words(text))
    return count < short_words or count <= 1


def bigrams(text: str) -> list[tuple[str, str]]:
    tokens = words(text)
    return list(zip(tokens, tokens[1:], strict=False))


def distinct_2(replies: Iterable[str]) -> float:
    """Unique word bigrams / all word bigrams, bigrams taken within each reply; 0 when there are none."""
    pairs = [pair for reply in replies for pair in bigrams(reply)]
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def reply_metrics(replies: list[str], short_words: int) -> dict[str, Any]:
    counts = [len(words(reply)) for reply in replies]
    return {
        "n_replies": len(replies),
        "short_rate": round(sum(is_short(reply, short_words) for reply in replies) / len(replies), 6),
        "median_words": statistics.median(counts),
        "distinct_2": round(distinct_2(replies), 6),
    }


def sample_metrics(samples: list[dict[str, Any]], short_words: int) -> dict[str, Any]:
    """Metrics over all replies of all settings, and per setting in the order they were sampled."""
    by_setting: dict[str, list[str]] = {}
    for row in samples:
        by_setting.setdefault(row["setting"], []).append(row["reply"])
    return {
        "overall": reply_metrics([row["reply"] for row in samples], short_words),
        "settings": {name: reply_metrics(replies, short_words) for name, replies in by_setting.items()},
    }


# --- Params --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float

    @property
    def name(self) -> str:
        return f"t{self.temperature}-p{self.top_p}-k{self.top_k}-r{self.repetition_penalty}"


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
        if setting.temperature <= 0:
            raise ChatmillError(f"params.yaml: {where}.temperature={setting.temperature} must be > 0")
        if not 0 < setting.top_p <= 1:
            raise ChatmillError(f"params.yaml: {where}.top_p={setting.top_p} must be in (0, 1]; 1 = off")
        if setting.top_k < 0:
            raise ChatmillError(f"params.yaml: {where}.top_k={setting.top_k} must be >= 0; 0 = off")
        if setting.repetition_penalty <= 0:
            raise ChatmillError(
                f"params.yaml: {where}.repetition_penalty={setting.repetition_penalty} must be > 0; 1 = off"
            )
        if setting in settings:
            raise ChatmillError(f"params.yaml: {where} repeats setting {setting.name}")
        settings.append(setting)
    return settings


def validate_eval(section: dict[str, Any]) -> dict[str, Any]:
    params = {"model": require(section, "model", "eval", str), "seed": require(section, "seed", "eval", int)}
    for key, minimum in (("prompts", 1), ("max_new_tokens", 1), ("batch_size", 1), ("short_words", 0)):
        params[key] = require(section, key, "eval", int)
        if params[key] < minimum:
            raise ChatmillError(f"params.yaml: eval.{key}={params[key]} must be >= {minimum}")
    params["grid"] = validate_grid(require(section, "grid", "eval"))
    return params


# --- Prompts -------------------------------------------------------------------------------------


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


def prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: Conversation, max_tokens: int) -> list[int]:
    """The context before the reply, encoded as in training. The oldest turns are dropped until it
    fits in max_tokens (the header stays); a last user turn too long on its own keeps its tail."""
    turns = conversation["turns"][: reply_index(conversation["turns"])]
    for start in range(len(turns)):
        ids = encode_prompt(tokenizer, conversation, turns[start:])
        if len(ids) <= max_tokens:
            return ids
    return ids[-max_tokens:]


# --- Generation ----------------------------------------------------------------------------------


def sample_row(
    setting: Setting, conversation: Conversation, prompt: str, reply: str, short_words: int
) -> dict[str, Any]:
    return {
        "setting": setting.name,
        **asdict(setting),
        "conversation_id": conversation["id"],
        "bot_name": conversation["bot_name"],
        "prompt": prompt,
        "reply": reply,
        "words": len(words(reply)),
        "short": is_short(reply, short_words),
    }


def generation_config(setting: Setting, max_new_tokens: int, eos_id: int, pad_id: int) -> GenerationConfig:
    """All four sampling values passed explicitly. transformers applies top-k only when top_k is
    neither None nor 0, so top_k=0 is off; None would fall back to its default of 50."""
    return GenerationConfig(
        do_sample=True,
        num_beams=1,
        temperature=setting.temperature,
        top_p=setting.top_p,
        top_k=setting.top_k,
        repetition_penalty=setting.repetition_penalty,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )


def load_model(model_dir: Path, device: str) -> PreTrainedModel:
    """The model in the dtype it was saved in, without its own generation defaults: generate() fills
    every value our config leaves unset from the model's generation_config.json (typical_p,
    no_repeat_ngram_size, ...); a blank one leaves only transformers' neutral defaults."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    model.generation_config = GenerationConfig()
    return model


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad on the left so that every prompt ends where generation starts; masked out by attention_mask
    (generate derives position ids from the mask)."""
    width = max(map(len, prompts))
    ids = [[pad_id] * (width - len(prompt)) + prompt for prompt in prompts]
    mask = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts]
    return torch.tensor(ids), torch.tensor(mask)


def clean_reply(text: str) -> str:
    """The bot's turn only: a reply that runs on into the user's next line is cut there."""
    return text.split(NEXT_USER_TURN, 1)[0].strip()


@torch.inference_mode()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    config: GenerationConfig,
    batch_size: int,
) -> Iterator[str]:
    """Replies to `prompts`, `batch_size` at a time with the KV cache; only the new tokens, up to EOS."""
    for first in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[first : first + batch_size], config.pad_token_id)
        output = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), generation_config=config
        )
        for new in output[:, ids.shape[1] :].tolist():
            if config.eos_token_id in new:
                new = new[: new.index(config.eos_token_id)]
            yield clean_reply(tokenizer.decode(new, skip_special_tokens=True))


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


# --- Stage ---------------------------------------------------------------------------------------


def missing_model_hint(model_dir: Path) -> str:
    part = re.fullmatch(r"part-(\d+)", model_dir.name)
    return f"run `dvc repro train-part{int(part[1])}` or set eval.model" if part else "set eval.model"


@exit_on_error
def main() -> None:
    params = validate_eval(load_params("eval")["eval"])
    model_dir, settings = Path(params["model"]), params["grid"]
    if not model_dir.is_dir():
        raise ChatmillError(f"sample-eval: {model_dir} not found; {missing_model_hint(model_dir)}")
    if not (EVAL_DIR / "conversations.parquet").is_file():
        raise ChatmillError(f"sample-eval: {EVAL_DIR}/conversations.parquet not found; run `dvc repro shard`")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, device)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    max_prompt = model.config.max_position_embeddings - params["max_new_tokens"]
    if max_prompt < 1:
        raise ChatmillError(
            f"params.yaml: eval.max_new_tokens={params['max_new_tokens']} must be below the "
            f"model's context of {model.config.max_position_embeddings} tokens"
        )
    conversations = select_conversations(read_parquet(EVAL_DIR / "conversations.parquet"), params["prompts"])
    if not conversations:
        raise ChatmillError(f"sample-eval: no conversation in {EVAL_DIR} has a user turn to reply to")
    prompts = [prompt_ids(tokenizer, conversation, max_prompt) for conversation in conversations]
    prompt_texts = [tokenizer.decode(ids) for ids in prompts]

    shard = load_shard(EVAL_DIR)
    loss = eval_loss(model, shard, params["batch_size"])

    samples = []
    with Progress(transient=True) as progress:
        task = progress.add_task("sample-eval", total=len(settings) * len(prompts))
        for index, setting in enumerate(settings):
            progress.update(task, description=f"sampling {setting.name}")
            torch.manual_seed(params["seed"] + index)  # each setting reproducible on its own
            config = generation_config(setting, params["max_new_tokens"], eos_id, pad_id)
            replies = generate_replies(model, tokenizer, prompts, config, params["batch_size"])
            for conversation, prompt, reply in zip(conversations, prompt_texts, replies, strict=True):
                samples.append(sample_row(setting, conversation, prompt, reply, params["short_words"]))
                progress.advance(task)

    metrics = {
        "eval_loss": round(loss, 6),
        "perplexity": round(math.exp(loss), 6),
        **sample_metrics(samples, params["short_words"]),
    }
    atomic_write_text(SAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples))
    write_json(METRICS_FILE, metrics)
    print(
        f"sample-eval: {model_dir}: eval_loss {metrics['eval_loss']}, "
        f"short_rate {metrics['overall']['short_rate']} over {len(samples)} replies"
    )


if __name__ == "__main__":
    main()
