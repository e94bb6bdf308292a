"""The Pygmalion prompt format, at text and token level.

    {bot}'s Persona: {persona}
    Scenario: {scenario}
    <START>
    You: {user turn}
    {bot}: {bot turn}</s>

A bot turn's text and the end-of-turn marker (the tokenizer's EOS token) are the supervised
tokens; everything else is context. Training (shard) and generation (sample-eval, chat) both
encode through `encode_turn`, so the model sees identical token boundaries in both.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from chatmill.schema import USER_NAME, Conversation, Turn

START = "<START>"


@dataclass
class Encoded:
    """Token ids with, per token, whether the loss is computed on it."""

    ids: list[int]
    supervised: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: "Encoded") -> "Encoded":
        return Encoded(self.ids + other.ids, self.supervised + other.supervised)


def header_text(bot_name: str, persona: str, scenario: str) -> str:
    return f"{bot_name}'s Persona: {persona}\nScenario: {scenario}\n{START}\n"


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def encode_header(tokenizer, conversation: Conversation) -> Encoded:
    text = header_text(conversation["bot_name"], conversation["persona"], conversation["scenario"])
    ids = _encode(tokenizer, text)
    return Encoded(ids, [False] * len(ids))


def bot_prefix(bot_name: str) -> str:
    return f"{bot_name}:"


def encode_bot_prefix(tokenizer, bot_name: str) -> Encoded:
    ids = _encode(tokenizer, bot_prefix(bot_name))
    return Encoded(ids, [False] * len(ids))


def encode_turn(tokenizer, turn: Turn, bot_name: str) -> Encoded:
    """One turn as it appears in the prompt, newline included."""
    newline = _encode(tokenizer, "\n")
    if turn["role"] == "bot":
        prefix = encode_bot_prefix(tokenizer, bot_name)
        reply = _encode(tokenizer, " " + turn["text"]) + [tokenizer.eos_token_id]
        return prefix + Encoded(reply, [True] * len(reply)) + Encoded(newline, [False] * len(newline))
    line = f"{USER_NAME}: {turn['text']}\n" if turn["role"] == "user" else f"{turn['text']}\n"
    ids = _encode(tokenizer, line)
    return Encoded(ids, [False] * len(ids))


def encode_prompt(tokenizer, conversation: Conversation, turns: Sequence[Turn]) -> list[int]:
    """Context for generating the bot's next reply: header, the given turns, then "{bot}:"."""
    encoded = encode_header(tokenizer, conversation)
    for turn in turns:
        encoded = encoded + encode_turn(tokenizer, turn, conversation["bot_name"])
    return (encoded + encode_bot_prefix(tokenizer, conversation["bot_name"])).ids


def render_text(conversation: Conversation, eos_token: str) -> str:
    """The whole conversation as one string (for reading and for the tokenizer's training corpus)."""
    lines = [header_text(conversation["bot_name"], conversation["persona"], conversation["scenario"])]
    for turn in conversation["turns"]:
        if turn["role"] == "bot":
            lines.append(f"{bot_prefix(conversation['bot_name'])} {turn['text']}{eos_token}\n")
        elif turn["role"] == "user":
            lines.append(f"{USER_NAME}: {turn['text']}\n")
        else:
            lines.append(f"{turn['text']}\n")
    return "".join(lines)
