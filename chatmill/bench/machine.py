"""What every benchmark records beside its figures: the machine it ran on, and repeated timings
summarised as a median with its spread (the verdicts use the median)."""

import os
import platform
import re
import statistics
from pathlib import Path

import torch


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def blas() -> str:
    """The BLAS torch was built with (MKL, OpenBLAS, ...), as torch's build settings name it."""
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def machine() -> dict:
    """CPU model, cores this process may use, torch threads, BLAS and versions."""
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "blas": blas(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def spread(values: list[float], digits: int = 2) -> dict:
    """Median, min and max of repeated measurements, and every repetition."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "repetitions": [round(value, digits) for value in values],
    }


def spread_text(summary: dict) -> str:
    """'6.62 (6.41–6.80)': the median and, in brackets, the range."""
    return f"{summary['median']:,} ({summary['min']:,}–{summary['max']:,})"
