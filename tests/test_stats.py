from chatmill.stats import StageStats


def test_every_record_is_kept_dropped_or_quarantined_and_the_totals_reconcile():
    stats = StageStats()
    stats.keep("logs", 3)
    stats.drop("duplicate", "logs")
    stats.drop("duplicate", "tasks", 2)
    stats.drop("zalgo", "tasks")
    stats.quarantine("logs")
    summary = stats.to_dict()
    assert summary == {"in": 8, "out": 3, "dropped": {"duplicate": 3, "zalgo": 1}, "quarantined": 1}
    assert summary["in"] == summary["out"] + sum(summary["dropped"].values()) + summary["quarantined"]


def test_the_source_table_counts_each_outcome_per_source():
    stats = StageStats()
    stats.keep("tasks")
    stats.drop("short_replies", "logs", 2)
    stats.keep("logs")
    assert stats.source_table() == {
        "logs": {"dropped_short_replies": 2, "in": 3, "out": 1},
        "tasks": {"in": 1, "out": 1},
    }
    assert stats.source_table(("in", "out")) == {"logs": {"in": 3, "out": 1}, "tasks": {"in": 1, "out": 1}}


def test_a_count_of_zero_records_nothing_and_extra_goes_into_the_summary():
    stats = StageStats()
    stats.drop("downsampled", "logs", 0)
    stats.keep()  # a stage whose records have no source
    stats.extra["rows"] = 5
    assert stats.source_table() == {}
    assert stats.to_dict() == {"in": 1, "out": 1, "dropped": {}, "quarantined": 0, "rows": 5}


def test_the_source_table_always_has_in_and_out_and_added_sources_show_at_zero():
    stats = StageStats()
    stats.add_sources(["emptied", "logs"])
    stats.drop("short_replies", "logs", 2)
    assert stats.source_table() == {
        "emptied": {"in": 0, "out": 0},
        "logs": {"dropped_short_replies": 2, "in": 2, "out": 0},
    }
    assert stats.source_table(("in", "out", "quarantined")) == {
        "emptied": {"in": 0, "out": 0, "quarantined": 0},
        "logs": {"in": 2, "out": 0, "quarantined": 0},
    }
    assert stats.to_dict() == {"in": 2, "out": 0, "dropped": {"short_replies": 2}, "quarantined": 0}
