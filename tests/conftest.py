"""Shared test helpers: conversations, a tiny tokenizer, and stage workspaces as a user's checkout
has them (params.yaml and the dvc.yaml it makes), where a stage script runs as DVC runs it."""

import copy
import runpy
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


@pytest.fixture
def tiny_scratch() -> dict:
    """model.scratch sizes of the smallest model the tests build (with tiny_tokenizer's vocabulary)."""
    return {
        "vocab_size": 300,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
