"""The harness's statistics on a synthetic workload of known duration (a fake clock, so no test depends
on how fast this machine is): warm-up and timed runs stop where the settings say, and the percentiles
land on the known values."""

from __future__ import annotations

import pytest
import torch

from edgesr.bench.harness import CudaTimer, Timer, TimingSettings, latency_statistics, offline, single_stream
from edgesr.errors import ConfigError


class FakeClock:
    """A clock that each call of the workload advances by the next scripted duration (seconds)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_percentiles_of_a_known_workload_land_where_they_should():
    # One 300 ms warm-up call (past the 200 ms minimum), then 100 timed calls: 90 of 10 ms, 9 of 20 ms
    # and 1 of 100 ms.
    clock = FakeClock([0.3] + [0.010] * 90 + [0.020] * 9 + [0.100])
    settings = TimingSettings(warmup_runs=1, warmup_seconds=0.2, min_runs=100, min_seconds=0.0)
    result = single_stream(clock.work, settings, timer=Timer(clock))
    assert result["warmup_runs"] == 1 and result["runs"] == 100
    assert result["p50"] == pytest.approx(10.0) and result["max"] == pytest.approx(100.0)
    assert result["p90"] == pytest.approx(11.0)  # a tenth of the way from the 90th (10 ms) to the 91st (20)
    assert 20.0 <= result["p99"] <= 100.0 and result["mean"] == pytest.approx((900 + 180 + 100) / 100)
    assert result["seconds"] == pytest.approx(1.18)


def test_warm_up_lasts_its_minimum_time_and_timing_its_minimum_duration():
    clock = FakeClock([0.05])  # 50 ms a call
    settings = TimingSettings(warmup_runs=1, warmup_seconds=0.2, min_runs=5, min_seconds=1.0)
    result = single_stream(clock.work, settings, timer=Timer(clock))
    assert result["warmup_runs"] == 4  # 4 x 50 ms reach the 200 ms of warm-up
    assert result["runs"] == 20  # 5 runs are not yet 1 s: 20 x 50 ms are
    capped = single_stream(
        clock.work, TimingSettings(min_runs=5, min_seconds=60.0, max_runs=7), timer=Timer(clock)
    )
    assert capped["runs"] == 7


def test_offline_throughput_is_images_per_second_at_the_median():
    clock = FakeClock([0.080])  # a batch of 8 in 80 ms: 100 images/s
    result = offline(clock.work, TimingSettings(min_runs=3, min_seconds=0.0), batch=8, timer=Timer(clock))
    assert result["throughput_ips"] == pytest.approx(100.0) and result["batch"] == 8


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match="timing.min_runs"):
        TimingSettings(min_runs=0)
    with pytest.raises(ConfigError, match="timing.max_runs"):
        TimingSettings(min_runs=50, max_runs=10)
    with pytest.raises(ValueError, match="no latency samples"):
        latency_statistics([])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_the_kernels_not_the_launches():
    a = torch.randn(2048, 2048, device="cuda")
    result = single_stream(lambda: a @ a, TimingSettings(min_runs=5, min_seconds=0.0), timer=CudaTimer())
    assert result["p50"] > 0 and result["runs"] == 5
