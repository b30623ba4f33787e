"""Results people read: percentiles, markdown tables, the results JSON, the
latency plot, and the progress display while a run goes on."""

from __future__ import annotations

import json
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latencies(chunks: Sequence[bytes]) -> list[float]:
    """Concatenate the generators' packed latency arrays."""
    values = array("d")
    for chunk in chunks:
        values.frombytes(chunk)
    return values.tolist()


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.2f}"


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def plot_chat(path: Path, runs: dict[str, list[dict[str, Any]]]) -> str | None:
    """A PNG of latency percentiles against offered rate, one line per
    target and percentile.  Returns why not, when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e .[bench]): no plot"
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    styles = {"p50": ":", "p99": "-", "p99.9": "--"}
    colours = {"elink": "tab:blue", "plain": "tab:orange"}
    for target, steps in runs.items():
        rates = [s["offered"] for s in steps]
        for key, style in styles.items():
            # An undelivered message makes a percentile infinite: not drawn.
            values = [s["latency_ms"][key] for s in steps]
            axes.plot(
                rates,
                values,
                style,
                marker="o",
                color=colours.get(target),
                label=f"{target} {key}",
            )
    axes.axhline(10, color="grey", linewidth=0.8)
    axes.set_xlabel("offered messages per second")
    axes.set_ylabel("send-to-delivery latency (ms)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_title("e-Link chat latency against offered rate (256-byte texts)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return None


class Progress(Protocol):
    def update(self, text: str) -> None: ...


class _Silent:
    def update(self, text: str) -> None:
        pass


class _Lines:
    """Without rich (or without a terminal): a line every few seconds."""

    def __init__(self) -> None:
        self._next = 0.0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 2.0
            print(text, file=sys.stderr, flush=True)


@contextmanager
def progress_display(enabled: bool) -> Iterator[Progress]:
    """A one-line live status (rich) while the run goes on."""
    if not enabled:
        yield _Silent()
        return
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        yield _Lines()
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Lines()
        return

    class _Rich:
        def __init__(self, live: Live) -> None:
            self.live = live

        def update(self, text: str) -> None:
            self.live.update(Text(text, style="bold cyan"))

    with Live(Text("starting"), console=console, refresh_per_second=4, transient=True) as live:
        yield _Rich(live)
