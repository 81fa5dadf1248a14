"""Export target profiles: ``export/<name>.yaml``, validated into a frozen :class:`ExportTarget`.

A profile says what a deployment target needs from an export: which runtime loads it, at which
precisions, whether the input size may vary (ONNX Runtime, OpenVINO) or must be fixed (TensorRT engines
built for one shape), how FFTs are written for recon models (real matrix products, the default: faster
on the CPU runtimes and the only form TensorRT before 11.2 reads; or the ONNX ``DFT`` op) and how
strictly the export is verified against PyTorch. Unknown keys
and bad values are errors that name the key, as for recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgesr.config import check_choice, check_range, load_yaml, opt
from edgesr.errors import ConfigError
from edgesr.export.manifest import PRECISIONS, RUNTIMES
from edgesr.pipeline import COMPILE_MODES

EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"
FFT_FORMS = ("dft", "matmul")


@dataclass(frozen=True)
class VerifySettings:
    slices: int = opt(4, "real test slices (spread over the volumes) every export is checked on")
    max_abs_error: float = opt(
        1.0e-4, "FP32 exports: the largest |runtime - PyTorch| allowed, as a fraction of the data range"
    )
    max_psnr_drop_db: float = opt(
        0.3, "BF16/FP16/INT8 exports: the most PSNR they may lose against PyTorch FP32 on the references"
    )
    max_ssim_drop: float = opt(0.005, "BF16/FP16/INT8 exports: and the most SSIM")

    def __post_init__(self) -> None:
        check_range("verify.slices", self.slices, low=1)
        check_range("verify.max_abs_error", self.max_abs_error, low=0.0)
        check_range("verify.max_psnr_drop_db", self.max_psnr_drop_db, low=0.0)
        check_range("verify.max_ssim_drop", self.max_ssim_drop, low=0.0)


@dataclass(frozen=True)
class ExportTarget:
    description: str = opt("", "what the target is for")
    runtime: str = opt("onnxruntime", f"the runtime that loads the artifact: {', '.join(RUNTIMES)}")
    precisions: list[str] = opt(["fp32"], f"one artifact per precision: {', '.join(PRECISIONS)}")
    dynamic_shapes: bool = opt(True, "any input size the model accepts; false: fixed to input_size")
    input_size: int = opt(256, "fixed shapes: the output size in pixels (SR: the LR input is size / scale)")
    fft: str = opt("matmul", "recon models' FFTs: real matrix products (matmul), or the ONNX DFT op (dft)")
    build_on_device: bool = opt(
        False, "the runtime file (a TensorRT engine) is built on the device that runs it, not here"
    )
    workspace_gb: float = opt(4.0, "TensorRT: the builder's workspace memory limit, GiB")
    device: str = opt(
        "auto",
        "torch artifacts: the device they are verified on: auto (CUDA where there is a GPU, else the "
        "CPU), cpu or cuda; the artifact runs wherever its user puts it",
    )
    compile: str = opt(
        "",
        "torch artifacts: run under torch.compile in this mode (default, reduce-overhead, max-autotune; "
        "'': eager); the export is verified compiled and the manifest records it",
    )
    verify: VerifySettings = opt(VerifySettings(), "how every export is checked against PyTorch")

    def __post_init__(self) -> None:
        check_choice("runtime", self.runtime, RUNTIMES)
        if not self.precisions:
            raise ConfigError("precisions must name at least one precision")
        for precision in self.precisions:
            check_choice("precisions", precision, PRECISIONS)
        if len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(f"precisions lists a precision twice: {self.precisions}")
        check_choice("fft", self.fft, FFT_FORMS)
        check_range("input_size", self.input_size, low=16)
        check_range("workspace_gb", self.workspace_gb, low=0.0)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("compile", self.compile, COMPILE_MODES)
        if self.compile and self.runtime != "torch":
            raise ConfigError(
                f"compile is for torch artifacts; runtime {self.runtime} compiles its own graph"
            )
        if self.device != "auto" and self.runtime != "torch":
            raise ConfigError(f"device is for torch artifacts; runtime {self.runtime} picks its own")
        if self.runtime == "tensorrt" and self.dynamic_shapes:
            # edgesr builds one engine per size (no optimisation profiles), as Jetson deployments do.
            raise ConfigError("runtime tensorrt needs dynamic_shapes=false (an engine is built for one size)")


def target_path(name_or_path: str) -> Path:
    """``export/NAME.yaml`` for a name, else the path as given."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"export target file not found: {candidate}")
        return candidate
    shipped = EXPORT_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        shipped_names = ", ".join(list_targets()) or "none"
        raise ConfigError(f"no export target {name_or_path!r}; shipped: {shipped_names}")
    return shipped


def list_targets() -> list[str]:
    return sorted(p.stem for p in EXPORT_DIR.glob("*.yaml"))


def load_target(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> ExportTarget:
    """An export profile by name (``cpu-openvino``) or path, with ``key=value`` overrides."""
    return load_yaml(ExportTarget, target_path(name_or_path), list(overrides))


__all__ = ["EXPORT_DIR", "ExportTarget", "VerifySettings", "list_targets", "load_target", "target_path"]
