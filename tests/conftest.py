"""Shared test helpers: conversations, a tiny tokenizer, and stage workspaces as a user's checkout
has them (params.yaml and the dvc.yaml it makes), where a stage script runs as DVC runs it."""

import copy
import os
import runpy
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatmill.pipeline import render

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def deep_update(target: dict, changes: dict) -> dict:
    """`target` with `changes` merged in, mapping by mapping (a value that is not a mapping replaces)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def write_workspace(folder: Path, changes: dict[str, Any] | None = None, replace: bool = False) -> dict:
    """params.yaml in `folder`: the committed defaults with `changes` merged in (with replace=True,
    `changes` replaces whole sections, as `sources` usually should), and the dvc.yaml it makes.
    Returns the params."""
    params = copy.deepcopy(DEFAULT_PARAMS)
    if replace:
        params.update(changes or {})
    else:
        deep_update(params, changes or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "dvc.yaml").write_text(render(params))
    return params


def run_stage(name: str, *args: str) -> None:
    """Run stages/NAME.py in this process, in the current directory, as `python stages/NAME.py ARGS`
    would; a ChatmillError ends it with SystemExit(1) and one line on stderr."""
    argv = sys.argv
    sys.argv = [str(ROOT / "stages" / f"{name}.py"), *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv


def make_conversation(
    cid: str,
    source: str = "logs",
    bot_replies=("Hello there, traveller.",),
    user="Hi.",
    bot_name="Mira",
    persona="A kind innkeeper.",
) -> dict:
    turns = []
    for reply in bot_replies:
        turns.append({"role": "user", "name": "You", "text": user})
        turns.append({"role": "bot", "name": bot_name, "text": reply})
    return {
        "id": cid,
        "source": source,
        "bot_name": bot_name,
        "persona": persona,
        "scenario": "",
        "turns": turns,
        "meta": "{}",
    }


@pytest.fixture
def conversation_factory():
    return make_conversation


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE trained in a second on a few sentences, with the special tokens chatmill uses."""
    from chatmill.modeling import train_tokenizer

    texts = [
        "Mira's Persona: A kind innkeeper.\nScenario: \n<START>\nYou: Hi.\nMira: Hello there, traveller."
    ] * 20
    return train_tokenizer(iter(texts), vocab_size=300)


# model.scratch sizes of the smallest model the tests build (with tiny_tokenizer's vocabulary)
TINY_SCRATCH = {
    "vocab_size": 300,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


@pytest.fixture
def tiny_scratch() -> dict:
    return dict(TINY_SCRATCH)


# --- Tokenizers of the families real base models use, built locally (no download) ----------------

SAMPLE_TEXTS = [
    "Mira's Persona: A kind innkeeper who keeps the harbour inn.\nScenario: A stormy night.\n<START>\n",
    "You: Hello there! Any rooms free tonight?\n",
    "Mira: Of course, traveller. *She wipes the counter.* Two silver a night, breakfast included.\n",
    "def add(a, b):\n    return a + b\n\n```python\nprint(add(1, 2))\n```\n",
    "  - item one\n  - item two\n| a | b |\n|---|---|\n",
    "Café, naïve, 東京, emoji 🎉, tabs\tand  double  spaces.\n",
]


def gpt2_bpe_tokenizer(vocab_size: int = 400):
    """GPT-2's kind (GPT-J, GPT-NeoX/Pythia): byte-level BPE, one special token <|endoftext|> that is
    BOS and EOS, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SAMPLE_TEXTS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def sentencepiece_tokenizer(vocab_size: int = 400, metaspace: bool = False):
    """Llama's and Mistral's kind: SentencePiece BPE with byte fallback, spaces as "▁" and a dummy
    "▁" before a text's first word, <s> and </s>, no pad token. Llama 2 writes the dummy prefix as a
    Prepend normalizer; newer ones (metaspace=True) as a Metaspace pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Trained on words, as SentencePiece is (no token spans a "▁" inside it); then used unsplit, as
    # the tokenizers converted from SentencePiece are.
    if metaspace:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 256,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        show_progress=False,
    )
    backend.train_from_iterator(SAMPLE_TEXTS * 20, trainer=trainer)
    if metaspace:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def qwen_tokenizer(vocab_size: int = 400):
    """Qwen2's kind: byte-level BPE after Qwen's split pattern (digits one by one), special tokens
    <|endoftext|> (EOS and pad), <|im_start|>, <|im_end|>; no BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SAMPLE_TEXTS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


TOKENIZER_FAMILIES = {
    "gpt2-bpe": gpt2_bpe_tokenizer,
    "sentencepiece-prepend": sentencepiece_tokenizer,
    "sentencepiece-metaspace": lambda: sentencepiece_tokenizer(metaspace=True),
    "qwen": qwen_tokenizer,
}


# --- Tiny models of the architectures base models come in, built from config (no download) -------

ARCHITECTURES = ("gptj", "gpt-neox", "llama", "mistral", "qwen2")


def tiny_base(architecture: str, tokenizer, max_positions: int = 256, seed: int = 0, **overrides):
    """A two-layer model of the architecture, sized for tests, with the tokenizer's special tokens."""
    import torch
    import transformers

    tokens = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    common = {"vocab_size": len(tokenizer), "tie_word_embeddings": False, **tokens}
    llama_like = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
    }
    configs = {
        "gptj": transformers.GPTJConfig(
            n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=max_positions
        ),
        "gpt-neox": transformers.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.25,
            max_position_embeddings=max_positions,
        ),
        "llama": transformers.LlamaConfig(**llama_like),
        "mistral": transformers.MistralConfig(**llama_like, sliding_window=None),
        "qwen2": transformers.Qwen2Config(**llama_like),
    }
    config = configs[architecture]
    for key, value in {**common, **overrides}.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


# --- A real browser for the web pages (the chat, the rating page) ---------------------------------


def free_port() -> int:
    """A port nothing listens on now, for a test's own server on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven through chromedriver (Debian's chromium and chromium-driver; selenium
    finds neither by itself here, so both are named). The pages' only real-browser proof: without the
    browser the tests fail, saying how to get it; CHATMILL_SKIP_BROWSER=1 skips them on purpose."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        if os.environ.get("CHATMILL_SKIP_BROWSER", "") not in ("", "0"):
            pytest.skip(
                "CHATMILL_SKIP_BROWSER is set and Chromium or chromedriver is missing: no browser check ran"
            )
        pytest.fail(
            "Chromium and chromedriver are needed to test the web pages: apt-get install chromium "
            "chromium-driver (.ci/run does), or set CHATMILL_SKIP_BROWSER=1 to skip them on purpose",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.set_page_load_timeout(60)
    yield session
    session.quit()
