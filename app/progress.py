"""Progress while a folder runs: case i of N, the stage running, and the time left.

On a terminal this is a tqdm bar (log lines are routed around it); in a log file or a
container's output, where a redrawn bar turns into noise, it is one plain line per case.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

_IMPORTED = time.perf_counter()

log = logging.getLogger("app")


def seconds_since_process_start() -> float:
    """This process's age, from the kernel's record of its start (Linux), so that the interpreter's
    own start and every import count, as the organisers' clock counts them."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED  # elsewhere: since this module was imported


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; short and readable in a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Progress:
    """Reports a run of ``total`` cases; silent when ``enabled`` is False (``--quiet``)."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._stack = ExitStack()
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm  # only on a terminal: its import costs about 0.1 s of every start
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, unit="case", file=self.stream, dynamic_ncols=True, leave=True)
            self._stack.enter_context(logging_redirect_tqdm())

    def seconds_left(self) -> float | None:
        """Mean time of the finished cases times the cases still to run; None before the first."""
        if not self.done:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)

    def start_case(self, index: int, name: str) -> None:
        """Case ``index`` (from 1) begins."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(f"case {index}/{self.total} {name}")
            return
        left = self.seconds_left()
        eta = f" (about {format_seconds(left)} left)" if left is not None else ""
        log.info("case %d of %d: %s%s", index, self.total, name, eta)

    def stage(self, name: str) -> None:
        """A stage of the current case begins."""
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        elif self.enabled:
            log.debug("  %s", name)

    def end_case(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str("")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._stack.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
