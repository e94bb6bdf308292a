"""Conversation filters for the clean stage: each drops for one reason, which is its name.

Quality filters (no bot turn, too-long messages, Zalgo text, a looping bot, another language) are
switched and tuned under `clean.filters.NAME` in params.yaml; exact and near-duplicate removal follow
them. A filter may remember what it has kept (the duplicate filters do), so the stage runs them in a
fixed order over the conversations in a fixed order. Filters that remember nothing may judge
conversations in worker processes; those that remember run in the main process, in reading order,
and may have the per-conversation part of their work (`prepare`) done ahead in a worker.
"""

import math
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from py3langid.langid import MODEL_FILE as LANGID_MODEL
from py3langid.langid import LanguageIdentifier

from chatmill.errors import ChatmillError
from chatmill.params import require
from chatmill.schema import Conversation

WORD = re.compile(r"\w+")
# The same words in ASCII text, where \w is [A-Za-z0-9_]: without the Unicode category lookups,
# lower-casing and finding the words took 1.7x less time on 9,110 sample messages, nearly all ASCII.
ASCII_WORD = re.compile(r"\w+", re.ASCII)
_last_words: tuple[Conversation | None, list[list[str]]] = (None, [])


def lower_words(text: str) -> list[str]:
    """The words (\\w+) of the lower-cased text."""
    text = text.lower()
    return ASCII_WORD.findall(text) if text.isascii() else WORD.findall(text)


def turn_words(conversation: Conversation) -> list[list[str]]:
    """The lower-cased words of each turn. The looping-bot and near-duplicate filters both need them, for
    one conversation after the other: the last conversation's are kept, so one regex pass serves both."""
    global _last_words
    if _last_words[0] is not conversation:  # `is`, and a reference held: no other conversation can match
        _last_words = (conversation, [lower_words(turn["text"]) for turn in conversation["turns"]])
    return _last_words[1]


class ConversationFilter(ABC):
    name: ClassVar[str]  # the drop reason in stats.json
    # Each param's type and inclusive range (for a list: how many items), checked by from_params.
    PARAMS: ClassVar[dict[str, tuple[type, float, float]]] = {}
    # Whether keep() depends on the conversations seen before: if so it must see them all, in order.
    remembers: ClassVar[bool] = False

    @abstractmethod
    def keep(self, conversation: Conversation) -> bool:
        """False drops the conversation, with this filter's name as the reason."""

    def prepare(self, conversation: Conversation) -> Any:
        """The part of keep()'s work that depends on this conversation alone, for keep_prepared();
        pure, so a worker process can do it ahead."""
        return None

    def keep_prepared(self, conversation: Conversation, prepared: Any) -> bool:
        """keep(), given what prepare() returned for the conversation."""
        return self.keep(conversation)

    def stats(self) -> dict[str, Any]:
        """What the filter has to report beyond its drop count; empty for most."""
        return {}

    @classmethod
    def from_params(cls, section: Any, where: str) -> "ConversationFilter | None":
        """The filter configured by `section` (`where` is its dotted name), or None when switched off."""
        if not isinstance(section, dict):
            raise ChatmillError(f"params.yaml: {where} must be a mapping, got {section!r}")
        unknown = sorted(set(section) - {"enabled", *cls.PARAMS})
        if unknown:
            known = ", ".join(["enabled", *cls.PARAMS])
            raise ChatmillError(f"params.yaml: {where} has unknown {', '.join(unknown)}; known: {known}")
        if not require(section, "enabled", where, bool):
            return None
        values = {}
        for key, (kind, low, high) in cls.PARAMS.items():
            value = require(section, key, where, (int, float) if kind is float else kind)
            if not low <= (len(value) if kind is list else value) <= high:
                bounds = f"hold {low} to {high} items" if kind is list else f"be in [{low}, {high}]"
                raise ChatmillError(f"params.yaml: {where}.{key} must {bounds}, got {value!r}")
            values[key] = value
        return cls(**values)


class NoBotTurn(ConversationFilter):
    """Nothing to learn from: the loss is on bot turns only."""

    name = "no_bot_turn"

    def keep(self, conversation: Conversation) -> bool:
        return any(turn["role"] == "bot" for turn in conversation["turns"])


class MessageTooLong(ConversationFilter):
    """A message longer than max_chars: pasted logs, dumps or spam rather than chat."""

    name = "message_too_long"
    PARAMS = {"max_chars": (int, 1, math.inf)}

    def __init__(self, max_chars: int):
        self.max_chars = max_chars

    def keep(self, conversation: Conversation) -> bool:
        return all(len(turn["text"]) <= self.max_chars for turn in conversation["turns"])


# The diacritical-mark blocks Zalgo generators stack. Marks of other scripts (Devanagari vowel
# signs, Hebrew points, Arabic harakat, Thai tones) are left out: those scripts stack them legitimately.
ZALGO_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"


class Zalgo(ConversationFilter):
    """Suspect Unicode: more than max_combining_marks diacritics stacked on one character."""

    name = "zalgo"
    PARAMS = {"max_combining_marks": (int, 1, math.inf)}

    def __init__(self, max_combining_marks: int):
        self.stack = re.compile(f"[{ZALGO_MARKS}]{{{max_combining_marks + 1},}}")

    def keep(self, conversation: Conversation) -> bool:
        texts = [
            conversation["persona"],
            conversation["scenario"],
            *(t["text"] for t in conversation["turns"]),
        ]
        # The marks are not ASCII, and most text is: isascii() is far cheaper than the search.
        return not any(not text.isascii() and self.stack.search(text) for text in texts)


class LoopingBot(ConversationFilter):
    """A bot that repeats itself: more than max_repeated_share of its replies (of min_words words or
    more, when there are min_replies of them) have a near-copy, a reply at most LOOKBACK replies away
    whose word-bigram Jaccard similarity is `similarity` or more. Short replies ("...", "Yes.") are
    length-trim's business, so they are not counted."""

    name = "looping_bot"
    PARAMS = {
        "min_words": (int, 1, math.inf),
        "min_replies": (int, 2, math.inf),
        "similarity": (float, 0.0, 1.0),
        "max_repeated_share": (float, 0.0, 1.0),
    }
    LOOKBACK = 8  # a loop repeats recent replies; this bounds the work on a conversation of 10,000 turns

    def __init__(self, min_words: int, min_replies: int, similarity: float, max_repeated_share: float):
        self.min_words, self.min_replies = min_words, min_replies
        self.similarity, self.max_repeated_share = similarity, max_repeated_share

    def keep(self, conversation: Conversation) -> bool:
        replies = []
        for turn, words in zip(conversation["turns"], turn_words(conversation), strict=True):
            if turn["role"] == "bot" and len(words) >= self.min_words:
                replies.append(set(zip(words, words[1:], strict=False)) or {tuple(words)})
        if len(replies) < self.min_replies:
            return True
        repeated: set[int] = set()  # both copies of a pair count: the first is as much a part of the loop
        for i, reply in enumerate(replies):
            for j in range(max(0, i - self.LOOKBACK), i):
                if self._alike(reply, replies[j]):
                    repeated.update((i, j))
        return len(repeated) / len(replies) <= self.max_repeated_share

    def _alike(self, one: set, other: set) -> bool:
        sizes = len(one), len(other)
        if min(sizes) < self.similarity * max(sizes):  # Jaccard <= smaller / larger: no need to intersect
            return False
        shared = len(one & other)
        return shared >= self.similarity * (sizes[0] + sizes[1] - shared)


class Language(ConversationFilter):
    """Conversations in a language other than `languages` (ISO 639-1 codes). py3langid (langid.py's
    naive Bayes model over byte n-grams, 140 languages in 0.4.0, shipped inside its PyPI wheel: nothing
    to download) reads the first sample_chars characters of the turns. A conversation is dropped only
    when the model names another language with probability min_probability or more: text too short or
    too mixed to tell ("Hm?", names, emoji) is kept."""

    name = "language"
    PARAMS = {
        "languages": (list, 1, math.inf),
        "min_probability": (float, 0.0, 1.0),
        "sample_chars": (int, 1, math.inf),
    }

    def __init__(self, languages: list[str], min_probability: float, sample_chars: int):
        self.identifier = LanguageIdentifier.from_model_file(LANGID_MODEL, norm_probs=True)
        unknown = sorted({str(code) for code in languages} - set(self.identifier.nb_classes))
        if unknown:
            raise ChatmillError(
                f"params.yaml: clean.filters.language.languages has unknown {', '.join(unknown)}; "
                f"use ISO 639-1 codes, one of {' '.join(sorted(set(self.identifier.nb_classes)))}"
            )
        self.languages = set(languages)
        self.min_probability, self.sample_chars = min_probability, sample_chars

    def keep(self, conversation: Conversation) -> bool:
        sample = "\n".join(turn["text"] for turn in conversation["turns"])[: self.sample_chars]
        language, probability = self.identifier.classify(sample)
        return language in self.languages or probability < self.min_probability


class ExactDuplicate(ConversationFilter):
    """The same conversation id (a hash of the normalised content) kept before: the first copy stays."""

    name = "duplicate"
    remembers = True

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def keep(self, conversation: Conversation) -> bool:
        if conversation["id"] in self.seen:
            return False
        self.seen.add(conversation["id"])
        return True


QUALITY_FILTERS: tuple[type[ConversationFilter], ...] = (
    NoBotTurn,
    MessageTooLong,
    Zalgo,
    LoopingBot,
    Language,
)


def build_quality_filters(section: Any, where: str = "clean.filters") -> list[ConversationFilter]:
    """The switched-on quality filters, in QUALITY_FILTERS order (cheapest first), from params."""
    if not isinstance(section, dict):
        raise ChatmillError(f"params.yaml: {where} must be a mapping of filter names, got {section!r}")
    known = [kind.name for kind in QUALITY_FILTERS]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ChatmillError(
            f"params.yaml: {where} has unknown {', '.join(unknown)}; known: {', '.join(known)}"
        )
    filters = []
    for kind in QUALITY_FILTERS:
        if kind.name not in section:
            raise ChatmillError(
                f"params.yaml: {where}.{kind.name} is missing (set enabled: false to switch it off)"
            )
        built = kind.from_params(section[kind.name], f"{where}.{kind.name}")
        if built is not None:
            filters.append(built)
    return filters
