"""fetch: every source of params.yaml into data/raw/NAME/<file name>, plus data/raw/manifest.json
(uri, bytes, sha256 of each file). Local files are copied, http(s) URLs streamed, hf://datasets/...
files downloaded through the Hugging Face cache; each is checked against its sha256 when given."""

from chatmill.errors import exit_on_error
from chatmill.fetch import fetch_all, fetch_progress
from chatmill.layout import RAW_DIR
from chatmill.params import stage_params
from chatmill.sources import validate_sources


@exit_on_error
def main() -> None:
    sources = validate_sources(stage_params("fetch")["sources"], needed=("uri",))
    with fetch_progress() as progress:
        manifest = fetch_all(sources, RAW_DIR, progress)
    for name, entry in manifest.items():
        print(f"fetch: {name}: {RAW_DIR}/{entry['file']} ({entry['bytes']} bytes, sha256 {entry['sha256']})")


if __name__ == "__main__":
    main()
