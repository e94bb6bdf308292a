"""The canonical conversation: one parquet row per conversation, the same for every source format."""

import json
from typing import Any, TypedDict

import pyarrow as pa

from chatmill.io import stable_hash

ROLES = ("user", "bot", "system")
USER_NAME = "You"

TURN_TYPE = pa.struct([("role", pa.string()), ("name", pa.string()), ("text", pa.string())])
CONVERSATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("bot_name", pa.string()),
        ("persona", pa.string()),
        ("scenario", pa.string()),
        ("turns", pa.list_(TURN_TYPE)),
        ("meta", pa.string()),
    ]
)


class Turn(TypedDict):
    role: str
    name: str
    text: str


class Conversation(TypedDict):
    id: str
    source: str
    bot_name: str
    persona: str
    scenario: str
    turns: list[Turn]
    meta: str


def conversation_id(bot_name: str, persona: str, scenario: str, turns: list[Turn]) -> str:
    """Content hash of everything the model trains on; the source is left out so that the same
    conversation arriving from two sources is one conversation."""
    content = json.dumps([bot_name, persona, scenario, [[t["role"], t["text"]] for t in turns]])
    return stable_hash(content)[:24]


def make_conversation(
    source: str, bot_name: str, persona: str, scenario: str, turns: list[Turn], meta: dict[str, Any]
) -> Conversation:
    return Conversation(
        id=conversation_id(bot_name, persona, scenario, turns),
        source=source,
        bot_name=bot_name,
        persona=persona,
        scenario=scenario,
        turns=turns,
        meta=json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str),
    )


def bot_turn_texts(conversation: Conversation) -> list[str]:
    return [turn["text"] for turn in conversation["turns"] if turn["role"] == "bot"]
