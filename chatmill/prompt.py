"""Prompt formats (`prompt.format`), at text and token level.

    pygmalion  {bot}'s Persona: {persona}          chatml  <|im_start|>system
               Scenario: {scenario}                        {bot}'s Persona: {persona}<|im_end|>
               <START>                                     <|im_start|>user
               You: {user turn}                            {user turn}<|im_end|>
               {bot}: {bot turn}</s>                       <|im_start|>assistant
                                                           {bot turn}<|im_end|>
    base       the base model's own chat template (tokenizer.apply_chat_template)

A format writes a conversation as pieces of segments: the header (the persona), then one piece per
turn (per message, for `base`), where a long conversation may be cut into windows. A bot turn's
text and its end-of-turn marker are the supervised tokens; everything else is context. Training
(shard) and generation (sample-eval, chat) both encode through `encode_segments`, so the model sees
identical token boundaries in both. Each segment is encoded as it stands in the text: the first as
a text's start, the others without the space a SentencePiece tokenizer (Llama, Mistral) puts before
a text's first word, so that the ids decode to exactly the text of the format, for byte-level and
SentencePiece tokenizers alike.

base-model records the format with the tokenizer (tokenizer_config.json) and gives it the format's
chat template; every later model folder copies that tokenizer, so chat, compare and release read the
format from the model itself. A new format is a PromptFormat subclass and its line in FORMATS.
"""

import json
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from jinja2 import TemplateError
from tokenizers import AddedToken, Tokenizer

from chatmill.errors import ChatmillError
from chatmill.params import require
from chatmill.schema import USER_NAME, Conversation, Turn

if TYPE_CHECKING:  # transformers is not imported where no tokenizer is used (mix by conversations)
    from transformers import PreTrainedTokenizerBase

START = "<START>"
FORMAT_KEY = "chatmill_prompt_format"  # where tokenizer_config.json records the format
DEFAULT_FORMAT = "pygmalion"  # what a tokenizer without a record was trained with (chatmill before formats)


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


class Segment(NamedTuple):
    """A piece of a prompt that is tokenized on its own, so that its tokens are the same wherever
    it stands (alone or in a batch, in training and at generation)."""

    text: str | None  # None: the format's end-of-turn token
    supervised: bool
    starts_text: bool = False  # the prompt's first segment: encoded as a text's start is


Piece = list[Segment]


@dataclass(frozen=True)
class Stops:
    """Where a generated reply ends: at a token that ends the turn (cleanly), at a token that starts
    another turn, or where the text of the user's next turn starts (the reply ran on)."""

    end_ids: tuple[int, ...]
    turn_ids: tuple[int, ...] = ()
    turn_strings: tuple[str, ...] = ()


class Refused(ChatmillError):
    """A conversation the format cannot write (prompt.format: base, a template that refuses it)."""


def turn_messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """Turns as chat messages: the bot's are the assistant's; narration stays a system message."""
    roles = {"user": "user", "bot": "assistant", "system": "system"}
    return [{"role": roles[turn["role"]], "content": turn["text"]} for turn in turns]


def persona_header(conversation: Conversation) -> str:
    """The persona as one system message (chatml, base): the Pygmalion header without <START>."""
    header = f"{conversation['bot_name']}'s Persona: {conversation['persona']}"
    return header + (f"\nScenario: {conversation['scenario']}" if conversation["scenario"] else "")


class PromptFormat:
    """One prompt format. `tokenizer` is the one the format encodes for; it may be None where only
    text without a tokenizer is asked for (corpus_text, to train the scratch tokenizer)."""

    name: ClassVar[str]
    special_tokens: ClassVar[tuple[str, ...]] = ()  # its markers, each of which must be one token

    def __init__(self, tokenizer: "PreTrainedTokenizerBase | None") -> None:
        # Held weakly: prompt_format keeps each tokenizer's format in a WeakKeyDictionary, whose entry
        # must not keep its tokenizer alive.
        self._tokenizer = weakref.ref(tokenizer) if tokenizer is not None else lambda: None

    @property
    def tokenizer(self) -> "PreTrainedTokenizerBase | None":
        return self._tokenizer()

    def pieces(self, conversation: Conversation, turns: Sequence[Turn], reply: bool = False) -> list[Piece]:
        """The header's segments, then each turn's; with `reply`, last what starts the bot's next
        reply (the generation prefix)."""
        raise NotImplementedError

    @property
    def end_of_turn_id(self) -> int | None:
        """The token of a `None` segment: what ends a bot turn."""
        return None

    @property
    def stops(self) -> Stops:
        raise NotImplementedError

    def chat_template(self, default_bot_name: str) -> str:
        """The Jinja chat template (`tokenizer.chat_template`) that renders messages to these tokens."""
        raise NotImplementedError

    def messages(self, conversation: Conversation) -> tuple[list[dict[str, str]], dict[str, str]]:
        """The conversation as chat messages and template variables for `apply_chat_template`."""
        raise NotImplementedError

    def describe(self, default_bot_name: str) -> str:
        """How the chat template takes messages, where the loss was and where a reply ends (markdown,
        for the model card)."""
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def render_text(self, conversation: Conversation) -> str:
        """The whole conversation as one string, special tokens written out (to read, to count)."""
        end = self.token_text(self.end_of_turn_id) if self.end_of_turn_id is not None else ""
        return "".join(
            end if s.text is None else s.text
            for piece in self.conversation_pieces(conversation)
            for s in piece
        )

    def corpus_text(self, conversation: Conversation) -> str:
        """The conversation's text without the format's special tokens: what the scratch tokenizer is
        trained on (its trainer would learn the markers' characters as ordinary text)."""
        text = "".join(s.text or "" for piece in self.conversation_pieces(conversation) for s in piece)
        for token in self.special_tokens:
            text = text.replace(token, "")
        return text

    def conversation_pieces(self, conversation: Conversation) -> list[Piece]:
        return self.pieces(conversation, conversation["turns"])


# --- pygmalion -------------------------------------------------------------------------------------

# Messages rendered as the Pygmalion format renders a conversation: the first "system" message is the
# persona, later ones are narration lines, "user" is "You: ...", "assistant" is "{bot}: ...</s>". The
# reply and its EOS are marked {% generation %}: the tokens training computes the loss on.
_PYGMALION_TEMPLATE = r"""{%- set bot = bot_name | default(@DEFAULT_BOT@) -%}
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


class Pygmalion(PromptFormat):
    """The logbook's format; the end of a bot turn is the tokenizer's EOS."""

    name = "pygmalion"

    def pieces(self, conversation: Conversation, turns: Sequence[Turn], reply: bool = False) -> list[Piece]:
        bot = conversation["bot_name"]
        header = (
            f"{bot}'s Persona: {conversation['persona']}\nScenario: {conversation['scenario']}\n{START}\n"
        )
        pieces = [[Segment(header, False, starts_text=True)]]
        for turn in turns:
            if turn["role"] == "bot":
                reply_segments = [Segment(" " + turn["text"], True), Segment(None, True)]
                pieces.append([Segment(f"{bot}:", False), *reply_segments, Segment("\n", False)])
            elif turn["role"] == "user":
                pieces.append([Segment(f"{USER_NAME}: {turn['text']}\n", False)])
            else:
                pieces.append([Segment(f"{turn['text']}\n", False)])
        if reply:
            pieces.append([Segment(f"{bot}:", False)])
        return pieces

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def stops(self) -> Stops:
        return Stops(end_ids=(self.tokenizer.eos_token_id,), turn_strings=(f"\n{USER_NAME}:",))

    def chat_template(self, default_bot_name: str) -> str:
        """The bot's name and the scenario are template variables: `apply_chat_template(messages,
        bot_name="Mira", scenario="...")`; the name defaults to `default_bot_name`, the scenario to empty."""
        template = _PYGMALION_TEMPLATE
        values = {"@DEFAULT_BOT@": default_bot_name, "@USER@": USER_NAME, "@START@": START}
        for placeholder, value in values.items():
            template = template.replace(placeholder, json.dumps(value))  # a JSON string is a Jinja literal
        return template

    def messages(self, conversation: Conversation) -> tuple[list[dict[str, str]], dict[str, str]]:
        messages = [
            {"role": "system", "content": conversation["persona"]},
            *turn_messages(conversation["turns"]),
        ]
        return messages, {"bot_name": conversation["bot_name"], "scenario": conversation["scenario"]}

    def describe(self, default_bot_name: str) -> str:
        eos = self.tokenizer.eos_token
        return f"""- `system`: the first system message is the persona; later ones are narration lines, as
  written;
- `user`: a `{USER_NAME}: ...` line;
- `assistant`: a `{{bot}}: ...{eos}` line, where `{{bot}}` is the `bot_name` template variable
  (default **{default_bot_name}**); `scenario` is one too. Training computed the loss on the reply and
  its `{eos}` only; generation stops at `{eos}`, or at a `{USER_NAME}:` line the model starts."""


# --- chatml ----------------------------------------------------------------------------------------

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# Every message is "<|im_start|>{role}\n{content}<|im_end|>\n"; an assistant's content and its
# <|im_end|> are marked {% generation %}, the tokens training computes the loss on.
_CHATML_TEMPLATE = r"""{%- for message in messages -%}
    {%- if message["role"] == "assistant" -%}
        {{- "<|im_start|>assistant\n" -}}
        {%- generation -%}{{- message["content"] ~ "<|im_end|>" -}}{%- endgeneration -%}
        {{- "\n" -}}
    {%- else -%}
        {{- "<|im_start|>" ~ message["role"] ~ "\n" ~ message["content"] ~ "<|im_end|>\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
{%- endif -%}
"""


class ChatML(PromptFormat):
    """ChatML (OpenAI's, Qwen's): the persona is the system message; narration is a system message
    where it stands. Each segment starts after a special token, so none is a text's start."""

    name = "chatml"
    special_tokens = (IM_START, IM_END)

    def pieces(self, conversation: Conversation, turns: Sequence[Turn], reply: bool = False) -> list[Piece]:
        pieces = [[Segment(f"{IM_START}system\n{persona_header(conversation)}{IM_END}\n", False)]]
        for turn in turns:
            if turn["role"] == "bot":
                reply_segments = [Segment(turn["text"], True), Segment(None, True)]
                pieces.append(
                    [Segment(f"{IM_START}assistant\n", False), *reply_segments, Segment("\n", False)]
                )
            else:  # a user or system (narration) message: the roles have the same names
                pieces.append([Segment(f"{IM_START}{turn['role']}\n{turn['text']}{IM_END}\n", False)])
        if reply:
            pieces.append([Segment(f"{IM_START}assistant\n", False)])
        return pieces

    @property
    def end_of_turn_id(self) -> int:
        return special_token_id(self.tokenizer, IM_END)

    @property
    def stops(self) -> Stops:
        ends = dict.fromkeys((self.end_of_turn_id, self.tokenizer.eos_token_id))  # in order, once each
        return Stops(end_ids=tuple(ends), turn_ids=(special_token_id(self.tokenizer, IM_START),))

    def chat_template(self, default_bot_name: str) -> str:
        return _CHATML_TEMPLATE

    def messages(self, conversation: Conversation) -> tuple[list[dict[str, str]], dict[str, str]]:
        system = {"role": "system", "content": persona_header(conversation)}
        return [system, *turn_messages(conversation["turns"])], {}

    def describe(self, default_bot_name: str) -> str:
        return f"""- `system`: the first system message is the persona (`{{bot}}'s Persona: ...`, then a
  `Scenario: ...` line when there is one); later ones are narration, as written;
- `user`, `assistant`: as written. Training computed the loss on each reply and its `{IM_END}` only;
  generation stops at `{IM_END}` (or at an `{IM_START}` the model starts)."""


# --- base ------------------------------------------------------------------------------------------

# The conversation the template is tried on when the format is made: does it take a system message,
# and one after which the bot speaks first (PIPPA's greetings)? What starts a user turn, what ends
# an assistant turn?
_PROBE_TEXTS = ("chatmill-persona", "chatmill-greeting", "chatmill-user", "chatmill-reply")
_PROBE = Conversation(
    id="probe",
    source="probe",
    bot_name="Bot",
    persona=_PROBE_TEXTS[0],
    scenario="",
    turns=[
        Turn(role="bot", name="Bot", text=_PROBE_TEXTS[1]),
        Turn(role="user", name=USER_NAME, text=_PROBE_TEXTS[2]),
        Turn(role="bot", name="Bot", text=_PROBE_TEXTS[3]),
    ],
    meta="{}",
)


class BaseTemplate(PromptFormat):
    """The base model's own chat template. The persona header is a system message; where the template
    refuses one (Gemma's, Mistral's first ones), or refuses the bot speaking right after it (Llama
    2's), the header opens the first user message instead (a message of its own when the bot speaks
    first). Narration goes with the user's messages, and consecutive turns of one side are one
    message (joined by a newline), so that user and assistant alternate as most templates demand.

    Each message's tokens are what the template adds when the message is added, found by rendering
    the conversation one message at a time; an assistant message's are split into the generation
    prompt (add_generation_prompt's text, context), the reply with the end-of-turn marker the
    template writes after it (supervised), and trailing whitespace (context). A conversation the
    template refuses, or whose rendering changes what came before when a message is added, is
    Refused (shard drops it with the reason `chat_template_refused`); one the template cannot render
    at all is an error when the format is made."""

    name = "base"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase | None") -> None:
        super().__init__(tokenizer)
        where = getattr(tokenizer, "name_or_path", "") or "the base model"
        if tokenizer is None or not tokenizer.chat_template:
            raise ChatmillError(
                f"params.yaml: prompt.format: base uses the base model's chat template, but the tokenizer of "
                f"{where} has none; set prompt.format: chatml or pygmalion"
            )
        self.system_message = True  # until the template is seen to refuse it
        self.system_message = self._takes(_PROBE)
        try:
            self._stops = self.probe_stops()
        except Refused as refusal:
            raise ChatmillError(
                f"params.yaml: prompt.format: base cannot use the chat template of {where}: {refusal}; "
                "set prompt.format: chatml or pygmalion"
            ) from None

    def _takes(self, conversation: Conversation) -> bool:
        """Whether the template renders the persona as a system message, with the bot speaking first
        and with the user speaking first."""
        for turns in (conversation["turns"], conversation["turns"][1:]):
            try:
                header = self.pieces(conversation, turns)[0]
            except Refused:
                return False
            if conversation["persona"] not in "".join(segment.text for segment in header):
                return False  # a template that drops the system message
        return True

    def layout(self, conversation: Conversation, turns: Sequence[Turn]) -> list[dict[str, str]]:
        merged: list[dict[str, str]] = []
        for turn in turns:
            role = "assistant" if turn["role"] == "bot" else "user"
            if merged and merged[-1]["role"] == role:
                merged[-1]["content"] += "\n" + turn["text"]
            else:
                merged.append({"role": role, "content": turn["text"]})
        header = persona_header(conversation)
        if self.system_message:
            return [{"role": "system", "content": header}, *merged]
        if merged and merged[0]["role"] == "user":
            return [{"role": "user", "content": f"{header}\n\n{merged[0]['content']}"}, *merged[1:]]
        return [{"role": "user", "content": header}, *merged]

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except TemplateError as error:
            raise Refused(f"the chat template refuses it ({str(error).splitlines()[0]})") from None

    def context(self, text: str, starts_text: bool) -> Piece:
        """Unsupervised text. At the text's start, only what comes before its first special token is
        encoded as a text's start: after a special token (BOS, <|start_header_id|>) a text is in the
        middle of the document, as every later piece is, so no dummy prefix goes there."""
        if not starts_text:
            return [Segment(text, False)]
        specials = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
        lead = min((text.index(token) for token in specials if token in text), default=len(text))
        return [Segment(text[:lead], False, starts_text=True), Segment(text[lead:], False)]

    @staticmethod
    def extend(before: str, text: str, count: int) -> str:
        if not text.startswith(before):
            raise Refused(
                f"the chat template's rendering of {count} messages does not begin with its rendering of "
                "the messages before, so the tokens of each turn cannot be told apart"
            )
        return text

    def pieces(self, conversation: Conversation, turns: Sequence[Turn], reply: bool = False) -> list[Piece]:
        messages = self.layout(conversation, turns)
        pieces: list[Piece] = []
        before = ""
        for count, message in enumerate(messages, start=1):
            if message["role"] == "assistant":
                prompt = self.extend(before, self.render(messages[: count - 1], True), count - 1)
                text = self.extend(prompt, self.render(messages[:count]), count)
                body = text[len(prompt) :]
                supervised = body.rstrip()
                pieces.append(
                    [
                        Segment(prompt[len(before) :], False),
                        Segment(supervised, True),
                        Segment(body[len(supervised) :], False),
                    ]
                )
            else:
                text = self.extend(before, self.render(messages[:count]), count)
                pieces.append(self.context(text[len(before) :], starts_text=not before))
            before = text
        if reply:
            prompt = self.extend(before, self.render(messages, True), len(messages))
            pieces.append([Segment(prompt[len(before) :], False)])
        return pieces

    @property
    def stops(self) -> Stops:
        return self._stops

    def probe_stops(self) -> Stops:
        """From the probe conversation: the end-of-turn marker after a reply (when it is a special token)
        and what starts the user's turn after it (its first token when special, else its text)."""
        pieces = self.pieces(_PROBE, _PROBE["turns"], reply=True)[:-1]
        reply = next(segment.text for segment in pieces[-1] if segment.supervised)
        marker = reply.partition(_PROBE_TEXTS[3])[2].strip()  # "" where the template changed the reply
        opening, found, _ = "".join(segment.text for segment in pieces[-2]).partition(_PROBE_TEXTS[2])
        opening = opening.strip() if found else ""
        marker_token = self.special_token_at(marker, -1)
        marker_ids = [] if marker_token is None else [marker_token]
        ends = tuple(dict.fromkeys([*marker_ids, self.tokenizer.eos_token_id]))  # once each, in order
        turn_token = self.special_token_at(opening, 0)
        if turn_token is not None:
            return Stops(end_ids=ends, turn_ids=(turn_token,))
        return Stops(end_ids=ends, turn_strings=(opening,) if opening else ())

    def special_token_at(self, text: str, index: int) -> int | None:
        """The text's first (index 0) or last (-1) token when it is a special token written out there,
        such as <|im_start|> or <|eot_id|> (not a byte of SentencePiece's byte fallback)."""
        ids = encode_texts(self.tokenizer, [text], False)[0] if text else []
        added = self.tokenizer.added_tokens_decoder.get(ids[index]) if ids else None
        if added is None or not added.special:
            return None
        written = text.startswith(added.content) if index == 0 else text.endswith(added.content)
        return ids[index] if written else None

    def chat_template(self, default_bot_name: str) -> str:
        return self.tokenizer.chat_template

    def messages(self, conversation: Conversation) -> tuple[list[dict[str, str]], dict[str, str]]:
        return self.layout(conversation, conversation["turns"]), {}

    def describe(self, default_bot_name: str) -> str:
        persona = (
            "the system message"
            if self.system_message
            else "the start of the first user message (the template refuses system messages there)"
        )
        end = self.token_text(self.stops.end_ids[0])
        return f"""- the base model's own chat template: the persona (`{{bot}}'s Persona: ...`) is {persona};
  narration goes with the user's messages;
- training computed the loss on each reply and the end-of-turn marker the template writes after it
  (`{end}`) only; generation stops at `{end}`."""


FORMATS: dict[str, type[PromptFormat]] = {kind.name: kind for kind in (Pygmalion, ChatML, BaseTemplate)}


# --- The format of a tokenizer ---------------------------------------------------------------------

_formats: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def corpus_texts(conversations: Iterable[Conversation], name: str = DEFAULT_FORMAT) -> Iterator[str]:
    """The conversations as format `name` writes them, without its special tokens: what a scratch
    tokenizer is trained on."""
    form = FORMATS[name](None)
    return (form.corpus_text(conversation) for conversation in conversations)


def validate_format(section: dict[str, Any]) -> str:
    name = require(section, "format", "prompt", str)
    if name not in FORMATS:
        raise ChatmillError(f"params.yaml: prompt.format={name!r} must be one of {', '.join(FORMATS)}")
    return name


def recorded_format(tokenizer: "PreTrainedTokenizerBase") -> str:
    """The format the tokenizer was prepared for (base-model records it); pygmalion when none is."""
    name = tokenizer.init_kwargs.get(FORMAT_KEY, DEFAULT_FORMAT)
    if name not in FORMATS:
        raise ChatmillError(
            f"{tokenizer.name_or_path}: tokenizer_config.json has {FORMAT_KEY}={name!r}, not one of "
            f"{', '.join(FORMATS)}; rebuild it with `dvc repro base-model`"
        )
    return name


def prompt_format(tokenizer: "PreTrainedTokenizerBase") -> PromptFormat:
    """The tokenizer's format, made once per tokenizer (`base` tries the template out)."""
    if tokenizer not in _formats:
        _formats[tokenizer] = FORMATS[recorded_format(tokenizer)](tokenizer)
    return _formats[tokenizer]


def check_format(tokenizer: "PreTrainedTokenizerBase", expected: str, where: str, fix: str) -> PromptFormat:
    """The tokenizer's format, which must be the one params.yaml names."""
    recorded = recorded_format(tokenizer)
    if recorded != expected:
        raise ChatmillError(
            f"{where} was made for prompt.format: {recorded}, but params.yaml has prompt.format: "
            f"{expected}; {fix}"
        )
    return prompt_format(tokenizer)


def prepare_tokenizer(tokenizer: "PreTrainedTokenizerBase", name: str, default_bot_name: str) -> list[str]:
    """Make the tokenizer the format's (base-model): its markers added as special tokens where missing,
    the format recorded, and its chat template set. Returns the tokens added (the model's embeddings
    must then have room for them)."""
    added = tokenizer.get_added_vocab()
    missing = [token for token in FORMATS[name].special_tokens if token not in added]
    if missing:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in missing], True)
    tokenizer.init_kwargs[FORMAT_KEY] = name
    for cache in (_formats, _mid_text_backends):  # made for the tokenizer as it was
        cache.pop(tokenizer, None)
    tokenizer.chat_template = prompt_format(tokenizer).chat_template(default_bot_name)
    return missing


def special_token_id(tokenizer: "PreTrainedTokenizerBase", token: str) -> int:
    token_id = tokenizer.get_added_vocab().get(token)
    if token_id is None:
        raise ChatmillError(
            f"{tokenizer.name_or_path or 'the tokenizer'} has no special token {token}, which its prompt "
            "format needs; rebuild models/base with `dvc repro base-model`"
        )
    return token_id


# --- Tokens ----------------------------------------------------------------------------------------

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


def exact_backend(tokenizer) -> Tokenizer | None:
    """The tokenizer's fast backend, set as `tokenizer(texts, add_special_tokens=False)` sets it before
    its own call (no truncation or padding; special tokens split as the tokenizer says), so that
    `encode_batch_fast` on it gives the same ids; None for a tokenizer without one, or whose class
    encodes its own way. transformers asks the backend for offsets and attention masks and converts
    every encoding to Python lists; `encode_batch_fast` computes no offsets and builds only the ids."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus:
        return None
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend


def encode_texts(tokenizer, texts: list[str], starts_text: bool) -> list[list[int]]:
    """Token ids of each text, as it is encoded at a text's start or in the middle of one."""
    if not texts:
        return []
    backend = (None if starts_text else mid_text_backend(tokenizer)) or exact_backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def encode_segments(
    tokenizer, pieces: Sequence[Sequence[Segment]], end_of_turn_id: int | None
) -> list[Encoded]:
    """Encode many segment lists with one batched tokenizer call (two when some start a text); one
    Encoded per list. Each distinct text is tokenized once: segments repeat ("{bot}:" and the newline
    in every bot turn, a bot's greeting in most of its conversations, short replies such as "*nods*")."""
    distinct = dict.fromkeys((s.text, s.starts_text) for segments in pieces for s in segments if s.text)
    token_ids: dict[tuple[str | None, bool], list[int]] = {(None, False): [end_of_turn_id]}
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
        ids: list[int] = []
        supervised: list[bool] = []
        for text, is_supervised, starts_text in segments:  # unpacked: a field lookup costs more
            if text != "":
                segment_ids = token_ids[text, starts_text]
                ids += segment_ids
                supervised += [is_supervised] * len(segment_ids)
        result.append(Encoded(ids, supervised))
    return result


def encode_conversations(
    tokenizer, conversations: Sequence[Conversation]
) -> list[tuple[Encoded, list[Encoded]] | Refused]:
    """Each conversation's header and turns in the tokenizer's format, all encoded in one batched call;
    a conversation the format cannot write is its Refused in their place."""
    form = prompt_format(tokenizer)
    pieces: list[Piece] = []
    counts: list[int | Refused] = []
    for conversation in conversations:
        try:
            conversation_pieces = form.conversation_pieces(conversation)
        except Refused as refusal:
            counts.append(refusal)
            continue
        counts.append(len(conversation_pieces))
        pieces += conversation_pieces
    encoded = iter(encode_segments(tokenizer, pieces, form.end_of_turn_id))
    return [
        count if isinstance(count, Refused) else (next(encoded), list(islice(encoded, count - 1)))
        for count in counts
    ]


def encode_conversation(tokenizer, conversation: Conversation) -> tuple[Encoded, list[Encoded]]:
    """The header and each turn (each message, for `base`), encoded in one batched call."""
    encoded = encode_conversations(tokenizer, [conversation])[0]
    if isinstance(encoded, Refused):
        raise encoded
    return encoded


def encode_prompt(tokenizer, conversation: Conversation, turns: Sequence[Turn]) -> list[int]:
    """Context for generating the bot's next reply: header, the given turns, then what starts a reply."""
    form = prompt_format(tokenizer)
    pieces = form.pieces(conversation, turns, reply=True)
    return [
        token for encoded in encode_segments(tokenizer, pieces, form.end_of_turn_id) for token in encoded.ids
    ]
