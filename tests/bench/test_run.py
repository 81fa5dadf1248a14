"""`edgesr bench`: an artifact or a checkpoint timed on a device profile (latency percentiles,
throughput, peak memory) and scored in the same run; devices that are not here are refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from edgesr.cli import main
from tests.conftest import export_cli


def test_bench_times_an_artifact_beside_its_source_and_scores_it_in_the_same_run(
    tiny_dataset, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "exported"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]", "verify.slices=1") == 0
    fast = ["timing.min_runs=3", "timing.min_seconds=0", "timing.warmup_seconds=0", "size=32",
            "threads=1", "quality_slices=1", f"data_root={tiny_dataset.path.parent}"]  # fmt: skip
    bench_out = tmp_path / "bench"
    argv = ["bench", f"artifact={out / 'fp32'}", "device=cpu-onnxruntime", f"out={bench_out}", *fast]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((bench_out / "bench.json").read_text())
    [run] = result["runs"]  # a checkpoint of no shipped teacher: no reference run
    assert run["runtime"] == "onnxruntime" and run["executed_precision"] == "fp32" and run["size_mb"] > 0
    assert run["latency_ms"]["runs"] >= 3 and run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    assert run["throughput_ips"] > 0 and run["throughput_batch"] == 4 and run["peak_memory_mb"] >= 0
    first_core = sorted(os.sched_getaffinity(0))[0]
    assert run["threads"] == 1 and run["cpu_affinity"] == [first_core]  # pinned to threads=1 core
    assert run["malloc"] == "steady"  # the worker keeps freed memory in the heap (steady-state timing)
    assert {b["name"] for b in result["baselines"]} == {"bicubic", "zero-fill"} and run["psnr"] > 0
    assert set(result["dataset"]["input_sha256"]) == {"fake-mr"} and result["machine"]["cpu"]
    assert result["dataset"]["name"] == f"edgesr-data-{tiny_dataset.fingerprint['id']}"
    assert run["runtime_version"] == result["machine"]["onnxruntime"]
    if os.path.exists("/proc/cpuinfo"):
        assert isinstance(result["machine"]["cpu_flags"], list)

    # The torch checkpoint on the torch profile; an artifact on the wrong runtime is refused by name.
    assert (
        main(["bench", f"checkpoint={tiny_checkpoint}", "device=cpu-torch", f"out={tmp_path / 'b2'}", *fast])
        == 0
    )
    torch_run = json.loads((tmp_path / "b2" / "bench.json").read_text())["runs"][0]
    assert torch_run["runtime_version"] == torch.__version__
    assert main(["bench", f"checkpoint={tiny_checkpoint}", "device=cpu-openvino", *fast]) == 2
    assert "Export it first" in capsys.readouterr().err


def test_a_device_that_is_not_here_is_refused_never_measured(tiny_checkpoint, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["bench", f"checkpoint={tiny_checkpoint}", "device=gpu-torch"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_tensorrt_and_jetson_profiles_load_and_are_refused_where_their_device_is_missing():
    from edgesr.bench.devices import check_present, list_devices, load_device
    from edgesr.errors import ConfigError, SourceUnavailableError
    from edgesr.export.tensorrt import on_jetson

    assert {"gpu-tensorrt", "jetson-orin-nano", "jetson-agx-orin", "cpu-torch", "gpu-torch"} <= set(
        list_devices()
    )
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        profile = load_device(name)
        assert (profile.kind, profile.runtime, profile.memory) == ("jetson", "tensorrt", "tegrastats")
        if not on_jetson():
            with pytest.raises(SourceUnavailableError, match="runs on a Jetson"):
                check_present(profile, name)
    if not torch.cuda.is_available():
        with pytest.raises(SourceUnavailableError, match="needs a CUDA GPU"):
            check_present(load_device("gpu-tensorrt"), "gpu-tensorrt")
    # torch on the CPU: FP32 or BF16 autocast; FP16 is refused by the profile, before any worker starts.
    assert load_device("cpu-torch", ["precision=bf16"]).precision == "bf16"
    with pytest.raises(ConfigError, match="precision=fp16 is timed on CUDA devices only"):
        load_device("cpu-torch", ["precision=fp16"])


def test_a_fixed_shape_artifact_is_timed_at_its_own_size(tmp_path):
    from edgesr.bench.timing import artifact_inputs
    from edgesr.export.onnx import export_onnx
    from edgesr.export.onnxruntime import OnnxRuntimePredictor
    from edgesr.models import create_model
    from tests.conftest import spec_for

    model = create_model("rdn_tiny", scale=2)
    spec = spec_for(model, "rdn_tiny")
    fixed = {"lr": torch.rand(1, 1, 20, 24), "base": torch.rand(1, 1, 40, 48)}
    predictor = OnnxRuntimePredictor(export_onnx(model, spec, fixed, tmp_path / "m.onnx", dynamic=False))
    inputs = artifact_inputs(spec, predictor, size=256)  # the profile's size is overruled by the engine's
    assert {k: tuple(v.shape) for k, v in inputs.items()} == {"lr": (1, 1, 20, 24), "base": (1, 1, 40, 48)}
    assert predictor(inputs).shape == (1, 1, 40, 48)
    dynamic = OnnxRuntimePredictor(export_onnx(model, spec, fixed, tmp_path / "d.onnx"))
    assert tuple(artifact_inputs(spec, dynamic, size=64)["base"].shape) == (1, 1, 64, 64)


def test_pinning_takes_the_first_usable_cores_or_the_listed_ones():
    from edgesr.bench.devices import load_device, pinned_cores
    from edgesr.errors import ConfigError

    allowed = sorted(os.sched_getaffinity(0))
    assert pinned_cores(load_device("cpu-openvino", ["threads=1"])) == allowed[:1]
    assert pinned_cores(load_device("cpu-openvino", ["threads=1", "pin=false"])) == []
    assert pinned_cores(load_device("cpu-openvino", ["threads=0"])) == []  # the runtime's own default
    assert pinned_cores(load_device("cpu-openvino", ["threads=1", f"cores=[{allowed[-1]}]"])) == allowed[-1:]
    with pytest.raises(ConfigError, match="cores lists 2 cores for threads=1"):
        load_device("cpu-openvino", ["threads=1", "cores=[0,1]"])
    with pytest.raises(ConfigError, match="not usable here"):
        pinned_cores(load_device("cpu-openvino", ["threads=1", "cores=[4096]"]))
    with pytest.raises(ConfigError, match="cores are usable here"):
        pinned_cores(load_device("cpu-openvino", [f"threads={len(allowed) + 1}"]))


def test_the_machine_record_reads_cpu_flags_driver_and_jetson_release(tmp_path):
    """What makes two timings comparable: the CPU's matrix and vector units, the NVIDIA driver (both
    forms of the kernel module's version line) and a Jetson's L4T release."""
    import re

    from edgesr.bench.timing import L4T_RELEASE, NVIDIA_DRIVER, cpu_flags

    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_bf16 "
        "avx512_vnni\n"
    )
    assert cpu_flags(x86) == ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sha512 uscat ilrcpc flagm\n")
    assert cpu_flags(arm) == ["asimd", "asimddp"]
    assert cpu_flags(tmp_path / "absent") is None
    closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    opened = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs)\n"
    assert [re.search(NVIDIA_DRIVER, t).group(1) for t in (closed, opened)] == ["535.104.05", "580.159.04"]
    tegra = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan\n"
    assert re.search(L4T_RELEASE, tegra, re.MULTILINE).group(1) == "R36 (release), REVISION: 4.3"
