"""chatmill: the shared vocabulary of the pipeline stages (schema, formats, prompt, io)."""

from chatmill import timings

__version__ = "0.1.0"

timings.start()  # records this process for `make bench-repro` when CHATMILL_TIMINGS is set
