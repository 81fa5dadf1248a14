"""Latency and throughput as the field reports them (MLPerf-style single stream and offline).

* **Single stream**: one input at a time. Warm-up until both ``warmup_runs`` calls and
  ``warmup_seconds`` have passed (first calls pay for allocation, kernel selection, lazy
  compilation); then timed calls until both ``min_runs`` and ``min_seconds`` are reached (capped at
  ``max_runs``). Reported: p50, p90 (MLPerf SingleStream's headline), p99, mean, min, max, the
  number of runs and the seconds they took.
* **Offline**: a batch of ``batch`` inputs per call, timed the same way; reported as images per
  second from the median batch latency.

Each call is timed on its own between two synchronisation points: on CPU the clock is
``time.perf_counter``; on CUDA, events recorded on the stream around the call and read after
``torch.cuda.synchronize`` (the host clock would time the kernel launches, not the kernels).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesr.config import check_range, opt


@dataclass(frozen=True)
class TimingSettings:
    warmup_runs: int = opt(1, "untimed calls first (at least), to absorb one-off costs")
    warmup_seconds: float = opt(0.2, "and warm-up lasts at least this long")
    min_runs: int = opt(20, "timed calls (at least)")
    min_seconds: float = opt(1.0, "and timing lasts at least this long")
    max_runs: int = opt(10_000, "never more timed calls than this (fast models on long minimums)")

    def __post_init__(self) -> None:
        check_range("timing.warmup_runs", self.warmup_runs, low=1)
        check_range("timing.warmup_seconds", self.warmup_seconds, low=0.0)
        check_range("timing.min_runs", self.min_runs, low=1)
        check_range("timing.min_seconds", self.min_seconds, low=0.0)
        check_range("timing.max_runs", self.max_runs, low=self.min_runs)


class Timer:
    """Times one call: ``elapsed_ms(fn)``. The CPU form; :class:`CudaTimer` for CUDA devices."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock

    def elapsed_ms(self, fn: Callable[[], Any]) -> float:
        started = self.clock()
        fn()
        return (self.clock() - started) * 1000.0


class CudaTimer(Timer):
    """CUDA events around the call on the current stream, read after synchronising the device."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError("CudaTimer needs a CUDA device")
        self._torch = torch

    def elapsed_ms(self, fn: Callable[[], Any]) -> float:
        cuda = self._torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()  # nothing queued earlier is counted
        start.record()
        fn()
        end.record()
        cuda.synchronize()
        return float(start.elapsed_time(end))


def single_stream(
    fn: Callable[[], Any], settings: TimingSettings, *, timer: Timer | None = None
) -> dict[str, Any]:
    """Latency of ``fn()`` in milliseconds (see the module docstring)."""
    timer = timer or Timer()
    warm_runs, warm_ms = 0, 0.0
    while warm_runs < settings.warmup_runs or warm_ms < settings.warmup_seconds * 1000.0:
        warm_ms += timer.elapsed_ms(fn)
        warm_runs += 1
    samples: list[float] = []
    while len(samples) < settings.max_runs and (
        len(samples) < settings.min_runs or sum(samples) < settings.min_seconds * 1000.0
    ):
        samples.append(timer.elapsed_ms(fn))
    return latency_statistics(samples) | {"warmup_runs": warm_runs}


def latency_statistics(samples: list[float]) -> dict[str, Any]:
    """p50/p90/p99/mean/min/max (ms, 3 decimals) of per-call latencies, with their count and total."""
    if not samples:
        raise ValueError("no latency samples")
    values = np.asarray(samples, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "mean": round(statistics.fmean(samples), 3),
        "min": round(float(values.min()), 3),
        "max": round(float(values.max()), 3),
        "runs": len(samples),
        "seconds": round(float(values.sum()) / 1000.0, 3),
    }


def offline(
    fn: Callable[[], Any], settings: TimingSettings, *, batch: int, timer: Timer | None = None
) -> dict[str, Any]:
    """Throughput of ``fn()``, which processes ``batch`` images per call: images/s from the median."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1; got {batch}")
    latency = single_stream(fn, settings, timer=timer)
    return {
        "batch": batch,
        "throughput_ips": round(batch * 1000.0 / latency["p50"], 2),
        "batch_latency_ms": latency,
    }


__all__ = ["CudaTimer", "Timer", "TimingSettings", "latency_statistics", "offline", "single_stream"]
