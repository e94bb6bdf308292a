"""File helpers shared by the stages: atomic outputs, stable hashes, JSON and parquet; and the
ordered process pool of the stages that spread per-record work over every core."""

import collections
import contextlib
import gc
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chatmill.errors import ChatmillError

HASH_CHUNK = 1 << 20


def stable_hash(*parts: object) -> str:
    """Hex digest that depends only on the parts' text: the same on every machine and run."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def unit_interval(*parts: object) -> float:
    """Map the parts to a number in [0, 1): a seeded coin that ignores order and worker count."""
    return int(stable_hash(*parts)[:16], 16) / 2**64


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block completes.

    A killed stage leaves at most a hidden `.name.tmp-PID` sibling, never a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    temporary = _temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        remove(temporary)
        raise
    remove(path)
    temporary.rename(path)


def _remove_stale_siblings(path: Path) -> None:
    """Temporary siblings left by a writer that was killed (its PID is in the name)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        remove(stale)


def atomic_write_text(path: Path, text: str) -> None:
    """Write the file under a hidden name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    temporary = _temporary_sibling(path)
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dump_json(obj))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter); itertools.batched is 3.12+."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def worker_count(workers: Any, key: str) -> int:
    """The processes params key `key` asks for: 0 means every core this process may use."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ChatmillError(f"params.yaml: {key}={workers!r} must be an integer >= 0 (0 = all cores)")
    return workers or len(os.sched_getaffinity(0))


def ordered_pool_map(
    function: Callable[[Any], Any],
    tasks: Iterable,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[tuple[Any, Any]]:
    """(task, function(task)) for every task, in input order, computed on `workers` processes, or in
    this one when workers is 1 (after calling initializer here). Each worker process calls
    initializer(*initargs) once. At most 2 x workers tasks are in flight, so memory stays flat however
    long `tasks` is (Pool.imap would read all of them ahead); results in input order make the output
    the same for any worker count."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield task, function(task)
        return
    # Objects that exist now are frozen out of the garbage collector: a collection in a worker would
    # otherwise write to every one of them and so copy all pages it shares with this process (the
    # shard workers held ~90 MB more each, measured).
    gc.freeze()
    try:
        with multiprocessing.Pool(workers, initializer, initargs) as pool:  # leaving terminates the workers
            in_flight: collections.deque = collections.deque()
            for task in tasks:
                in_flight.append((task, pool.apply_async(function, (task,))))
                if len(in_flight) >= 2 * workers:
                    task, result = in_flight.popleft()
                    yield task, result.get()
            while in_flight:
                task, result = in_flight.popleft()
                yield task, result.get()
    finally:
        gc.unfreeze()


def write_parquet(path: Path, schema: pa.Schema, rows: Iterable[dict], batch_size: int = 2048) -> int:
    """Stream rows into a parquet file in batches (flat memory); return the number written."""
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def record_batches(
    path: Path, columns: list[str] | None = None, batch_size: int = 2048
) -> Iterator[pa.RecordBatch]:
    """Stream a parquet file's record batches (of the given columns, default all), in file order."""
    # pre_buffer=False: pre-buffering would hold the whole compressed file in memory
    return pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)


def read_parquet(path: Path, batch_size: int = 2048) -> Iterator[dict]:
    """Stream rows of a parquet file as dicts, one record batch at a time."""
    for batch in record_batches(path, batch_size=batch_size):
        yield from batch.to_pylist()
