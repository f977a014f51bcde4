"""Resource sampling in a separate process, the way the FLARE organisers sample.

GPU memory is whole-device used memory (total - free, MiB) from NVML, read then sleep 0.1 s;
system CPU utilisation and RAM come from psutil; every sample carries a timestamp. The GPU
reader sits behind a tiny interface so tests can replay a recorded series.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

INTERVAL_S = 0.1


class MemoryReader(Protocol):
    def read_mib(self) -> float: ...


class NvmlReader:
    """Device-wide used memory of one GPU through nvidia-ml-py (``nvmlDeviceGetMemoryInfo``)."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self._handle)

    def read_mib(self) -> float:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return (info.total - info.free) / 2**20


class RecordedReader:
    """Replays a recorded series of MiB readings (the last one repeats)."""

    def __init__(self, series: Sequence[float]) -> None:
        self.series = list(series)
        self.i = 0

    def read_mib(self) -> float:
        value = self.series[min(self.i, len(self.series) - 1)]
        self.i += 1
        return value


def open_gpu_reader(index: int) -> tuple[MemoryReader | None, str]:
    """An NVML reader, or None with the reason GPU memory cannot be measured here."""
    try:
        reader = NvmlReader(index)
        reader.read_mib()
        return reader, f"GPU {index}: {reader.name}"
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    except Exception as e:  # noqa: BLE001 - NVML raises its own error types (no driver, no device)
        return None, f"NVML unavailable ({type(e).__name__}: {e})"


@dataclass
class Sample:
    t: float  # seconds since the epoch
    gpu_mib: float | None
    cpu_percent: float
    ram_mib: float


def _loop(reader: MemoryReader | None, stop, ready, conn, interval: float) -> None:
    import psutil

    psutil.cpu_percent(None)
    samples = []
    while True:  # read, then sleep; at least one sample however short the run
        t = time.time()
        gpu = reader.read_mib() if reader is not None else None
        samples.append((t, gpu, psutil.cpu_percent(None), psutil.virtual_memory().used / 2**20))
        ready.set()
        if stop.is_set():
            break
        time.sleep(interval)
    conn.send(samples)
    conn.close()


class Sampler:
    """``with Sampler(reader) as s: ...`` then ``s.samples``; sampling runs in its own process."""

    def __init__(self, reader: MemoryReader | None, interval: float = INTERVAL_S) -> None:
        self.reader, self.interval = reader, interval
        self.samples: list[Sample] = []

    def __enter__(self) -> Sampler:
        ctx = mp.get_context("fork")
        self._stop, ready = ctx.Event(), ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_loop, args=(self.reader, self._stop, ready, send, self.interval), daemon=True)
        self._proc.start()
        ready.wait(10)  # sampling runs before the measured command starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        raw = self._recv.recv() if self._recv.poll(10) else []
        self._proc.join(5)
        self.samples = [Sample(*s) for s in raw]
