"""Record formats: what one record of a source means, as the parts of a canonical conversation.

    pippa     PygmalionAI/PIPPA: bot_name, bot_description, conversation: [{message, is_human}], ...
    sharegpt  {conversations: [{from: human|gpt|system, value}]}
    openai    {messages: [{role: user|assistant|system, content}]}
    alpaca    {instruction, input, output}: one exchange with an assistant persona

A parser takes the decoded JSON value (or parquet row) and returns a ParsedRecord, or raises
RecordError with the quarantine reason. A new format is one function and one line in FORMATS.
Every format keeps the record's own `id`, where it has one, as meta `origin_id` (origin_meta).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatmill.errors import ChatmillError
from chatmill.schema import USER_NAME, Turn

ASSISTANT_NAME = "Assistant"
ASSISTANT_PERSONA = (
    "A helpful, knowledgeable assistant who follows instructions carefully and answers in full."
)


class RecordError(ValueError):
    """A record that cannot become a conversation; the message is its quarantine reason."""


@dataclass
class ParsedRecord:
    bot_name: str
    persona: str
    scenario: str
    turns: list[Turn]
    meta: dict[str, Any]


def _show(value: Any, limit: int = 60) -> str:
    """A value for a quarantine reason: its repr, cut short (a reason is one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(record: Any, key: str, kind: type, default: Any = None, where: str = "") -> Any:
    """record[key], checked to be a `kind`; `where` names the record inside its conversation
    ("conversation[3]"), so that a reason points at the exact turn."""
    if not isinstance(record, dict):
        raise RecordError(f"{where or 'record'} is {type(record).__name__}, expected an object")
    value = record.get(key)
    if isinstance(value, kind):
        return value
    name = f"{where}.{key}" if where else key
    if value is None:
        if default is not None:
            return default
        raise RecordError(f"missing field '{name}'")
    raise RecordError(f"field '{name}' is {type(value).__name__}, expected {kind.__name__}")


def origin_meta(record: dict) -> dict[str, Any]:
    """The source's own id of the record, as every format keeps it in meta: {"origin_id": id}, from a
    non-empty string or an integer in the record's `id` field, so that a conversation can be traced
    back to its source record; {} without one (a value of another type is no id)."""
    value = record.get("id")
    if (isinstance(value, str) and value) or (isinstance(value, int) and not isinstance(value, bool)):
        return {"origin_id": value}
    return {}


def parse_pippa(record: Any) -> ParsedRecord:
    bot_name = _field(record, "bot_name", str)
    turns = []
    for i, message in enumerate(_field(record, "conversation", list)):
        where = f"conversation[{i}]"
        is_human = _field(message, "is_human", bool, where=where)
        text = _field(message, "message", str, where=where)
        turns.append(
            Turn(role="user" if is_human else "bot", name=USER_NAME if is_human else bot_name, text=text)
        )
    # PIPPA has no id per conversation; bot_id names the character, whose conversations share it.
    meta = {
        key: record[key]
        for key in ("bot_id", "bot_definitions", "bot_greeting", "categories", "submission_timestamp")
        if record.get(key) is not None
    }
    return ParsedRecord(
        bot_name, _field(record, "bot_description", str, ""), "", turns, meta | origin_meta(record)
    )


def _chat_messages(messages: list, role_key: str, text_key: str, roles: dict[str, str], bot_name: str):
    """Shared by sharegpt and openai: a leading system message becomes the persona."""
    persona, turns = "", []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = roles.get(_field(message, role_key, str, where=where))
        if role is None:
            raise RecordError(
                f"{where}.{role_key} is {_show(message[role_key])}, expected one of {sorted(roles)}"
            )
        text = _field(message, text_key, str, where=where)
        if role == "system" and not turns and not persona:
            persona = text
            continue
        name = {"user": USER_NAME, "bot": bot_name, "system": "system"}[role]
        turns.append(Turn(role=role, name=name, text=text))
    return persona, turns


def parse_sharegpt(record: Any) -> ParsedRecord:
    bot_name = _field(record, "bot_name", str, ASSISTANT_NAME)
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "bot",
        "assistant": "bot",
        "chatgpt": "bot",
        "system": "system",
    }
    persona, turns = _chat_messages(_field(record, "conversations", list), "from", "value", roles, bot_name)
    persona = _field(record, "persona", str, "") or persona
    return ParsedRecord(bot_name, persona, _field(record, "scenario", str, ""), turns, origin_meta(record))


def parse_openai(record: Any) -> ParsedRecord:
    roles = {"user": "user", "assistant": "bot", "system": "system"}
    persona, turns = _chat_messages(
        _field(record, "messages", list), "role", "content", roles, ASSISTANT_NAME
    )
    return ParsedRecord(ASSISTANT_NAME, persona, "", turns, origin_meta(record))


def parse_alpaca(record: Any) -> ParsedRecord:
    instruction = _field(record, "instruction", str)
    extra_input = _field(record, "input", str, "")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    turns = [
        Turn(role="user", name=USER_NAME, text=prompt),
        Turn(role="bot", name=ASSISTANT_NAME, text=_field(record, "output", str)),
    ]
    return ParsedRecord(ASSISTANT_NAME, ASSISTANT_PERSONA, "", turns, origin_meta(record))


FORMATS: dict[str, Callable[[Any], ParsedRecord]] = {
    "pippa": parse_pippa,
    "sharegpt": parse_sharegpt,
    "openai": parse_openai,
    "alpaca": parse_alpaca,
}


def parser_for(format_name: str, source: str) -> Callable[[Any], ParsedRecord]:
    if format_name not in FORMATS:
        raise ChatmillError(
            f"params.yaml: sources.{source}.format is {format_name!r}; known formats: {', '.join(FORMATS)}"
        )
    return FORMATS[format_name]
