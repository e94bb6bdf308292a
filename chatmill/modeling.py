"""The model and tokenizer every training part starts from (the base-model stage), in HF format.

`model.base: scratch` trains a byte-level BPE tokenizer on the *cleaned* data (so every trim
experiment shares one tokenizer and one initial model) and initialises a small Llama from
`model.scratch`. Any other value is a Hub id or local path, loaded at `model.revision`.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, read_parquet
from chatmill.params import require
from chatmill.prompt import render_text

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
SCRATCH_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)


def training_texts(path: Path) -> Iterator[str]:
    for conversation in read_parquet(path):
        yield render_text(conversation, eos_token="")


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text can be encoded, nothing maps to an unknown token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def scratch_model(scratch: dict, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    sizes = {key: require(scratch, key, "model.scratch", int) for key in SCRATCH_KEYS}
    sizes["vocab_size"] = len(tokenizer)  # the trained vocabulary can be smaller than asked for
    config = LlamaConfig(
        **sizes,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrained(base: str, revision: str):
    """A Hub id or local folder. Packing pads with the pad token, so one must exist."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype="auto")
    except OSError as error:
        raise ChatmillError(
            f"base-model: cannot load model.base={base!r} at revision {revision!r}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def build_base(model_params: dict, clean_file: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and model every training part starts from, as model params say: trained and
    initialised from scratch (the tokenizer on clean_file's conversations) or loaded."""
    base = require(model_params, "base", "model", str)
    if base != "scratch":
        return pretrained(base, str(require(model_params, "revision", "model")))
    scratch = require(model_params, "scratch", "model", dict)
    tokenizer = train_tokenizer(
        training_texts(clean_file), require(scratch, "vocab_size", "model.scratch", int)
    )
    return tokenizer, scratch_model(scratch, tokenizer, require(model_params, "seed", "model", int))


def save_base(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, out_dir: Path) -> None:
    with atomic_dir(out_dir) as out:
        tokenizer.save_pretrained(out)
        model.save_pretrained(out)
