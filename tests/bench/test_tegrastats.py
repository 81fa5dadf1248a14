"""tegrastats lines of three JetPack generations parsed field by field, and the sampler driven through
a real subprocess (a stand-in executable that prints recorded-format lines, since no Jetson is here)."""

from __future__ import annotations

import os
import stat

import pytest

from edgesr.bench.tegrastats import TegrastatsSampler, parse_line, summarise
from edgesr.errors import SourceUnavailableError

# Lines in the formats each generation prints (values made up for the tests; recorded ones below).
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


# Lines recorded on real Jetsons (not made up): tegrastats output that users published with their logs.
# An Orin Nano 8 GB, L4T R36 (JetPack 6.1, CUDA 12.6), idle, logged beside nvidia-smi on 2025-01-04:
RECORDED_ORIN_NANO = (
    "01-04-2025 16:02:59 RAM 1273/7620MB (lfb 1x4MB) SWAP 286/3810MB (cached 1MB) "
    "CPU [0%@1036,0%@1036,1%@1036,0%@1036,0%@729,0%@729] GR3D_FREQ 0% cpu@45.875C soc2@45.843C "
    "soc0@44.843C gpu@45.437C tj@46.312C soc1@46.312C VDD_IN 4968mW/4968mW VDD_CPU_GPU_CV 436mW/436mW "
    "VDD_SOC 1708mW/1708mW"
)
# An Orin NX 16 GB under load (8 cores, the three CV sensors reporting), one second of a published log:
RECORDED_ORIN_NX = (
    "08-21-2026 18:23:37 RAM 15031/15656MB (lfb 1x4MB) SWAP 7400/7828MB (cached 2MB) "
    "CPU [80%@1984,80%@1984,100%@1984,76%@1984,87%@1574,67%@1574,70%@1574,76%@1574] GR3D_FREQ 50% "
    "cv0@54.406C cpu@56.531C soc2@53.718C soc0@54.718C cv1@54C gpu@53.718C tj@56.531C soc1@55.812C "
    "cv2@54.093C VDD_IN 10187mW/8251mW VDD_CPU_GPU_CV 5077mW/3145mW VDD_SOC 1974mW/1938mW"
)
# A Jetson TX2 (L4T R32, 2019), its rails printed without units, quoted in a bug report of another parser:
RECORDED_TX2 = (
    "RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% "
    "GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C "
    "Tdiode@41.25C VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 "
    "VDD_SYS_CPU 536/590 VDD_SYS_DDR 557/601"
)


def test_lines_recorded_on_real_jetsons_parse_field_by_field():
    nano = parse_line(RECORDED_ORIN_NANO)
    assert (nano["ram_used_mb"], nano["ram_total_mb"], nano["swap_used_mb"]) == (1273, 7620, 286)
    assert nano["cpu_load_pct"] == [0, 0, 1, 0, 0, 0] and nano["gpu_load_pct"] == 0
    assert nano["temperatures_c"]["tj"] == 46.312 and nano["temperatures_c"]["gpu"] == 45.437
    assert nano["power_mw"] == {"VDD_IN": (4968, 4968), "VDD_CPU_GPU_CV": (436, 436), "VDD_SOC": (1708, 1708)}
    nx = parse_line(RECORDED_ORIN_NX)
    assert nx["ram_used_mb"] == 15031 and len(nx["cpu_load_pct"]) == 8 and nx["gpu_load_pct"] == 50
    assert nx["temperatures_c"]["cv1"] == 54.0 and nx["power_mw"]["VDD_IN"] == (10187, 8251)
    tx2 = parse_line(RECORDED_TX2)
    assert tx2["ram_total_mb"] == 7852 and "swap_total_mb" not in tx2 and tx2["emc_load_pct"] == 0
    assert tx2["power_mw"]["VDD_IN"] == (3140, 3208) and tx2["temperatures_c"]["Tdiode"] == 41.25
    summary = summarise([nano, parse_line(RECORDED_ORIN_NANO.replace("RAM 1273", "RAM 1900"))])
    assert summary["ram_peak_mb"] == 1900 and summary["input_power_rail"] == "VDD_IN"
    assert summarise([tx2])["input_power_rail"] == "VDD_IN" and summarise([nx])["input_power_mw_max"] == 10187


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
