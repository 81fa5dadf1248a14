"""tegrastats lines of three JetPack generations parsed field by field, and the sampler driven through
a real subprocess (a stand-in executable that prints recorded-format lines, since no Jetson is here)."""

from __future__ import annotations

import os
import stat

import pytest

from edgesr.bench.tegrastats import TegrastatsSampler, parse_line, summarise
from edgesr.errors import SourceUnavailableError

# Lines in the formats each generation prints (values made up for the tests).
ORIN_NANO_JP6 = (
    "11-28-2026 10:15:02 RAM 2931/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [14%@1510,9%@1510,3%@1510,0%@1510,off,off] EMC_FREQ 5% GR3D_FREQ 61% cpu@51.2C soc2@48.8C "
    "soc0@49.4C gpu@52.1C tj@52.1C soc1@48.9C VDD_IN 7311mW/6120mW VDD_CPU_GPU_CV 2402mW/1810mW "
    "VDD_SOC 1601mW/1544mW"
)
AGX_ORIN_JP5 = (
    "RAM 6120/30536MB (lfb 5120x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@2201,1%@2201,0%@2201,0%@2201,"
    "5%@2201,3%@2201,0%@2201,0%@2201,off,off,off,off] EMC_FREQ 1%@3199 GR3D_FREQ 88%@[1300,1300] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@55.5C Tboard@40C SOC2@51.3C Tdiode@43.5C SOC0@52.0C "
    "CV1@-256C GPU@57.3C tj@57.3C SOC1@51.0C CV2@-256C VDD_GPU_SOC 11203mW/9820mW "
    "VDD_CPU_CV 1204mW/1180mW VIN_SYS_5V0 4020mW/3990mW"
)
NANO_JP4 = (
    "RAM 1712/3956MB (lfb 1x2MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [21%@102,18%@102,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 47%@921 APE 25 PLL@34C CPU@36.5C "
    "PMIC@100C GPU@35C AO@41.5C thermal@35.75C POM_5V_IN 3640/3510 POM_5V_GPU 1204/1100 POM_5V_CPU 410/400"
)


def test_an_orin_nano_line_gives_memory_load_temperatures_and_rails():
    record = parse_line(ORIN_NANO_JP6)
    assert (record["ram_used_mb"], record["ram_total_mb"]) == (2931, 7620)
    assert (record["swap_used_mb"], record["swap_total_mb"]) == (0, 3810)
    assert record["cpu_load_pct"] == [14, 9, 3, 0] and record["cpu_freq_mhz"] == 1510  # 2 cores off
    assert record["gpu_load_pct"] == 61 and "gpu_freq_mhz" not in record  # JetPack 6 prints no clock
    assert record["emc_load_pct"] == 5
    assert record["temperatures_c"]["gpu"] == 52.1 and record["temperatures_c"]["tj"] == 52.1
    assert record["power_mw"] == {
        "VDD_IN": (7311, 6120), "VDD_CPU_GPU_CV": (2402, 1810), "VDD_SOC": (1601, 1544)
    }  # fmt: skip


def test_an_agx_orin_line_drops_switched_off_sensors_and_reads_the_gpu_clock_list():
    record = parse_line(AGX_ORIN_JP5)
    assert record["ram_used_mb"] == 6120 and len(record["cpu_load_pct"]) == 8
    assert record["gpu_load_pct"] == 88 and record["gpu_freq_mhz"] == 1300
    assert "CV0" not in record["temperatures_c"] and record["temperatures_c"]["Tboard"] == 40.0
    assert record["power_mw"]["VDD_GPU_SOC"] == (11203, 9820)


def test_a_jetpack_4_nano_line_reads_its_pom_rails_without_units():
    record = parse_line(NANO_JP4)
    assert record["ram_used_mb"] == 1712 and record["cpu_load_pct"] == [21, 18]
    assert record["gpu_load_pct"] == 47 and record["gpu_freq_mhz"] == 921
    assert record["power_mw"]["POM_5V_IN"] == (3640, 3510) and "IRAM" not in record["power_mw"]
    assert record["temperatures_c"]["thermal"] == 35.75


def test_a_line_without_ram_is_not_taken_for_a_sample():
    with pytest.raises(ValueError, match="not a tegrastats line"):
        parse_line("CPU [1%@729] GR3D_FREQ 0%")


def test_the_summary_gives_the_peak_ram_and_the_input_power():
    records = [parse_line(ORIN_NANO_JP6), parse_line(ORIN_NANO_JP6.replace("RAM 2931", "RAM 3307"))]
    summary = summarise(records)
    assert summary["ram_peak_mb"] == 3307 and summary["ram_start_mb"] == 2931 and summary["samples"] == 2
    assert summary["input_power_rail"] == "VDD_IN" and summary["input_power_mw_max"] == 7311
    assert summary["gpu_load_pct_max"] == 61 and summary["hottest_c"] == 52.1
    assert summarise([parse_line(NANO_JP4)])["input_power_rail"] == "POM_5V_IN"


def test_the_sampler_runs_tegrastats_beside_the_work_and_parses_what_it_printed(tmp_path, monkeypatch):
    fake = tmp_path / "tegrastats"
    lines = [ORIN_NANO_JP6, ORIN_NANO_JP6.replace("RAM 2931", "RAM 3500")]
    body = "".join(f"echo '{line}'\nsleep 0.05\n" for line in lines)
    fake.write_text(f'#!/bin/sh\n[ "$1" = --interval ] || exit 3\n{body}sleep 30\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with TegrastatsSampler(interval_ms=50) as sampler:
        import time

        deadline = time.monotonic() + 10
        while len(sampler.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert sampler.summary()["ram_peak_mb"] == 3500
    assert sampler._process is not None and sampler._process.returncode is not None  # stopped with the block


def test_without_tegrastats_the_sampler_says_it_needs_a_jetson(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SourceUnavailableError, match="only on a Jetson"), TegrastatsSampler():
        pass
