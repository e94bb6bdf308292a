"""Personal data and secrets in chat text, replaced by typed placeholders such as <EMAIL>.

Each PII type is a pattern plus, where a pattern alone would be too loose, a validator (card numbers
pass the Luhn check, IPv6 candidates must parse). Types run in a fixed order, most specific first:
a URL with a password is one <CREDENTIAL_URL>, not an <EMAIL> inside a URL, and card numbers go
before phone numbers. Placeholders hold no digits, so a later type never matches inside one.
"""

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatmill.errors import ChatmillError
from chatmill.params import require

# Query or fragment parameters whose value is a secret: token=, access_token=, api_key=, sig=, ...
_SECRET_PARAM = (
    r"(?:[\w.\-]*[_.\-])?(?:token|key|apikey|secret|password|passwd|pwd|pass|auth|sig|signature|session|"
    r"sessionid|credential)s?"
)
# Sentence punctuation after a URL is not part of it.
_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}*]", re.IGNORECASE)
_URL_SECRET = re.compile(rf"^[a-z][a-z0-9+.\-]*://[^/?#\s@]*:[^/?#\s@]*@|[?&#;]{_SECRET_PARAM}=[^&#\s]", re.I)

_API_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|(?<![\w\-])(?:"
    r"sk-[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic (sk-ant-...)
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|glpat-[A-Za-z0-9_\-]{20,}"  # GitLab
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key id
    r"|AIza[A-Za-z0-9_\-]{35}"  # Google API key
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"  # JSON web token
    r")(?![\w\-])",
    re.DOTALL,
)

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"
)

# 13 to 19 digits, in groups separated by single spaces or dashes.
_CARD = re.compile(r"(?<![\w.,\-+])[2-6]\d{3}(?:[ \-]?\d){9,15}(?![\w\-]|[.,]\d)")

_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\d)",
    re.IGNORECASE,
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")

# Phone numbers. Not glued to a word, a price, a decimal point or another number; then one of
#   international: +44 20 7946 0958, +1-202-555-0143, +44 (0)20 7946 0958, (+44) 20 7946 0958,
#                  0033 1 23 45 67 89
#   North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199
#   national with a trunk 0: 020 7946 0958, 03-1234-5678, 01 23 45 67 89
# Dates (2023-03-03, 03/03/2023), times (10:30), scores (3-2) and dice (2d6+3) fit none of these.
_BEFORE = r"(?<![\w+$\u20ac\u00a3\u00a5.\-/])"
_AFTER = r"(?![\w/]|[.\-:]\d)"
_PHONE = re.compile(
    rf"{_BEFORE}(?:"
    r"(?:(?:\+|00)[1-9]\d{0,2}|\(\+[1-9]\d{0,2}\))(?:[ .\-]?(?:\(0\)|\(\d{1,4}\)|\d{1,5})){1,7}"
    r"|(?:1[ .\-])?(?:\(\d{3}\) ?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"
    r"|\(?0[1-9]\d{0,3}\)?(?:[ \-]\d{2,8}){1,4}"
    rf"){_AFTER}"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _is_ipv6(match: str) -> bool:
    # Two groups and a digit at least: "::1", "cafe::face" and "Foo::bar" are not personal addresses.
    if sum(1 for group in match.split(":") if group) < 2 or not _DIGIT.search(match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


_INTERNATIONAL_00 = {f"00{digit}" for digit in "123456789"}
# A date and the number after it, "03-03-2023 10 guards", has a trunk number's shape.
_DATE_FIRST = re.compile(r"0\d[ \-]\d\d[ \-](?:19|20)\d\d(?!\d)")


def _is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match.replace("(0)", ""))
    if match.startswith(("+", "(+")) or match[:3] in _INTERNATIONAL_00:
        return 8 <= len(digits) <= 17  # E.164: at most 15 digits after the 00 prefix
    if match.lstrip("(").startswith("0"):
        return 10 <= len(digits) <= 12 and not _DATE_FIRST.match(match)
    return True  # the North American shape is exact


def _has_secret(url: str) -> bool:
    return _URL_SECRET.search(url) is not None


# Every API key shape above holds one of these. Searched for one by one: as a regex alternation they
# were the costliest hint, 50 of the 213 us that scrubbing took per sample conversation (cProfile, 1,494
# conversations; 183 us with the substring searches).
_API_KEY_MARKS = (
    "sk-",
    "_live_",
    "_test_",
    "hf_",
    *(f"gh{kind}_" for kind in "pousr"),
    "github_pat_",
    "glpat-",
    "AKIA",
    "ASIA",
    "AIza",
    "xox",
    "eyJ",
    "PRIVATE KEY",
)
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = "0123456789"


# The hints: named functions, not lambdas, so that a scrubber can be pickled to a worker process.
def _has_url(text: str) -> bool:
    return "://" in text


def _has_api_key_mark(text: str) -> bool:
    return any(mark in text for mark in _API_KEY_MARKS)


def _has_at(text: str) -> bool:
    return "@" in text


def _has_colons(text: str) -> bool:
    return text.count(":") >= 2


def _has_digit(text: str) -> bool:
    """Any Unicode digit, as \\d matches; ten substring searches are 7x faster than the regex."""
    for digit in _ASCII_DIGITS:
        if digit in text:
            return True
    return not text.isascii() and _DIGIT.search(text) is not None


@dataclass(frozen=True)
class PiiType:
    name: str
    placeholder: str
    pattern: re.Pattern
    # A cheap test that every text holding this type passes: most chat text skips the regex.
    hint: Callable[[str], bool]
    valid: Callable[[str], bool] | None = None


PII_TYPES = (
    PiiType("credential_url", "<CREDENTIAL_URL>", _URL, _has_url, _has_secret),
    PiiType("api_key", "<API_KEY>", _API_KEY, _has_api_key_mark),
    PiiType("email", "<EMAIL>", _EMAIL, _has_at),
    PiiType("card_number", "<CARD_NUMBER>", _CARD, _has_digit, _is_card),
    PiiType("ip_address", "<IP_ADDRESS>", _IPV6, _has_colons, _is_ipv6),
    PiiType("ip_address", "<IP_ADDRESS>", _IPV4, _has_digit),
    PiiType("phone", "<PHONE>", _PHONE, _has_digit, _is_phone),
)
TYPE_NAMES = tuple(dict.fromkeys(pii.name for pii in PII_TYPES))


class PiiScrubber:
    """Replaces the PII of the chosen types in texts; `counts` says how many of each it replaced."""

    def __init__(self, types: list[str]):
        unknown = sorted({str(name) for name in types if name not in TYPE_NAMES})
        if unknown:
            known = ", ".join(TYPE_NAMES)
            raise ChatmillError(
                f"params.yaml: clean.pii.types has unknown {', '.join(unknown)}; known: {known}"
            )
        self.types = [pii for pii in PII_TYPES if pii.name in types]
        self.counts: Counter = Counter({name: 0 for name in TYPE_NAMES if name in types})

    def total(self) -> int:
        return sum(self.counts.values())

    def take_counts(self) -> Counter:
        """The counts so far, which start again from zero: a worker process reports them per batch."""
        counts, self.counts = self.counts, Counter(dict.fromkeys(self.counts, 0))
        return counts

    def hinted_types(self, text: str, among: list[PiiType] | None = None) -> list[PiiType]:
        """The types (of `among`, by default all chosen) whose hint holds for the text. A hint that fails
        for a text fails for every part of it (each is a substring or a count that a part cannot exceed),
        so the types hinted for a whole conversation are all its parts need to be tested for: most
        conversations hold no URL, @ or key mark at all."""
        candidates = self.types if among is None else among
        held: dict[Callable[[str], bool], bool] = {}  # card, IP and phone share the digit hint
        hinted = []
        for pii in candidates:
            hint = pii.hint
            if hint not in held:
                held[hint] = hint(text)
            if held[hint]:
                hinted.append(pii)
        return hinted

    def scrub(self, text: str, among: list[PiiType] | None = None) -> str:
        """The text with its PII replaced; `among`: hinted_types() of a text that holds this one."""
        # Hints are tested on the text as given: a replacement cannot make one hold (placeholders hold no
        # digit, colon, @ or key mark).
        for pii in self.hinted_types(text, among):
            text = pii.pattern.sub(lambda match, pii=pii: self._replace(pii, match), text)
        return text

    def _replace(self, pii: PiiType, match: re.Match) -> str:
        if pii.valid is not None and not pii.valid(match.group(0)):
            return match.group(0)
        self.counts[pii.name] += 1
        return pii.placeholder


def scrubber_from_params(section: Any, where: str = "clean.pii") -> PiiScrubber | None:
    """The scrubber `clean.pii` asks for, or None when it is switched off."""
    if not isinstance(section, dict) or set(section) != {"enabled", "types"}:
        raise ChatmillError(f"params.yaml: {where} must hold exactly enabled and types, got {section!r}")
    if not require(section, "enabled", where, bool):
        return None
    return PiiScrubber(require(section, "types", where, list))
