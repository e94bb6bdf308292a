"""The Pygmalion prompt format, at text and token level.

    {bot}'s Persona: {persona}
    Scenario: {scenario}
    <START>
    You: {user turn}
    {bot}: {bot turn}</s>

A bot turn's text and the end-of-turn marker (the tokenizer's EOS token) are the supervised
tokens; everything else is context. Training (shard) and generation (sample-eval, chat) both
encode through `encode_segments`, so the model sees identical token boundaries in both.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

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

    def __iadd__(self, other: "Encoded") -> "Encoded":
        self.ids += other.ids
        self.supervised += other.supervised
        return self


def header_text(bot_name: str, persona: str, scenario: str) -> str:
    return f"{bot_name}'s Persona: {persona}\nScenario: {scenario}\n{START}\n"


EOS = None  # stands for the tokenizer's end-of-turn (EOS) token in a segment list
Segment = tuple[str | None, bool]  # (text or EOS, supervised)


def header_segments(conversation: Conversation) -> list[Segment]:
    return [(header_text(conversation["bot_name"], conversation["persona"], conversation["scenario"]), False)]


def bot_prefix(bot_name: str) -> str:
    return f"{bot_name}:"


def turn_segments(turn: Turn, bot_name: str) -> list[Segment]:
    """One turn as it appears in the prompt, newline included. Each segment is tokenized on its
    own, so token boundaries are the same whether a turn is encoded alone or in a batch."""
    if turn["role"] == "bot":
        return [(bot_prefix(bot_name), False), (" " + turn["text"], True), (EOS, True), ("\n", False)]
    if turn["role"] == "user":
        return [(f"{USER_NAME}: {turn['text']}\n", False)]
    return [(f"{turn['text']}\n", False)]


def encode_segments(tokenizer, pieces: Sequence[Sequence[Segment]]) -> list[Encoded]:
    """Encode many segment lists with one batched tokenizer call; one Encoded per list. Each distinct
    text is tokenized once: segments repeat ("{bot}:" and the newline in every bot turn, a bot's
    greeting in most of its conversations, short replies such as "*nods*")."""
    texts = list(dict.fromkeys(text for segments in pieces for text, _ in segments if text))
    token_ids = {EOS: [tokenizer.eos_token_id], "": []}
    if texts:
        ids_per_text = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        token_ids.update(zip(texts, ids_per_text, strict=True))
    result = []
    for segments in pieces:
        encoded = Encoded([], [])
        for text, supervised in segments:
            ids = token_ids[text]
            encoded.ids += ids
            encoded.supervised += [supervised] * len(ids)
        result.append(encoded)
    return result


def encode_conversations(
    tokenizer, conversations: Sequence[Conversation]
) -> list[tuple[Encoded, list[Encoded]]]:
    """Each conversation's header and turns, all encoded in one batched call."""
    pieces = []
    for conversation in conversations:
        pieces.append(header_segments(conversation))
        pieces += [turn_segments(turn, conversation["bot_name"]) for turn in conversation["turns"]]
    encoded = iter(encode_segments(tokenizer, pieces))
    return [(next(encoded), list(islice(encoded, len(c["turns"])))) for c in conversations]


def encode_conversation(tokenizer, conversation: Conversation) -> tuple[Encoded, list[Encoded]]:
    """The header and each turn, encoded in one batched call."""
    return encode_conversations(tokenizer, [conversation])[0]


def encode_prompt(tokenizer, conversation: Conversation, turns: Sequence[Turn]) -> list[int]:
    """Context for generating the bot's next reply: header, the given turns, then "{bot}:"."""
    pieces = [header_segments(conversation)]
    pieces += [turn_segments(turn, conversation["bot_name"]) for turn in turns]
    pieces.append([(bot_prefix(conversation["bot_name"]), False)])
    return [token for encoded in encode_segments(tokenizer, pieces) for token in encoded.ids]


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


# Messages rendered as `render_text` renders a conversation: the first "system" message is the persona,
# later ones are narration lines, "user" is "You: ...", "assistant" is "{bot}: ...</s>". The reply and
# its EOS are marked {% generation %}: the tokens training computes the loss on.
_CHAT_TEMPLATE = r"""{%- set bot = bot_name | default(@DEFAULT_BOT@) -%}
{%- if messages and messages[0]["role"] == "system" -%}
    {%- set persona, turns = messages[0]["content"], messages[1:] -%}
{%- else -%}
    {%- set persona, turns = "", messages -%}
{%- endif -%}
{{- bot ~ "'s Persona: " ~ persona ~ "\nScenario: " ~ scenario | default("") ~ "\n" ~ @START@ ~ "\n" -}}
{%- for message in turns -%}
    {%- if message["role"] == "user" -%}
        {{- @USER@ ~ ": " ~ message["content"] ~ "\n" -}}
    {%- elif message["role"] == "assistant" -%}
        {{- bot ~ ":" -}}
        {%- generation -%}{{- " " ~ message["content"] ~ eos_token -}}{%- endgeneration -%}
        {{- "\n" -}}
    {%- else -%}
        {{- message["content"] ~ "\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- bot ~ ":" -}}
{%- endif -%}
"""


def chat_template(default_bot_name: str) -> str:
    """A Jinja chat template (`tokenizer.chat_template`) for this format. The bot's name and the
    scenario are template variables: `apply_chat_template(messages, bot_name="Mira", scenario="...")`;
    the name defaults to `default_bot_name`, the scenario to empty."""
    template = _CHAT_TEMPLATE
    values = {"@DEFAULT_BOT@": default_bot_name, "@USER@": USER_NAME, "@START@": START}
    for placeholder, value in values.items():
        template = template.replace(placeholder, json.dumps(value))  # a JSON string is a Jinja string literal
    return template
