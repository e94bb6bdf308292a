"""chatmill: the shared vocabulary of the pipeline stages (schema, formats, prompt, io)."""

__version__ = "0.1.0"
