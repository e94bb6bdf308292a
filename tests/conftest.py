"""Shared test helpers. Stage scripts live in stages/ (not a package); tests import them by name."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))


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
    import base_model

    texts = [
        "Mira's Persona: A kind innkeeper.\nScenario: \n<START>\nYou: Hi.\nMira: Hello there, traveller."
    ] * 20
    return base_model.train_tokenizer(iter(texts), vocab_size=300)


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
