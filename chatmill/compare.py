"""Two runs side by side (`make compare A=... B=...`): the metrics of each with the change (all but the
per-setting numbers within each prompt set), and reports/compare.html with both runs' samples, prompt
by prompt.

    python -m chatmill.compare A B

A and B are model folders (evaluated now with the eval params of params.yaml), git revisions or DVC
experiments (their sample-eval results read from the DVC cache), or `workspace`.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from chatmill.errors import ChatmillError, exit_on_error
from chatmill.evaluation import evaluate, report_run, validate_eval
from chatmill.io import atomic_write_text
from chatmill.layout import BREAKDOWN_FILE, COMPARE_FILE, SAMPLES_FILE, is_model_folder
from chatmill.params import load_params
from chatmill.rating import rating_section
from chatmill.report import render_report


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Dotted names of the numbers, as `dvc metrics diff` shows them."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def in_diff_table(name: str) -> bool:
    """The diff table's rows: everything but the per-setting numbers within each prompt set."""
    return not re.fullmatch(r"prompt_sets\.[^.]+\.settings\..*", name)


def diff_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(metric, value in A, value in B) for every metric of either in the diff table, A's order first."""
    flat_a, flat_b = flatten(a), flatten(b)
    names = [name for name in {**flat_a, **flat_b} if in_diff_table(name)]
    return [(name, flat_a.get(name), flat_b.get(name)) for name in names]


def diff_table(rows: list[tuple[str, float | None, float | None]], labels: tuple[str, str]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    lines = [("metric", *labels, "change (B - A)")]
    for name, a, b in rows:
        change = "-" if a is None or b is None else f"{b - a:+.4g}" if b != a else "0"
        lines.append((name, number(a), number(b), change))
    widths = [max(len(line[column]) for line in lines) for column in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def revision_files(source: str) -> tuple[str, str]:
    """The text of the metrics breakdown and samples files in the workspace, a git revision or a DVC
    experiment (through the DVC cache)."""
    if source == "workspace":
        if not BREAKDOWN_FILE.is_file() or not SAMPLES_FILE.is_file():
            raise ChatmillError(
                f"compare: the workspace has no {BREAKDOWN_FILE}; run `dvc repro sample-eval`"
            )
        return BREAKDOWN_FILE.read_text(), SAMPLES_FILE.read_text()
    import dvc.api  # only here: importing DVC takes seconds
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import resolve_rev
    from scmrepo.exceptions import SCMError

    try:
        with Repo(".") as repo:
            rev = resolve_rev(repo.scm, source)
        return dvc.api.read(str(BREAKDOWN_FILE), rev=rev), dvc.api.read(str(SAMPLES_FILE), rev=rev)
    except (DvcException, SCMError, FileNotFoundError) as error:
        raise ChatmillError(
            f"compare: {source} is not a model folder, and its sample-eval results cannot be read as a "
            f"git revision or DVC experiment ({type(error).__name__}: {error})".replace("\n", " ")
        ) from None


def read_revision(source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    metrics, samples = revision_files(source)
    rows = [json.loads(line) for line in samples.splitlines()]
    if rows and "acceptable" not in rows[0]:
        raise ChatmillError(
            f"compare: {source} was evaluated by an older sample-eval; re-run its sample-eval"
        )
    return json.loads(metrics), rows


def run_results(source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's sample-eval metrics and samples: a model folder is evaluated here with the eval params of
    params.yaml; anything else is read as a git revision or DVC experiment. `make rate` reads runs so too."""
    if is_model_folder(source):
        print(f"compare: evaluating {source} with the eval params of params.yaml", file=sys.stderr)
        return evaluate(Path(source), validate_eval(load_params("eval")["eval"]))
    return read_revision(source)


def compare(sources: list[str]) -> None:
    """Print the metric diff table of two runs and write both side by side to COMPARE_FILE, with the
    testers' judgements of the pair when there are some (`make rate`)."""
    runs = [report_run(source, *run_results(source)) for source in sources]
    print(diff_table(diff_rows(runs[0].metrics, runs[1].metrics), (sources[0], sources[1])))
    page = render_report(
        runs, f"sample-eval: {sources[0]} vs {sources[1]}", rating_section(sources[0], sources[1])
    )
    atomic_write_text(COMPARE_FILE, page)
    print(f"\nsamples side by side: {COMPARE_FILE}")


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs=2, metavar="RUN", help="model folders, git revisions or experiments")
    compare(parser.parse_args().runs)


if __name__ == "__main__":
    main()
