"""Sampling replies from a chatmill model, shared by sample-eval, the chat and the benchmark.

Every sampling value is explicit (top_k 0 = off) and the checkpoint's own generation defaults are
dropped, so a reply is sampled exactly as the setting says. A reply ends where the prompt format of
the tokenizer says (chatmill.prompt's Stops): at its end-of-turn token (EOS, <|im_end|>), or where
the model starts the user's next turn ("\\nYou:", <|im_start|>); the stop reason is kept, so a reply
cut off by max_new_tokens can be told apart from one that ended cleanly.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from chatmill.errors import ChatmillError
from chatmill.params import require
from chatmill.prompt import Stops, encode_prompt, prompt_format
from chatmill.schema import Conversation, Turn

STOPS = ("eos", "turn", "max_tokens")  # why a reply ended: end-of-turn token, the next turn, length
GRID_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class Setting:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float

    @property
    def name(self) -> str:
        return f"t{self.temperature}-p{self.top_p}-k{self.top_k}-r{self.repetition_penalty}"


@dataclass(frozen=True)
class Reply:
    text: str
    new_tokens: int  # tokens generated up to and including what ended the reply
    stop: str  # one of STOPS


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


def setting_problem(setting: Setting) -> str | None:
    """What is out of range in a setting, as "name=value must be ...", or None."""
    if setting.temperature <= 0:
        return f"temperature={setting.temperature} must be > 0"
    if not 0 < setting.top_p <= 1:
        return f"top_p={setting.top_p} must be in (0, 1]; 1 = off"
    if setting.top_k < 0:
        return f"top_k={setting.top_k} must be >= 0; 0 = off"
    if setting.repetition_penalty <= 0:
        return f"repetition_penalty={setting.repetition_penalty} must be > 0; 1 = off"
    return None


def fit_prompt(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, turns: Sequence[Turn], max_tokens: int
) -> list[int]:
    """The context before the bot's next reply, encoded as in training. The oldest turns are dropped
    until it fits in max_tokens (the header stays); a last turn too long on its own keeps its tail."""
    for start in range(len(turns)):
        ids = encode_prompt(tokenizer, conversation, turns[start:])
        if len(ids) <= max_tokens:
            return ids
    return encode_prompt(tokenizer, conversation, turns[-1:])[-max_tokens:]


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generation_config(setting: Setting, max_new_tokens: int, stops: Stops, pad: int) -> GenerationConfig:
    """All four sampling values passed explicitly. transformers applies top-k only when top_k is
    neither None nor 0, so top_k=0 is off; None would fall back to its default of 50. Generation ends
    at the format's end-of-turn and turn-start tokens and its stop strings, which need the tokenizer
    passed to generate()."""
    return GenerationConfig(
        do_sample=True,
        num_beams=1,
        temperature=setting.temperature,
        top_p=setting.top_p,
        top_k=setting.top_k,
        repetition_penalty=setting.repetition_penalty,
        max_new_tokens=max_new_tokens,
        eos_token_id=[*stops.end_ids, *stops.turn_ids],
        pad_token_id=pad,
        stop_strings=list(stops.turn_strings) or None,
        use_cache=True,
    )


def load_model(model_dir: Path, where: str) -> PreTrainedModel:
    """The model in the dtype it was saved in, without its own generation defaults: generate() fills
    every value our config leaves unset from the model's generation_config.json (typical_p,
    no_repeat_ngram_size, ...); a blank one leaves only transformers' neutral defaults."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(where).eval()
    model.generation_config = GenerationConfig()
    return model


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad on the left so that every prompt ends where generation starts; masked out by attention_mask
    (generate derives position ids from the mask)."""
    width = max(map(len, prompts))
    ids = [[pad] * (width - len(prompt)) + prompt for prompt in prompts]
    mask = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts]
    return torch.tensor(ids), torch.tensor(mask)


def finish(tokenizer: PreTrainedTokenizerBase, new: list[int], stops: Stops, pad: int) -> Reply:
    """The bot's turn from the generated ids: up to the first end-of-turn or turn-start token, cut
    where the text of the user's next turn starts. After a row stops, generate() fills it with
    padding, which is not counted."""
    stop_ids = {*stops.end_ids, *stops.turn_ids}
    stop = next((index for index, token in enumerate(new) if token in stop_ids), None)
    if stop is not None:
        new = new[: stop + 1]
    else:
        while new and new[-1] == pad:
            new = new[:-1]
    text = tokenizer.decode(new, skip_special_tokens=True)
    for turn in stops.turn_strings:
        if turn in text:
            return Reply(text.split(turn, 1)[0].strip(), len(new), "turn")
    if stop is None:
        return Reply(text.strip(), len(new), "max_tokens")
    return Reply(text.strip(), len(new), "eos" if new[-1] in stops.end_ids else "turn")


@torch.inference_mode()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    config: GenerationConfig,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[Reply]:
    """Replies to `prompts` in their order, generated `batch_size` at a time with the KV cache. Prompts
    are batched longest first, so similar lengths share a batch (little padding) and the largest batch
    comes first (out of memory shows at once)."""
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    stops = prompt_format(tokenizer).stops
    replies: dict[int, Reply] = {}
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        ids, mask = left_pad([prompts[index] for index in batch], config.pad_token_id)
        output = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            generation_config=config,
            tokenizer=tokenizer,
        )
        for index, new in zip(batch, output[:, ids.shape[1] :].tolist(), strict=True):
            replies[index] = finish(tokenizer, new, stops, config.pad_token_id)
        if on_batch is not None:
            on_batch(len(batch))
    return [replies[index] for index in range(len(prompts))]
