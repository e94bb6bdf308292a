"""Fetching sources into a raw folder: RAW/NAME/<file name> for every source, plus manifest.json.

A source is a repo-relative path (copied), an http(s):// URL (streamed) or an hf://datasets/... file
(downloaded through the Hugging Face cache, then copied). Each file is hashed as it is written and
checked against `sha256` when the source gives one. The raw folder is replaced as a whole and only
once every source has arrived, so a failed or killed run leaves the previous output as it was.
"""

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from huggingface_hub import hf_hub_download
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from chatmill.errors import ChatmillError
from chatmill.io import atomic_dir, write_json
from chatmill.sources import HttpUrl, HubFile, LocalPath, parse_uri

CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60  # per socket operation: a stalled server fails the run instead of hanging it


def read_chunks(reader: BinaryIO) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


def write_verified(
    chunks: Iterable[bytes], destination: Path, expected_sha256: str | None, source: str
) -> tuple[int, str]:
    """Write the chunks to `destination`, hashing on the way; return (bytes, sha256).

    The file only takes its real name once complete and verified: an interrupted transfer or a hash
    mismatch leaves nothing behind.
    """
    temporary = destination.with_name(f".{destination.name}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ChatmillError(
                f"fetch: source '{source}': sha256 mismatch: expected {expected_sha256}, got {actual}"
                f" (the file changed, or sources.{source}.sha256 in params.yaml is wrong)"
            )
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.rename(destination)
    return size, actual


def copy_local(path: str, destination: Path, expected_sha256: str | None, source: str) -> tuple[int, str]:
    """Copy a repo-relative file (the stage runs from the repository root)."""
    try:
        reader = open(path, "rb")
    except FileNotFoundError:
        raise ChatmillError(
            f"fetch: source '{source}': {path} not found (check sources.{source}.uri in params.yaml)"
        ) from None
    except OSError as error:  # a directory, no permission, ...
        raise ChatmillError(f"fetch: source '{source}': cannot read {path}: {error.strerror}") from None
    with reader:
        return write_verified(read_chunks(reader), destination, expected_sha256, source)


def download_url(
    url: str, destination: Path, expected_sha256: str | None, source: str, progress: Progress | None = None
) -> tuple[int, str]:
    """Stream an http(s) URL to `destination` in chunks, with a progress bar when given one."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
            chunks = _checked_length(read_chunks(response), expected_size, url, source)
            if progress is not None:
                task = progress.add_task(source, total=expected_size)
                chunks = _advancing(chunks, progress, task)
            return write_verified(chunks, destination, expected_sha256, source)
    except urllib.error.HTTPError as error:
        raise ChatmillError(
            f"fetch: source '{source}': GET {url} failed: HTTP {error.code} {error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise ChatmillError(f"fetch: source '{source}': cannot reach {url}: {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise ChatmillError(
            f"fetch: source '{source}': download of {url} failed: {type(error).__name__}: {error}; run again"
        ) from None


def _checked_length(
    chunks: Iterator[bytes], expected_size: int | None, url: str, source: str
) -> Iterator[bytes]:
    # urllib's read(n) reports a connection closed early as a normal end of file; the length tells them apart.
    received = 0
    for chunk in chunks:
        received += len(chunk)
        yield chunk
    if expected_size is not None and received != expected_size:
        raise ChatmillError(
            f"fetch: source '{source}': download of {url} stopped after {received} of {expected_size} bytes;"
            " run again"
        )


def _advancing(chunks: Iterator[bytes], progress: Progress, task: Any) -> Iterator[bytes]:
    for chunk in chunks:
        progress.advance(task, len(chunk))
        yield chunk


def download_hub(
    location: HubFile, destination: Path, expected_sha256: str | None, source: str
) -> tuple[int, str]:
    """Download a dataset file through the Hugging Face cache, then copy it out.

    The client picks up HF_TOKEN (and HF_ENDPOINT, HF_HUB_CACHE) from the environment by itself.
    """
    try:
        cached = hf_hub_download(
            repo_id=location.repo_id,
            repo_type="dataset",
            filename=location.path_in_repo,
            revision=location.revision,
        )
    except (OSError, ValueError) as error:
        # Hub errors span several lines (status, url, request id); keep the one-line contract.
        message = " ".join(str(error).split())
        raise ChatmillError(
            f"fetch: source '{source}': cannot download {location.path_in_repo} from dataset"
            f" {location.repo_id} at revision {location.revision}: {message}"
        ) from None
    with open(cached, "rb") as reader:
        return write_verified(read_chunks(reader), destination, expected_sha256, source)


def fetch_source(
    name: str, source: dict[str, Any], raw_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Materialise one validated source into raw_dir/NAME/; return its manifest entry."""
    location = parse_uri(source["uri"])
    folder = raw_dir / name
    folder.mkdir()
    destination = folder / location.file_name
    expected = source.get("sha256")
    match location:
        case LocalPath(path):
            size, sha256 = copy_local(path, destination, expected, name)
        case HttpUrl(url):
            size, sha256 = download_url(url, destination, expected, name, progress)
        case HubFile():
            size, sha256 = download_hub(location, destination, expected, name)
    return {
        "uri": source["uri"],
        "file": f"{name}/{destination.name}",
        "bytes": size,
        "sha256": sha256,
    }


def fetch_progress() -> Progress:
    """The downloads' progress bars (local copies are too quick to show)."""
    columns = (TextColumn("fetch {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, transient=True)


def fetch_all(
    sources: dict[str, dict[str, Any]], raw_dir: Path, progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Fetch every source (by name) into a fresh raw_dir with its manifest.json; return the manifest."""
    with atomic_dir(raw_dir) as staging:
        manifest = {name: fetch_source(name, sources[name], staging, progress) for name in sorted(sources)}
        write_json(staging / "manifest.json", manifest)
    return manifest
