"""The Pygmalion prompt format, at text and token level.

    {bot}'s Persona: {persona}
    Scenario: {scenario}
    <START>
    You: {user turn}
    {bot}: {bot turn}</s>

A bot turn's text and the end-of-turn marker (the tokenizer's EOS token) are the supervised
tokens; everything else is context. Training (shard) and generation (sample-eval, chat) both
encode through `encode_segments`, so the model sees identical token boundaries in both. Each
segment is encoded as it stands in the text: the first as a text's start, the others without the
space a SentencePiece tokenizer (Llama, Mistral) puts before a text's first word, so that the ids
decode to exactly the text of the format, for byte-level and SentencePiece tokenizers alike.
"""

import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

from tokenizers import Tokenizer

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


class Segment(NamedTuple):
    """A piece of a prompt that is tokenized on its own, so that its tokens are the same wherever
    it stands (alone or in a batch, in training and at generation)."""

    text: str | None  # None: the tokenizer's end-of-turn (EOS) token
    supervised: bool
    starts_text: bool = False  # the prompt's first segment: encoded as a text's start is


def header_segments(conversation: Conversation) -> list[Segment]:
    header = header_text(conversation["bot_name"], conversation["persona"], conversation["scenario"])
    return [Segment(header, False, starts_text=True)]


def bot_prefix(bot_name: str) -> str:
    return f"{bot_name}:"


def turn_segments(turn: Turn, bot_name: str) -> list[Segment]:
    """One turn as it appears in the prompt, newline included."""
    if turn["role"] == "bot":
        return [
            Segment(bot_prefix(bot_name), False),
            Segment(" " + turn["text"], True),
            Segment(None, True),
            Segment("\n", False),
        ]
    if turn["role"] == "user":
        return [Segment(f"{USER_NAME}: {turn['text']}\n", False)]
    return [Segment(f"{turn['text']}\n", False)]


# What a tokenizer adds before the first word of a text, where its pre-tokenizer or normalizer does:
# SentencePiece's dummy prefix "▁" (Llama, Mistral), a byte-level leading space. In the middle of
# a text there is no such space, so a segment after the first is encoded without it.
_mid_text_backends: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _without_text_start(component: Any) -> bool:
    """Switch off, in place, a tokenizer.json normalizer or pre-tokenizer's prefix at the start of a
    text; True if there was one. Sequences are searched; a Prepend normalizer is emptied."""
    if isinstance(component, dict):
        kind = component.get("type")
        if kind == "Sequence":
            parts = component.get("normalizers") or component.get("pretokenizers") or []
            return any([_without_text_start(part) for part in parts])
        if kind == "Prepend":
            component["prepend"], had = "", bool(component.get("prepend"))
            return had
        if kind == "Metaspace" and component.get("prepend_scheme", "always") != "never":
            component["prepend_scheme"] = "never"
            return True
        if kind == "ByteLevel" and component.get("add_prefix_space"):
            component["add_prefix_space"] = False
            return True
    return False


def mid_text_backend(tokenizer) -> Tokenizer | None:
    """The tokenizer's fast backend as it encodes text in the middle of a document, or None when
    that is how it encodes any text (or it has no fast backend)."""
    if tokenizer not in _mid_text_backends:
        backend, mid_text = getattr(tokenizer, "backend_tokenizer", None), None
        if backend is not None:
            spec = json.loads(backend.to_str())
            changed = [_without_text_start(spec.get(part)) for part in ("normalizer", "pre_tokenizer")]
            mid_text = Tokenizer.from_str(json.dumps(spec)) if any(changed) else None
        _mid_text_backends[tokenizer] = mid_text
    return _mid_text_backends[tokenizer]


def encode_texts(tokenizer, texts: list[str], starts_text: bool) -> list[list[int]]:
    """Token ids of each text, as it is encoded at a text's start or in the middle of one."""
    if not texts:
        return []
    mid_text = None if starts_text else mid_text_backend(tokenizer)
    if mid_text is not None:
        return [encoding.ids for encoding in mid_text.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def encode_segments(tokenizer, pieces: Sequence[Sequence[Segment]]) -> list[Encoded]:
    """Encode many segment lists with one batched tokenizer call (two when some start a text); one
    Encoded per list. Each distinct text is tokenized once: segments repeat ("{bot}:" and the newline
    in every bot turn, a bot's greeting in most of its conversations, short replies such as "*nods*")."""
    distinct = dict.fromkeys((s.text, s.starts_text) for segments in pieces for s in segments if s.text)
    token_ids: dict[tuple[str | None, bool], list[int]] = {(None, False): [tokenizer.eos_token_id]}
    for starts_text in (False, True):
        texts = [text for text, start in distinct if start == starts_text]
        token_ids.update(
            zip(
                ((text, starts_text) for text in texts),
                encode_texts(tokenizer, texts, starts_text),
                strict=True,
            )
        )
    result = []
    for segments in pieces:
        encoded = Encoded([], [])
        for segment in segments:
            ids = token_ids[(segment.text, segment.starts_text)] if segment.text != "" else []
            encoded.ids += ids
            encoded.supervised += [segment.supervised] * len(ids)
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
    pieces.append([Segment(bot_prefix(conversation["bot_name"]), False)])
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
