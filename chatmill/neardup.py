"""Near-duplicate conversations: MinHash of word shingles, banded LSH, first copy kept.

A conversation's turns (not persona or scenario, which every conversation of a character shares)
become hashed, lower-cased word shingles; datasketch's MinHash turns them into a signature. The signature's
first bands x rows values, cut into bands, look up earlier kept conversations sharing a band; a
candidate counts only if the signatures' estimated Jaccard similarity reaches the threshold. The
first conversation in reading order is kept, later ones that match it are dropped.

The index is ours rather than datasketch's MinHashLSH, which keeps every band's bytes twice per key:
measured on 50,000 signatures with 16 bands, MinHashLSH held 5.6 KB per conversation, a dict of
integer band hashes 1.4 KB. Per kept conversation we store one integer per band and its signature's
low 16 bits (2 bytes per permutation), never its text: about 0.95 KB with the default 10 bands and
128 permutations (measured on 20,000 conversations), so a million kept conversations take ~1 GB.
Recall is set by the threshold, not the bands: 16 x 6 and 10 x 4 dropped the same near-copies.
"""

import itertools
import zlib
from typing import Any

import numpy as np
from datasketch import MinHash

from chatmill.errors import ChatmillError
from chatmill.filters import ConversationFilter, lower_words, turn_words
from chatmill.schema import Conversation

SHINGLE_MULTIPLIER = np.uint64(0x100000001B3)  # the 64-bit FNV prime: odd, its bits well spread
BLOCK = 4096  # signatures are stored in blocks of this many rows, so the store grows without copying
BandedSignature = tuple[np.ndarray, list[int]]  # a signature's low 16 bits and its band keys


def shingle_hashes(texts: list[str], size: int) -> np.ndarray:
    """32-bit hashes of the lower-cased word `size`-grams of the texts; see word_shingle_hashes."""
    return word_shingle_hashes(lower_words("\n".join(texts)), size)


def word_shingle_hashes(words: list[str], size: int) -> np.ndarray:
    """32-bit hashes of the word `size`-grams; fewer words than one shingle are one.

    Each word is hashed once (crc32) and the shingles' hashes are rolled from them with numpy: three
    times faster than hashing every shingle's text with datasketch's default sha1 (measured on the
    sample: 3.9 s -> 1.3 s for 4,100 conversations).
    """
    if not words:
        return np.empty(0, dtype=np.uint32)
    hashes = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    size = min(size, len(words))
    count = len(words) - size + 1
    rolled = hashes[:count].copy()
    for offset in range(1, size):  # wrapping uint64 arithmetic: a polynomial hash of the shingle
        rolled = rolled * SHINGLE_MULTIPLIER + hashes[offset : offset + count]
    return (rolled ^ (rolled >> np.uint64(32))).astype(np.uint32)


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine32 permutations."""
    values = values ^ (values >> np.uint32(16))
    values *= np.uint32(0x85EBCA6B)  # wrapping uint32 arithmetic
    values ^= values >> np.uint32(13)
    values *= np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def minhash_values(hashes: np.ndarray, permutations: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The hashvalues of datasketch's MinHash(scheme="affine32", permutations=...) after update_batch of
    the already hashed uint32 values, computed in numpy. update_batch takes them through a Python list
    and two temporary matrices: 8x slower for a conversation of 3,000 shingles (2.6 ms -> 0.33 ms,
    measured with 128 permutations). tests/test_neardup.py checks that both give the same values."""
    multipliers, offsets = permutations
    permuted = np.multiply.outer(fmix32(hashes.astype(np.uint32)), multipliers)
    permuted += offsets
    return permuted.min(axis=0)


class NearDuplicate(ConversationFilter):
    """Drops a conversation whose estimated Jaccard similarity to an earlier kept one is >= threshold."""

    name = "near_duplicate"
    remembers = True
    PARAMS = {
        "shingle_size": (int, 1, 100),
        "num_perm": (int, 2, 1024),
        "bands": (int, 1, 1024),
        "rows": (int, 1, 1024),
        "threshold": (float, 0.0, 1.0),
        "seed": (int, 0, 2**32 - 1),
    }

    def __init__(self, shingle_size: int, num_perm: int, bands: int, rows: int, threshold: float, seed: int):
        if bands * rows > num_perm:
            raise ChatmillError(
                f"params.yaml: clean.near_dup.bands x rows = {bands * rows} is more than "
                f"num_perm={num_perm}; lower bands or rows, or raise num_perm"
            )
        self.shingle_size, self.num_perm, self.bands, self.rows = shingle_size, num_perm, bands, rows
        self.threshold = threshold
        # Drawn once and shared, in the form the affine32 scheme keeps them: MinHash would otherwise draw
        # (or convert) them again for every conversation.
        drawn = MinHash(num_perm=num_perm, seed=seed).permutations
        self.permutations = MinHash(num_perm=num_perm, permutations=drawn, scheme="affine32").permutations
        # Band values -> one 64-bit key: a fixed random odd multiplier per row, wrapping arithmetic.
        rng = np.random.RandomState(seed)
        self.row_weights = rng.randint(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.buckets: list[dict[int, int]] = [{} for _ in range(bands)]  # band key -> first kept number
        self.blocks: list[np.ndarray] = []
        self.indexed = 0
        self.dropped = 0
        self.clusters: set[int] = set()  # kept conversations that had a near-duplicate dropped

    def signature(self, conversation: Conversation) -> np.ndarray | None:
        """The MinHash of the conversation's turns, or None when they hold no word at all."""
        words = list(itertools.chain.from_iterable(turn_words(conversation)))  # as LoopingBot read them
        hashes = word_shingle_hashes(words, self.shingle_size)
        if not hashes.size:
            return None
        return minhash_values(hashes, self.permutations)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        bands = signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            return (bands * self.row_weights).sum(axis=1, dtype=np.uint64).tolist()

    def stored(self, number: int) -> np.ndarray:
        return self.blocks[number // BLOCK][number % BLOCK]

    def prepare(self, conversation: Conversation) -> BandedSignature | None:
        """The signature's low bits and band keys (None without words): all keep() needs of the text."""
        signature = self.signature(conversation)
        if signature is None:
            return None
        # b-bit MinHash (Li and Koenig, 2010): the low 16 bits estimate Jaccard with a bias below 2^-16.
        return signature.astype(np.uint16), self.band_keys(signature)

    def keep(self, conversation: Conversation) -> bool:
        return self.keep_prepared(conversation, self.prepare(conversation))

    def keep_prepared(self, conversation: Conversation, prepared: BandedSignature | None) -> bool:
        if prepared is None:  # no words ("...", emoji only): nothing to compare, so nothing to drop
            return True
        low_bits, keys = prepared
        candidates = dict.fromkeys(
            bucket[key] for bucket, key in zip(self.buckets, keys, strict=True) if key in bucket
        )
        for number in candidates:  # band order, so the match found is the same on every run
            if np.count_nonzero(self.stored(number) == low_bits) >= self.threshold * self.num_perm:
                self.dropped += 1
                self.clusters.add(number)
                return False
        if self.indexed % BLOCK == 0:
            self.blocks.append(np.empty((BLOCK, self.num_perm), dtype=np.uint16))
        self.blocks[-1][self.indexed % BLOCK] = low_bits
        for bucket, key in zip(self.buckets, keys, strict=True):
            bucket.setdefault(key, self.indexed)
        self.indexed += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {"clusters": len(self.clusters), "dropped": self.dropped, "indexed": self.indexed}
