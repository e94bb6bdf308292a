"""The generated parts of docs/: tables written from the registries in chatmill/, so that a new
metric (or other registry entry) is defined in one place and its documentation follows.

    python -m chatmill.docs            (`make docs`) rewrite them
    python -m chatmill.docs --check    exit 1 if one is stale (a test runs this)

A generated part sits between `<!-- generated: NAME ... -->` and `<!-- end: NAME -->`.
"""

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from chatmill import metrics

ROOT = Path(__file__).resolve().parents[1]
GENERATED: dict[str, dict[str, Callable[[], str]]] = {
    "docs/sample-eval.md": {"metrics": metrics.docs_table},
}


def regenerate(text: str, parts: dict[str, Callable[[], str]], where: str) -> str:
    """The text with each named part replaced by what its function writes now."""
    for name, write in parts.items():
        block = re.compile(rf"(<!-- generated: {name}\b[^\n]*-->\n).*?(<!-- end: {name} -->)", re.DOTALL)
        if not block.search(text):
            raise SystemExit(
                f"docs: {where} has no <!-- generated: {name} --> ... <!-- end: {name} --> block"
            )
        text = block.sub(lambda match, write=write: match[1] + write() + match[2], text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the tables are up to date")
    args = parser.parse_args()
    stale = []
    for name, parts in GENERATED.items():
        path = ROOT / name
        text = path.read_text()
        fresh = regenerate(text, parts, name)
        if fresh != text:
            stale.append(name)
            if not args.check:
                path.write_text(fresh)
                print(f"docs: wrote the generated tables of {name}")
    if args.check and stale:
        print(f"docs: {', '.join(stale)} stale; run `make docs`", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
