"""Opening an exported artifact folder as a predictor of the model contract.

``open_artifact(folder)`` checks the folder against its manifest (hashes, paths: see
:mod:`edgesr.export.manifest`) and returns the runtime session behind the predictor contract with the
spec it keeps, so that ``prepare -> run -> finish`` serves an artifact exactly as it serves the torch
module (``edgesr enhance artifact=DIR``, the benchmark harness).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgesr.errors import ConfigError, DataError
from edgesr.export.manifest import Manifest, read_manifest
from edgesr.pipeline import Predictor


def runtime_predictor(
    path: Path,
    *,
    runtime: str,
    precision: str,
    threads: int = 0,
    device: str | None = None,
    compile_mode: str = "",
) -> Predictor:
    """The runtime session of one artifact file, compiled at the precision it was built for.

    OpenVINO artifacts are compiled at the precision they were built and verified for: an ``fp32``
    artifact with ``INFERENCE_PRECISION_HINT=f32`` (else it would run BF16 on this CPU), ``bf16`` and
    ``fp16`` with their hints, ``int8`` at the plugin's default for the layers left in float. A
    ``torch`` artifact runs on ``device`` (default: CUDA when there is a GPU) under autocast.
    """
    if runtime == "onnxruntime":
        from edgesr.export.onnxruntime import OnnxRuntimePredictor

        return OnnxRuntimePredictor(path, threads=threads)
    if runtime == "openvino":
        from edgesr.export.openvino import OpenVinoPredictor, precision_hint

        return OpenVinoPredictor(path, threads=threads, precision=precision_hint(precision))
    if runtime == "torch":
        from edgesr.export.torch_artifact import TorchArtifactPredictor

        return TorchArtifactPredictor(
            path.parent, precision=precision, device=device, threads=threads, compile_mode=compile_mode
        )
    if runtime == "tensorrt":
        if path.suffix == ".onnx":
            raise ConfigError(
                f"{path.parent} is a TensorRT artifact whose engine was not built (its manifest says why); "
                "run the same edgesr export on the machine that runs it, where tensorrt imports"
            )
        from edgesr.export.tensorrt import TensorRTPredictor, tensorrt_missing

        reason = tensorrt_missing()
        if reason is not None:
            raise ConfigError(f"{path} is a TensorRT engine; it cannot run here: {reason}")
        return TensorRTPredictor(path, precision=precision)
    raise ConfigError(f"{path} is a {runtime} artifact, which edgesr does not know how to run")


def artifact_predictor(
    folder: Path, manifest: Manifest, *, threads: int = 0, device: str | None = None
) -> Predictor:
    """The runtime session of an artifact whose files were checked (see :func:`open_artifact`).

    Raises:
        DataError: the runtime cannot load the file (a corrupt IR or ONNX whose hash was recorded
            from the corrupt file itself, or a file made by a newer runtime).
    """
    path = folder / manifest.entry
    try:
        return runtime_predictor(
            path, runtime=manifest.runtime, precision=manifest.precision, threads=threads, device=device,
            compile_mode=str(manifest.graph.get("torch_compile", "")),
        )  # fmt: skip
    except ConfigError:
        raise
    except Exception as exc:  # the runtimes raise RuntimeError or their own Fail/InvalidGraph types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: {manifest.runtime} cannot load it ({first_line[:300]})") from None


def open_artifact(
    folder: str | os.PathLike[str], *, threads: int = 0, device: str | None = None
) -> tuple[Predictor, Manifest]:
    """The artifact's predictor and manifest, after checking every file against the manifest.

    Raises:
        DataError: the folder is not an artifact, or a file is missing, changed or outside it.
        ConfigError: the artifact's runtime cannot run here.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    return artifact_predictor(folder, manifest, threads=threads, device=device), manifest


__all__ = ["artifact_predictor", "open_artifact", "runtime_predictor"]
