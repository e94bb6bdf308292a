"""One-line, user-facing errors and the wrapper that prints them instead of a traceback."""

import functools
import sys
from collections.abc import Callable


class ChatmillError(Exception):
    """Bad input or config. The message says what is wrong, where, and how to fix it."""


def exit_on_error(main: Callable[[], None]) -> Callable[[], None]:
    """Run a stage's main(); a ChatmillError becomes one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except ChatmillError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper
