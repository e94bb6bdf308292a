"""One-line, user-facing errors and the wrapper that prints them instead of a traceback."""

import functools
import sys
from collections.abc import Callable

from chatmill.timings import mark


class ChatmillError(Exception):
    """Bad input or config. The message says what is wrong, where, and how to fix it."""


def exit_on_error(main: Callable[[], None]) -> Callable[[], None]:
    """Run a stage's main(); a ChatmillError becomes one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper() -> None:
        mark("import")  # the stage's module-level imports are done
        try:
            main()
        except ChatmillError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper
