"""Cleaning: raw source files -> canonical conversations, normalised, scrubbed, filtered, deduplicated.

Reads the raw folder fetch wrote (manifest.json tells which file belongs to which source). Writes
conversations.parquet, quarantine.jsonl (every malformed record with its reason and raw text) and
stats.json, where in == out + dropped + quarantined.

Each record is parsed, normalised, PII-scrubbed (`clean.pii`), then passed through the quality
filters (`clean.filters`), exact dedup and near-dup (`clean.near_dup`). Scrubbing comes before the
filters and dedup so that the id, the duplicate checks and the output all see the scrubbed text:
two copies differing only in an email address are one conversation.

The work on one record alone (parse, normalise, scrub, quality filters, MinHash signature) runs on
`clean.workers` processes in batches; the results are taken in reading order and the rest (exact and
near-dup index, counts, quarantine, output) is done here, so the outputs are byte-identical for any
worker count.
"""

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from chatmill.containers import RawRecord, iter_records, parsed
from chatmill.errors import ChatmillError
from chatmill.filters import ConversationFilter, ExactDuplicate, build_quality_filters
from chatmill.io import (
    atomic_dir,
    batched,
    ordered_pool_map,
    read_json,
    write_json,
    write_parquet,
)
from chatmill.neardup import NearDuplicate
from chatmill.params import require
from chatmill.pii import PiiScrubber, PiiType, scrubber_from_params
from chatmill.records import ParsedRecord, RecordError, parser_for
from chatmill.schema import (
    CONVERSATION_SCHEMA,
    USER_NAME,
    Conversation,
    conversation_id,
    make_conversation,
)
from chatmill.stats import StageStats

CLEAN_BATCH = 256  # records per task sent to a worker process (about 1 MB of chat logs)

PLACEHOLDERS = re.compile(r"\{\{(char|user)\}\}|<(BOT|USER)>", re.IGNORECASE)
# Line and paragraph separators are line breaks written another way (JavaScript leaves them in JSON).
LINE_BREAK = re.compile(r"\r\n?|[\u2028\u2029]")
# No-break and typographic spaces: web editors put them where a space was typed (a double space becomes
# "\u00a0 "). Each becomes one space, so widths and indentation stay. The ideographic space U+3000 is a
# full-width character of CJK text, not a stray space: it stays.
ODD_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f]")
# Zero-width space, word joiner, BOM and control characters. ZWJ/ZWNJ stay: emoji and scripts need them.
INVISIBLE = re.compile(r"[\u200b\u2060\ufeff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A Markdown code fence (CommonMark): three or more backticks or tildes, then an info string ("python").
# Any indentation is taken: chat models indent fences inside list items.
FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
FENCE_CLOSE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*")


def substitute_placeholders(text: str, bot_name: str) -> str:
    """PIPPA writes the character as {{char}} and the user as {{user}}."""

    def name_for(match: re.Match) -> str:
        kind = (match.group(1) or match.group(2)).lower()
        return bot_name if kind in ("char", "bot") else USER_NAME

    if "{{" not in text and "<" not in text:  # the common case, without a regex pass
        return text
    return PLACEHOLDERS.sub(name_for, text)


def fence_opened(line: str) -> str:
    """The fence a line opens (its backticks or tildes), or "" when it opens none. A backtick fence's
    info string holds no backtick: "```x```" on one line is inline code."""
    match = FENCE_OPEN.match(line)
    if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
        return ""
    return match.group(1)


def fence_closes(line: str, fence: str) -> bool:
    """Whether the line closes the block `fence` opened: the same character, at least as many."""
    match = FENCE_CLOSE.fullmatch(line)
    return match is not None and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)


def normalize_text(text: str) -> str:
    """NFC, "\n" line breaks, no invisible characters, plain spaces for no-break ones; layout kept.

    Only what carries no meaning goes: whitespace at the end of a line and blank lines at the start
    and end of the text. Indentation, runs of spaces and blank lines inside the text stay: code,
    lists, tables and poems are written with them, a prose line cannot be told from them, and
    near-dup (word shingles) still finds copies that differ only in spacing. Inside a fenced code
    block only NFC, line breaks and invisible characters change. The first line loses its
    indentation when no other line outside fenced blocks is indented: then it is a stray space before
    a chat message (" Hello"), not the start of an indented block."""
    # Invisibles go first: NFC cannot compose across one ("e\u200b\u0301" must end as "\u00e9").
    ascii_only = text.isascii()
    text = text.replace("\r\n", "\n").replace("\r", "\n") if ascii_only else LINE_BREAK.sub("\n", text)
    text = unicodedata.normalize("NFC", INVISIBLE.sub("", text))
    odd_spaces = not ascii_only and ODD_SPACE.search(text) is not None
    if "\n" not in text:  # the common case: one line, never a code block
        return (ODD_SPACE.sub(" ", text) if odd_spaces else text).strip()
    lines = text.split("\n")
    fence = ""  # the open fence while inside a fenced block
    fenced = "```" in text or "~~~" in text
    indented = 0  # lines outside fenced blocks that start with whitespace
    for number, line in enumerate(lines):
        if fence:
            if fence_closes(line, fence):
                fence = ""
            continue
        if odd_spaces:
            line = ODD_SPACE.sub(" ", line)
        lines[number] = line = line.rstrip()
        indented += line[:1].isspace()
        if fenced:
            fence = fence_opened(line)
    first = next((number for number, line in enumerate(lines) if line), len(lines))
    if indented == 1 and lines[first][:1].isspace():
        lines[first] = lines[first].lstrip()
    return "\n".join(lines[first:]).rstrip()


def normalize_record(parsed: ParsedRecord) -> ParsedRecord:
    """Normalise every text field and remove turns left empty."""
    bot_name = normalize_text(parsed.bot_name) or "Bot"

    def clean(text: str) -> str:
        return normalize_text(substitute_placeholders(text, bot_name))

    turns = []
    for turn in parsed.turns:
        text = clean(turn["text"])
        if text:
            name = bot_name if turn["role"] == "bot" else turn["name"]
            turns.append({"role": turn["role"], "name": name, "text": text})
    return ParsedRecord(bot_name, clean(parsed.persona), clean(parsed.scenario), turns, parsed.meta)


def to_conversation(raw: RawRecord, source: str, format_name: str) -> Conversation:
    """One raw record to a canonical conversation; RecordError says why it cannot be one."""
    raw = parsed(raw)
    if raw.error:
        raise RecordError(raw.error)
    try:
        normalized = normalize_record(parser_for(format_name, source)(raw.value))
        conversation = make_conversation(
            source,
            normalized.bot_name,
            normalized.persona,
            normalized.scenario,
            normalized.turns,
            normalized.meta,
        )
    except RecursionError:  # a field (say pippa's categories) nested too deeply to serialise into meta
        raise RecordError("nested too deeply to serialise") from None
    # A lone surrogate (half an emoji, from a "\ud83d" escape) cannot be written to parquet. Each string
    # is tried in the row's order: the same first fault as encoding the row's JSON, at a fraction of the cost.
    # An ASCII string (isascii() reads a flag) holds none.
    texts = [conversation[key] for key in ("id", "source", "bot_name", "persona", "scenario")]
    texts += [value for turn in conversation["turns"] for value in turn.values()]
    for text in [*texts, conversation["meta"]]:
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            bad = error.object[error.start : error.end]
            raise RecordError(f"invalid unicode: {error.reason} ({bad!r})") from None
    return conversation


def scrub_value(value: Any, scrubber: PiiScrubber, among: list[PiiType] | None = None) -> Any:
    """Every string in a JSON value scrubbed (`among` as for PiiScrubber.scrub): meta holds
    user-written text such as bot definitions."""
    if isinstance(value, str):
        return scrubber.scrub(value, among)
    if isinstance(value, list):
        return [scrub_value(item, scrubber, among) for item in value]
    if isinstance(value, dict):
        return {key: scrub_value(item, scrubber, among) for key, item in value.items()}
    return value


def scrub_conversation(conversation: Conversation, scrubber: PiiScrubber) -> Conversation:
    """PII replaced in persona, scenario, turns and meta; the id is the hash of the scrubbed content."""
    try:
        meta = json.loads(conversation["meta"])
    except RecursionError:
        raise RecordError("meta nested too deeply to scrub") from None
    texts = [conversation["persona"], conversation["scenario"], *(t["text"] for t in conversation["turns"])]
    # The hints are tested on everything at once (meta's JSON holds its strings verbatim), then each
    # text only for the types hinted: one costly test per conversation, not per text.
    hinted = scrubber.hinted_types("\n".join([*texts, conversation["meta"]]))
    if not hinted:
        return conversation
    replaced_before = scrubber.total()
    persona, scenario, *turn_texts = [scrubber.scrub(text, hinted) for text in texts]
    turns = [{**turn, "text": text} for turn, text in zip(conversation["turns"], turn_texts, strict=True)]
    meta = scrub_value(meta, scrubber, hinted)
    if scrubber.total() == replaced_before:  # hints are not PII: often nothing to rebuild
        return conversation
    return Conversation(
        id=conversation_id(conversation["bot_name"], persona, scenario, turns),
        source=conversation["source"],
        bot_name=conversation["bot_name"],
        persona=persona,
        scenario=scenario,
        turns=turns,
        meta=json.dumps(meta, sort_keys=True, ensure_ascii=False),
    )


def build_filters(section: dict) -> tuple[PiiScrubber | None, list[ConversationFilter]]:
    """The scrubber (None when off) and the filters, in the order they run, that `clean` asks for;
    built before any record is read, so a config error costs nothing."""
    scrubber = scrubber_from_params(require(section, "pii", "clean"))
    filters = build_quality_filters(require(section, "filters", "clean"))
    filters.append(ExactDuplicate())
    # Last: it is the costliest, and its index then holds only conversations that passed everything else.
    near_duplicates = NearDuplicate.from_params(require(section, "near_dup", "clean"), "clean.near_dup")
    if near_duplicates is not None:
        filters.append(near_duplicates)
    return scrubber, filters


def drop_reason(conversation: Conversation, filters: Sequence[ConversationFilter]) -> str | None:
    """The name of the first filter that drops the conversation, or None to keep it."""
    for conversation_filter in filters:
        if not conversation_filter.keep(conversation):
            return conversation_filter.name
    return None


def remembered_drop_reason(
    conversation: Conversation, filters: Sequence[ConversationFilter], prepared: Sequence
) -> str | None:
    """drop_reason() for filters whose prepare() was done ahead: prepared[i] is filters[i]'s."""
    for conversation_filter, ahead in zip(filters, prepared, strict=True):
        if not conversation_filter.keep_prepared(conversation, ahead):
            return conversation_filter.name
    return None


def quarantine_entry(raw: RawRecord, source: str, reason: str) -> dict:
    # default=str: parquet rows can hold timestamps, bytes or decimals
    raw_text = (
        raw.raw
        if raw.raw is not None
        else (None if raw.value is None else json.dumps(raw.value, default=str))
    )
    return {"source": source, "location": raw.location, "reason": reason, "raw": raw_text}


# What a worker makes of one record: (QUARANTINED, reason), (DROPPED, filter name), or (PASSED,
# conversation, [prepare() of each filter that remembers]) for the main process to finish.
QUARANTINED, DROPPED, PASSED = "quarantined", "dropped", "passed"


@dataclass
class RecordCleaner:
    """The work on each record that needs no other record; `filters` are those before the first that
    remembers, `remembering` the rest, whose per-conversation part (prepare) is done here too."""

    formats: dict[str, str]  # source name -> record format
    scrubber: PiiScrubber | None
    filters: list[ConversationFilter]
    remembering: list[ConversationFilter]

    def clean(self, source: str, raw: RawRecord) -> tuple:
        try:
            conversation = to_conversation(raw, source, self.formats[source])
            if self.scrubber is not None:
                conversation = scrub_conversation(conversation, self.scrubber)
        except RecordError as error:
            return QUARANTINED, str(error)
        reason = drop_reason(conversation, self.filters)
        if reason:
            return DROPPED, reason
        return PASSED, conversation, [f.prepare(conversation) for f in self.remembering]

    def clean_batch(self, batch: list[tuple[str, RawRecord]]) -> tuple[list[tuple], Counter]:
        """The outcome of each (source, record), and the PII replaced in the batch, by type."""
        outcomes = [self.clean(source, raw) for source, raw in batch]
        return outcomes, self.scrubber.take_counts() if self.scrubber is not None else Counter()


_cleaner: RecordCleaner | None = None  # in a worker process: set once by _start_cleaner


def _start_cleaner(cleaner: RecordCleaner) -> None:
    global _cleaner
    _cleaner = cleaner


def _clean_batch(batch: list[tuple[str, RawRecord]]) -> tuple[list[tuple], Counter]:
    return _cleaner.clean_batch(batch)


def split_filters(
    filters: Sequence[ConversationFilter],
) -> tuple[list[ConversationFilter], list[ConversationFilter]]:
    """The filters before the first one that remembers (they judge each conversation alone), and the
    rest, which must see every conversation in reading order."""
    first = next((i for i, f in enumerate(filters) if f.remembers), len(filters))
    return list(filters[:first]), list(filters[first:])


def source_records(sources: Iterable[str], manifest: dict, raw_dir: Path) -> Iterator[tuple[str, RawRecord]]:
    """(source name, record) for every record of every source, sorted by name, each in file order;
    a ChatmillError for a source file that is missing, unreadable from the start or empty."""
    for name in sorted(sources):
        path = raw_dir / manifest[name]["file"]
        if not path.is_file():
            raise ChatmillError(f"clean: source '{name}': {path} is missing; run `dvc repro fetch`")
        read = 0
        for raw in iter_records(path, parse=False):  # the workers parse
            if raw.file_error and not read:  # nothing could be read: the file's fault
                raise ChatmillError(f"clean: source '{name}': {path}: {raw.error}")
            read += 1
            yield name, raw
        if not read:
            raise ChatmillError(f"clean: source '{name}': {path} holds no records; check sources.{name}.uri")


def clean_sources(
    formats: dict[str, str],
    manifest: dict,
    raw_dir: Path,
    quarantine,
    stats: StageStats,
    scrubber: PiiScrubber | None,
    filters: Sequence[ConversationFilter],
    workers: int = 1,
) -> Iterator[Conversation]:
    """Stream the kept conversations of all sources (`formats`: each one's record format), sorted by
    name, each in file order, so the first copy of a duplicate or near-duplicate is kept
    deterministically; write quarantine lines as they appear. The per-record work runs on
    `workers` processes; counting, the filters that remember and the quarantine take the results
    in reading order."""
    per_record, remembering = split_filters(filters)
    cleaner = RecordCleaner(formats, scrubber, per_record, remembering)
    with Progress(transient=True) as progress:
        task = progress.add_task("clean", total=None)
        batches = batched(source_records(formats, manifest, raw_dir), CLEAN_BATCH)
        results = ordered_pool_map(_clean_batch, batches, workers, _start_cleaner, (cleaner,))
        for batch, (outcomes, pii_counts) in results:
            if scrubber is not None:
                scrubber.counts.update(pii_counts)
            progress.advance(task, len(batch))
            for (name, raw), outcome in zip(batch, outcomes, strict=True):
                if outcome[0] == QUARANTINED:
                    stats.quarantine(name)
                    entry = quarantine_entry(raw, name, outcome[1])
                    quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    continue
                if outcome[0] == PASSED:
                    _, conversation, prepared = outcome
                    reason = remembered_drop_reason(conversation, remembering, prepared)
                else:
                    reason = outcome[1]
                if reason:
                    stats.drop(reason, name)
                    continue
                stats.keep(name)
                yield conversation
    stats.extra["sources"] = stats.source_table()
    if scrubber is not None:
        stats.extra["pii"] = dict(sorted(scrubber.counts.items()))
    # The per-record filters remember nothing, so they have nothing to report beyond their drop counts.
    for conversation_filter in filters:
        if report := conversation_filter.stats():
            stats.extra[conversation_filter.name] = report


def check_quarantine_share(stats: StageStats, max_fraction: float, out_dir: Path) -> None:
    share = stats.quarantined / max(stats.records_in, 1)
    if share > max_fraction:
        raise ChatmillError(
            f"clean: {stats.quarantined} of {stats.records_in} records ({share:.1%}) were quarantined, "
            f"more than clean.max_quarantine_fraction={max_fraction}; see {out_dir}/quarantine.jsonl"
        )
    # A source that is all quarantined is a file in another format than its params say, however small
    # its share of the whole.
    for name, counts in stats.source_table().items():
        if counts["in"] and counts.get("quarantined", 0) == counts["in"]:
            raise ChatmillError(
                f"clean: source '{name}': all {counts['in']} of its records were quarantined "
                f"(is sources.{name}.format right?); see {out_dir}/quarantine.jsonl"
            )


def source_formats(sources: dict[str, dict]) -> dict[str, str]:
    """Each source's record format, checked against the known formats."""
    for name, source in sources.items():
        parser_for(require(source, "format", f"sources.{name}", str), name)
    return {name: source["format"] for name, source in sorted(sources.items())}


def clean_raw(
    raw_dir: Path, out_dir: Path, formats: dict[str, str], section: dict, workers: int
) -> StageStats:
    """The clean stage: every source of raw_dir cleaned into out_dir (replaced only when complete).
    Fails after writing the outputs when more than clean.max_quarantine_fraction was malformed, so
    the quarantine can be read."""
    max_fraction = require(section, "max_quarantine_fraction", "clean", (int, float))
    scrubber, filters = build_filters(section)
    manifest = read_json(raw_dir / "manifest.json")
    missing = sorted(set(formats) - set(manifest))
    if missing:
        raise ChatmillError(
            f"clean: {', '.join(missing)} not in {raw_dir}/manifest.json; run `dvc repro fetch`"
        )
    stats = StageStats()
    with atomic_dir(out_dir) as out:
        with open(out / "quarantine.jsonl", "w", encoding="utf-8") as quarantine:
            conversations = clean_sources(
                formats, manifest, raw_dir, quarantine, stats, scrubber, filters, workers
            )
            write_parquet(out / "conversations.parquet", CONVERSATION_SCHEMA, conversations)
        write_json(out / "stats.json", stats.to_dict())
    print(
        f"clean: {stats.records_in} records -> {stats.records_out} conversations, "
        f"dropped {stats.dropped}, quarantined {stats.quarantined}"
    )
    check_quarantine_share(stats, max_fraction, out_dir)
    return stats
