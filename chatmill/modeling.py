"""The model and tokenizer every training part starts from (the base-model stage), in HF format.

`model.base: scratch` trains a byte-level BPE tokenizer on the *cleaned* data (so every trim
experiment shares one tokenizer and one initial model) and initialises a small Llama from
`model.scratch`. Any other value is a Hub id or local path, loaded at `model.revision`. Either way
the tokenizer is made the prompt format's (`prompt.format`): its markers are single special tokens
(added to a pretrained tokenizer that lacks them, with room made in the embeddings), the format is
recorded, and the chat template is the format's.
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
from chatmill.prompt import FORMATS, corpus_texts, prepare_tokenizer
from chatmill.records import ASSISTANT_NAME

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


def training_texts(path: Path, prompt_format: str) -> Iterator[str]:
    """The conversations as the format writes them, without its special tokens."""
    return corpus_texts(read_parquet(path), prompt_format)


def train_tokenizer(
    texts: Iterator[str], vocab_size: int, extra_special_tokens: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text can be encoded, nothing maps to an unknown token. The extra special
    tokens (a prompt format's markers) follow chatmill's own."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS.values(), *extra_special_tokens],
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


def build_base(
    model_params: dict, clean_file: Path, prompt_format: str
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and model every training part starts from, as model params say: trained and
    initialised from scratch (the tokenizer on clean_file's conversations) or loaded; the tokenizer
    made the prompt format's."""
    base = require(model_params, "base", "model", str)
    if base == "scratch":
        scratch = require(model_params, "scratch", "model", dict)
        tokenizer = train_tokenizer(
            training_texts(clean_file, prompt_format),
            require(scratch, "vocab_size", "model.scratch", int),
            FORMATS[prompt_format].special_tokens,
        )
        model = scratch_model(scratch, tokenizer, require(model_params, "seed", "model", int))
    else:
        tokenizer, model = pretrained(base, str(require(model_params, "revision", "model")))
    added = prepare_tokenizer(tokenizer, prompt_format, ASSISTANT_NAME)
    if added:
        print(
            f"base-model: added {', '.join(added)} to the tokenizer of {base} as special tokens for "
            f"prompt.format: {prompt_format}; {make_room(model, len(tokenizer))}"
        )
    return tokenizer, model


def make_room(model: PreTrainedModel, vocabulary: int) -> str:
    """Resize the embeddings (and the output layer, tied or not) to hold every token id where the
    model has fewer rows; new rows start near the mean of the others (transformers' mean_resizing),
    drawn from a fixed seed so that base-model's output is the same on every run. Says what it did."""
    rows = model.get_input_embeddings().num_embeddings
    if vocabulary <= rows:
        return f"the embeddings have room for them ({rows} rows)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.resize_token_embeddings(vocabulary)
    return f"embeddings resized from {rows} to {vocabulary} rows"


def save_base(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, out_dir: Path) -> None:
    with atomic_dir(out_dir) as out:
        tokenizer.save_pretrained(out)
        model.save_pretrained(out)
