"""Per-stage accounting: every record that enters leaves as output, a drop with a reason, or quarantine."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    records_in: int = 0
    records_out: int = 0
    quarantined: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def reconciles(self) -> bool:
        return self.records_in == self.records_out + sum(self.dropped.values()) + self.quarantined

    def to_dict(self) -> dict[str, Any]:
        if not self.reconciles():
            raise AssertionError(f"stats do not reconcile: {self}")
        return {
            "in": self.records_in,
            "out": self.records_out,
            "dropped": dict(sorted(self.dropped.items())),
            "quarantined": self.quarantined,
            **self.extra,
        }
