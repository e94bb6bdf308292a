"""clean: data/raw -> data/clean: canonical conversations, normalised, PII-scrubbed, filtered and
de-duplicated (exact, then near-duplicates); every malformed record in quarantine.jsonl with its
reason, and stats.json where in == out + dropped + quarantined. Output is byte-identical for any
clean.workers (0 = all cores)."""

from chatmill.clean import clean_raw, source_formats
from chatmill.errors import exit_on_error
from chatmill.io import worker_count
from chatmill.layout import CLEAN_DIR, RAW_DIR
from chatmill.params import stage_params, stage_settings


@exit_on_error
def main() -> None:
    params = stage_params("clean")
    workers = worker_count(stage_settings("clean.workers")["clean"]["workers"], "clean.workers")
    clean_raw(RAW_DIR, CLEAN_DIR, source_formats(params["sources"]), params["clean"], workers)


if __name__ == "__main__":
    main()
