"""One way to count a data stage: every record that enters is kept, dropped for a reason, or
quarantined, and each is counted per source. The totals reconcile by construction,
in == out + sum(dropped) + quarantined, so a stage cannot lose a record without a reason."""

from collections import Counter
from collections.abc import Iterable
from typing import Any

NO_SOURCE = ""  # for stages whose records are not told apart by source (shard)


class StageStats:
    """The counts of one stage run, and what it has to report besides them (`extra`)."""

    def __init__(self) -> None:
        self.sources: dict[str, Counter] = {}
        self.extra: dict[str, Any] = {}

    def _count(self, source: str, outcome: str, count: int) -> None:
        if count:
            counts = self.sources.setdefault(source, Counter())
            counts["in"] += count
            counts[outcome] += count

    def add_sources(self, names: Iterable[str]) -> None:
        """Sources the table lists even when none of their records come in: a source emptied by an
        earlier stage shows as `in: 0, out: 0`, not as a missing line."""
        for name in names:
            self.sources.setdefault(name, Counter())

    def keep(self, source: str = NO_SOURCE, count: int = 1) -> None:
        self._count(source, "out", count)

    def drop(self, reason: str, source: str = NO_SOURCE, count: int = 1) -> None:
        self._count(source, f"dropped_{reason}", count)

    def quarantine(self, source: str = NO_SOURCE, count: int = 1) -> None:
        self._count(source, "quarantined", count)

    def total(self, outcome: str) -> int:
        return sum(counts[outcome] for counts in self.sources.values())

    @property
    def records_in(self) -> int:
        return self.total("in")

    @property
    def records_out(self) -> int:
        return self.total("out")

    @property
    def quarantined(self) -> int:
        return self.total("quarantined")

    @property
    def dropped(self) -> dict[str, int]:
        reasons: Counter = Counter()
        for counts in self.sources.values():
            reasons.update(
                {key[len("dropped_") :]: n for key, n in counts.items() if key.startswith("dropped_")}
            )
        return dict(sorted(reasons.items()))

    def source_table(self, outcomes: tuple[str, ...] | None = None) -> dict[str, dict[str, int]]:
        """Per source (by name), its counts: in and out (zero too), quarantined and dropped_REASON
        where not zero; or exactly the named `outcomes`, zero too."""

        def row(counts: Counter) -> dict[str, int]:
            keys = outcomes if outcomes is not None else {"in", "out", *counts}
            return {key: counts[key] for key in sorted(keys)}

        return {name: row(counts) for name, counts in sorted(self.sources.items()) if name != NO_SOURCE}

    def to_dict(self) -> dict[str, Any]:
        """stats.json: the totals, then what the stage adds."""
        return {
            "in": self.records_in,
            "out": self.records_out,
            "dropped": self.dropped,
            "quarantined": self.quarantined,
            **self.extra,
        }
