"""Results of ``fn(0), fn(1), fn(2), ...`` in order, computed ahead in worker processes.

A training cycle consumes phantoms one by one, each a pure function of its index (``[seed, k]``).
Generating one takes seconds of CPU; on a GPU a training step takes milliseconds, so a cycle that
generates in its own process spends most of its time with the GPU idle. Computed ahead on the
machine's other cores, the phantoms are the same and arrive in the same order: the weights a recipe
trains do not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    """``next(p)`` gives ``fn(k)`` for k = 0, 1, 2, ...; with ``workers`` > 0 up to ``ahead`` (default
    twice the workers) are computed ahead in spawned processes (``fn`` and its results must pickle;
    ``initializer`` runs once in each), with 0 each is computed on demand in this process."""

    def __init__(self, fn: Callable[[int], T], workers: int = 0, ahead: int | None = None,
                 initializer: Callable[[], None] | None = None) -> None:
        self.fn, self.index = fn, 0
        self.pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer)
                     if workers > 0 else None)
        self.ahead = max(1, ahead if ahead is not None else 2 * workers)
        self.pending: deque[Future[T]] = deque()
        self.submitted = 0

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self.pool is None:
            out = self.fn(self.index)
        else:
            self._fill()
            out = self.pending.popleft().result()  # a worker's exception is raised here
            self._fill()
        self.index += 1
        return out

    def _fill(self) -> None:
        while self.pool is not None and len(self.pending) < self.ahead:
            self.pending.append(self.pool.submit(self.fn, self.submitted))
            self.submitted += 1

    def close(self) -> None:
        """Stop the workers; results computed ahead and not taken are dropped."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
            self.pending.clear()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
