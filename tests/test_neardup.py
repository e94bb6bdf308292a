"""Near-duplicate removal: near-copies dropped, distinct conversations kept, the first copy kept,
the same decisions on every run, clusters counted; and the defaults on the committed samples."""

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasketch import MinHash

import chatmill.clean as clean
from chatmill.errors import ChatmillError
from chatmill.neardup import NearDuplicate, minhash_values, shingle_hashes
from chatmill.stats import StageStats

# Not conftest's: the subprocess of test_decisions_are_the_same_on_every_run_and_any_hash_seed imports
# this module, and conftest would cost it a torch import.
ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DEFAULTS = {k: v for k, v in PARAMS["clean"]["near_dup"].items() if k != "enabled"}
VOCABULARY = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(-i).randint(2, 9)))
    for i in range(500)
]


def texts(seed: int, turns: int = 8, words: int = 50) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCABULARY, k=words)) for _ in range(turns)]


def conversation(turn_texts: list[str]) -> dict:
    roles = ("user", "bot")
    return {
        "id": "c",  # near-dup reads the turns only
        "source": "logs",
        "bot_name": "Mira",
        "persona": "",
        "scenario": "",
        "turns": [{"role": roles[i % 2], "name": "x", "text": t} for i, t in enumerate(turn_texts)],
        "meta": "{}",
    }


def edited(turn_texts: list[str], changes: int, seed: int) -> list[str]:
    """The same turns with `changes` words replaced at random places."""
    rng = random.Random(seed)
    words = [t.split() for t in turn_texts]
    for _ in range(changes):
        turn = rng.randrange(len(words))
        words[turn][rng.randrange(len(words[turn]))] = "CHANGED"
    return [" ".join(w) for w in words]


def near_duplicates(**changes) -> NearDuplicate:
    return NearDuplicate(**(DEFAULTS | changes))


# ---------------------------------------------------------------- shingles


def test_shingles_ignore_case_and_punctuation():
    assert np.array_equal(
        shingle_hashes(["Hello, there. How ARE you", "today?"], 3),
        shingle_hashes(["hello there how are you today"], 3),
    )
    assert len(shingle_hashes(["one two three four five six"], 5)) == 2


def test_a_text_shorter_than_a_shingle_is_one_shingle_and_no_words_are_none():
    assert len(shingle_hashes(["Yes, ma'am."], 5)) == 1
    assert len(shingle_hashes(["...", "*", " "], 5)) == 0


@pytest.mark.parametrize("count", [1, 2, 7, 3000])
def test_minhash_values_are_datasketch_minhash_values(count):
    permutations = NearDuplicate(**DEFAULTS).permutations
    hashes = np.random.default_rng(count).integers(0, 2**32, size=count, dtype=np.uint64).astype(np.uint32)
    reference = MinHash(
        num_perm=len(permutations[0]), permutations=permutations, scheme="affine32", hashfunc=int
    )
    reference.update_batch(hashes.tolist())
    values = minhash_values(hashes, permutations)
    assert values.dtype == reference.hashvalues.dtype
    assert np.array_equal(values, reference.hashvalues)


# ---------------------------------------------------------------- decisions


def test_near_duplicates_differing_in_a_few_words_are_dropped_and_distinct_ones_kept():
    originals = [texts(seed) for seed in range(30)]
    copies = [edited(originals[i], changes=1 + i % 3, seed=i) for i in range(0, 30, 3)]
    short_copies = [edited(texts(100 + i, turns=4, words=40), 1, i) for i in range(5)]  # 160 words, 1 edit
    index = near_duplicates()
    assert all(index.keep(conversation(t)) for t in originals)
    assert all(index.keep(conversation(texts(100 + i, turns=4, words=40))) for i in range(5))
    assert not any(index.keep(conversation(t)) for t in copies + short_copies)
    assert index.stats() == {"clusters": 15, "dropped": 15, "indexed": 35}


def test_conversations_sharing_a_greeting_but_not_their_turns_are_kept():
    """Template-made data: every conversation of a character opens with the same long greeting."""
    greeting = texts(0, turns=1, words=80)
    index = near_duplicates()
    assert all(index.keep(conversation(greeting + texts(seed, turns=4, words=30))) for seed in range(1, 40))


def test_a_conversation_without_words_is_kept_and_not_indexed():
    index = near_duplicates()
    assert index.keep(conversation(["...", "*"]))
    assert index.keep(conversation(["...", "*"]))
    assert index.stats() == {"clusters": 0, "dropped": 0, "indexed": 0}


def test_stats_count_clusters_drops_and_indexed_conversations():
    a, b, c = texts(1), texts(2), texts(3)
    index = near_duplicates()
    kept = [index.keep(conversation(t)) for t in (a, b, edited(a, 1, 0), c, edited(a, 2, 1), edited(b, 1, 2))]
    assert kept == [True, True, False, True, False, False]
    assert index.stats() == {"clusters": 2, "dropped": 3, "indexed": 3}


def test_more_signatures_than_a_storage_block():
    index = near_duplicates()
    assert all(index.keep(conversation(texts(seed, turns=2, words=10))) for seed in range(5000))
    assert not index.keep(conversation(texts(4999, turns=2, words=10)))
    assert index.stats()["indexed"] == 5000


def test_the_first_copy_in_reading_order_is_kept(tmp_path):
    """Sources are read sorted by name, each in file order: a_logs' copy wins over b_logs' original."""
    original, copy, other = texts(1), edited(texts(1), 2, 0), texts(2)

    def jsonl(*conversations: list[str]) -> str:
        roles = ("human", "gpt")
        records = [
            {
                "id": f"line{i}",
                "conversations": [{"from": roles[j % 2], "value": t} for j, t in enumerate(turns)],
            }
            for i, turns in enumerate(conversations, 1)
        ]
        return "".join(json.dumps(r) + "\n" for r in records)

    for name, content in {"b_logs": jsonl(original, other), "a_logs": jsonl(other, copy, original)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "logs.jsonl").write_text(content)
    scrubber, filters = clean.build_filters(PARAMS["clean"])
    stats = StageStats()
    kept = clean.clean_sources(
        {"b_logs": "sharegpt", "a_logs": "sharegpt"},
        {name: {"file": f"{name}/logs.jsonl"} for name in ("a_logs", "b_logs")},
        tmp_path,
        io.StringIO(),
        stats,
        scrubber,
        filters,
    )
    assert [(c["source"], json.loads(c["meta"])["origin_id"]) for c in kept] == [
        ("a_logs", "line1"),
        ("a_logs", "line2"),
    ]
    # a_logs' original is a near-copy of its copy; b_logs' lines are exact copies of a_logs' ones
    assert dict(stats.dropped) == {"near_duplicate": 1, "duplicate": 2}
    assert stats.extra["near_duplicate"] == {"clusters": 1, "dropped": 1, "indexed": 2}
    assert stats.records_in == 5
    assert stats.records_in == stats.records_out + sum(stats.dropped.values()) + stats.quarantined


# Run with tests/ as its folder and PYTHONPATH, so it imports this module without touching sys.path.
DECISIONS = """
import json, random
from test_neardup import conversation, edited, near_duplicates, texts
index = near_duplicates()
rng = random.Random(7)
seeds = [rng.randrange(20) for _ in range(60)]
turns = [edited(texts(s), rng.randrange(4), i) for i, s in enumerate(seeds)]
decisions = [index.keep(conversation(t)) for t in turns]
signature = index.signature(conversation(texts(0))).tolist()
print(json.dumps([decisions, signature, index.stats()]))
"""


def test_decisions_are_the_same_on_every_run_and_any_hash_seed():
    runs = []
    for seed in ("0", "12345"):
        env = os.environ | {"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT / "tests")}
        result = subprocess.run(
            [sys.executable, "-c", DECISIONS], cwd=ROOT / "tests", env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        runs.append(result.stdout)
    assert runs[0] == runs[1]
    decisions, _, stats = json.loads(runs[0])
    assert 0 < stats["dropped"] < 60 and decisions.count(True) == stats["indexed"]


# ---------------------------------------------------------------- params


def test_switched_off_it_is_not_built():
    assert (
        NearDuplicate.from_params(PARAMS["clean"]["near_dup"] | {"enabled": False}, "clean.near_dup") is None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"bands": 20, "rows": 8},
            r"clean\.near_dup\.bands x rows = 160 is more than num_perm=128; lower bands",
        ),
        ({"threshold": 1.2}, r"clean\.near_dup\.threshold must be in \[0\.0, 1\.0\], got 1\.2$"),
        ({"shingle_size": 0}, r"clean\.near_dup\.shingle_size must be in \[1, 100\], got 0$"),
        ({"num_perm": 12.5}, r"clean\.near_dup\.num_perm must be int, got 12\.5$"),
        ({"permutations": 64}, r"clean\.near_dup has unknown permutations; known: enabled, shingle_size, "),
    ],
)
def test_bad_params_are_one_line_errors(change, message):
    with pytest.raises(ChatmillError, match=message):
        NearDuplicate.from_params(PARAMS["clean"]["near_dup"] | change, "clean.near_dup")


# ---------------------------------------------------------------- the committed samples


def test_defaults_drop_no_sample_chat_log_and_only_near_copies_of_instructions():
    """The generator builds conversations from templates: chat logs of one character share greetings
    and phrases but are not copies (none reaches a similarity of 0.6); the instruction samples hold
    reworded near-copies (an instruction phrased twice, a signature changed)."""
    sources = PARAMS["sources"]
    manifest = {name: {"file": Path(source["uri"]).name} for name, source in sources.items()}
    scrubber, filters = clean.build_filters(PARAMS["clean"])
    stats = StageStats()
    formats = clean.source_formats(sources)
    kept = list(
        clean.clean_sources(formats, manifest, ROOT / "data/sources", io.StringIO(), stats, scrubber, filters)
    )
    per_source = stats.extra["sources"]
    assert "dropped_near_duplicate" not in per_source["community_logs"]
    assert "dropped_near_duplicate" not in per_source["fresh_logs"]
    assert 0 < per_source["instructions"]["dropped_near_duplicate"] < 0.3 * per_source["instructions"]["in"]
    assert len(kept) > 0.95 * (stats.records_in - stats.quarantined - stats.dropped["duplicate"])
