"""Packed training sequences on disk: one folder per part, fixed-length int32 arrays.

input_ids.npy     [sequences, seq_len]  token ids (padding uses the pad token)
labels.npy        [sequences, seq_len]  the token id where the loss is computed, else -100
position_ids.npy  [sequences, seq_len]  restart at 0 for every packed document, so attention
                                        never crosses documents (transformers builds a
                                        block-diagonal causal mask from them)
"""

from pathlib import Path

import numpy as np

IGNORE_INDEX = -100
ARRAYS = ("input_ids", "labels", "position_ids")


def save_shard(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", arrays[name].astype(np.int32), allow_pickle=False)


def load_shard(folder: Path) -> dict[str, np.ndarray]:
    """Memory-mapped: a part of gigabytes is read a batch at a time."""
    return {name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
