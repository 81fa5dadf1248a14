"""``bench``: one model or artifact on one device profile: speed, memory and quality in one run.

What a run measures, side by side:

* the subject (an exported artifact in its runtime, or a torch checkpoint) and, when its teacher is
  known (a shipped student's card, an artifact's manifest), the teacher in torch FP32 on the same
  device with the same timing rules: the speed-up is a ratio measured in one run, never a figure from
  another day;
* each in a fresh worker process (:mod:`edgesr.bench.worker`): single-stream latency, offline
  throughput, peak memory (the process's resident set above its baseline; CUDA's allocator and NVML);
* PSNR/SSIM on the test split through the same inference path, next to the baselines and the
  teacher, with the data set's fingerprint.

``bench.json`` carries ``runs`` in the schema of ``edgesr compress``'s report (plus ``throughput_ips``
and ``size_mb``), the device profile and the machine record.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from edgesr._io import write_json_atomic
from edgesr.bench.devices import DeviceProfile, check_present, pinned_cores
from edgesr.bench.tegrastats import TegrastatsSampler
from edgesr.bench.timing import machine_info, runtime_versions
from edgesr.bench.worker import measure_isolated
from edgesr.data.dataset import PreparedDataset, dataset_name
from edgesr.data.sources import is_template
from edgesr.errors import ConfigError
from edgesr.evaluate import ReconProtocol, evaluate_model, score_predictor
from edgesr.pipeline import Predictor, TorchPredictor
from edgesr.spec import ModelSpec
from edgesr.teachers import list_teachers, read_card, teacher_path
from edgesr.train.checkpoint import load_for_inference, read_metadata, read_spec

BENCH_FILE = "bench.json"


@dataclasses.dataclass(frozen=True)
class Subject:
    """What is benchmarked: a torch checkpoint folder or an artifact folder, with its spec."""

    name: str
    spec: ModelSpec
    folder: Path
    artifact: bool
    runtime: str
    precision: str
    teacher: str  # a shipped teacher's name, or "" when not known
    size_mb: float


def subject_of(*, artifact: str = "", checkpoint: str = "", model: str = "") -> Subject:
    """The subject of a bench run from exactly one of ``artifact``, ``checkpoint`` or ``model``."""
    if artifact:
        from edgesr.export.manifest import read_manifest

        folder = Path(artifact)
        manifest = read_manifest(folder)
        size = sum((folder / f).stat().st_size for f in manifest.files) / 2**20
        source = manifest.source
        teacher = str(source.get("teacher", "")) or _shipped_teacher(source.get("shipped", ""))
        name = str(source.get("shipped") or source.get("model", folder.name))
        return Subject(name, manifest.spec, folder, True, manifest.runtime, manifest.precision, teacher, size)
    folder = Path(checkpoint) if checkpoint else teacher_path(model)
    spec = read_spec(read_metadata(folder), folder)
    teacher = _shipped_teacher(model) if model else ""
    compression = read_card(folder).get("compression")
    if not teacher and isinstance(compression, dict):  # a checkpoint= of a student with its card
        teacher = str(compression.get("teacher", ""))
    return Subject(model or folder.name, spec, folder, False, "torch", "fp32", teacher, _weights_mb(folder))


def bench(
    subject: Subject,
    profile: DeviceProfile,
    *,
    device_name: str,
    dataset: PreparedDataset,
    out: Path,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measures ``subject`` (and its teacher) on ``profile``; writes and returns ``out/bench.json``.

    Raises:
        SourceUnavailableError: the profile's device or runtime is not on this machine.
        ConfigError: the subject does not run in the profile's runtime.
    """
    console = console or Console(stderr=True)
    check_present(profile, device_name)
    if subject.runtime != profile.runtime:
        hint = "" if subject.artifact else " Export it first (edgesr export ...), then bench artifact=."
        kind = "artifact" if subject.artifact else "model"
        raise ConfigError(
            f"device={device_name} times {profile.runtime}; {subject.name} is a {subject.runtime} "
            f"{kind}.{hint}"
        )
    device = "cuda" if profile.kind in ("cuda", "jetson") else "cpu"  # a Jetson's GPU is CUDA as well
    request: dict[str, Any] = {
        "threads": profile.threads, "size": profile.size, "batch": profile.throughput_batch,
        "timing": dataclasses.asdict(profile.timing), "device": device, "runtime": subject.runtime,
        "cores": pinned_cores(profile),
    }  # fmt: skip

    # The teacher in torch FP32, timed by the same rules, is the reference of every ratio: for a
    # student, and for an artifact of the teacher itself (what the runtime buys over torch).
    teacher_folder = teacher_path(subject.teacher) if subject.teacher else None
    timed_teacher = teacher_folder is not None and (
        subject.artifact or subject.teacher != subject.name or profile.precision != "fp32"
    )
    runs: list[dict[str, Any]] = []
    if timed_teacher and teacher_folder is not None:
        with console.status(f"timing the teacher {subject.teacher} in torch fp32 ({device_name} rules)"):
            teacher_request = {"runtime": "torch", "model": str(teacher_folder), "precision": "fp32",
                               "spec": read_spec_dict(teacher_folder)}  # fmt: skip
            timed = measure_isolated(request | teacher_request)
        runs.append(_run_row("teacher", subject.teacher, "torch", "fp32", timed, _weights_mb(teacher_folder)))
    with console.status(f"timing {subject.name} on {device_name}"), _memory_sampler(profile) as sampler:
        if subject.artifact:
            timed = measure_isolated(request | {"artifact": str(subject.folder)})
        else:
            model_request = {"model": str(subject.folder), "precision": profile.precision,
                             "spec": subject.spec.to_dict()}  # fmt: skip
            timed = measure_isolated(request | model_request)
    if sampler is not None:  # a Jetson: its RAM (shared by CPU and GPU) as tegrastats saw it
        timed["tegrastats"] = sampler.summary()
    precision = subject.precision if subject.artifact else profile.precision
    role = "teacher" if subject.teacher == subject.name else "student"
    subject_row = _run_row(role, subject.name, subject.runtime, precision, timed, subject.size_mb)
    runs.append(subject_row)

    quality: dict[str, Any] = {}
    if profile.quality_slices > 0:
        quality = _quality(subject, profile, dataset, device, teacher_folder, console)
        subject_row |= _figures(quality["subject"])
        if "teacher" in quality:
            if timed_teacher:
                runs[0] |= _figures(quality["teacher"])
            for row in runs:
                row["psnr_vs_teacher_db"] = round(row["psnr"] - quality["teacher"]["psnr"], 3)
                row["ssim_vs_teacher"] = round(row["ssim"] - quality["teacher"]["ssim"], 4)
    if timed_teacher:
        reference_ms = runs[0]["latency_ms"]["p50"]
        for row in runs:
            row["speedup_vs_teacher_torch_fp32"] = round(reference_ms / row["latency_ms"]["p50"], 2)
    modality = subject.spec.intensity.modality if subject.spec.sr is not None else "MR"
    volumes = dataset.volumes(modality, "test")
    result = {
        "device": device_name,
        "profile": dataclasses.asdict(profile),
        "subject": {
            "name": subject.name,
            "folder": str(subject.folder),
            "artifact": subject.artifact,
            "teacher": subject.teacher,
            "task": subject.spec.task,
        },  # fmt: skip
        "machine": machine_info() | runtime_versions(),
        "dataset": {
            "name": dataset_name(dataset.fingerprint["id"]),
            "split": "test",
            "max_slices_per_volume": profile.quality_slices,
            "sources": [v["name"] for v in volumes],
            "fingerprint": dataset.fingerprint["id"],
            "input_sha256": {v["name"]: v["input_sha256"] for v in volumes},
            "templates": [v["name"] for v in volumes if is_template(v["name"])],
        },
        "baselines": quality.get("baselines", []),
        "runs": runs,
    }
    write_json_atomic(out / BENCH_FILE, result)
    return result


@contextlib.contextmanager
def _memory_sampler(profile: DeviceProfile) -> Iterator[TegrastatsSampler | None]:
    """tegrastats running beside the timed worker on a Jetson; nothing elsewhere."""
    if profile.memory != "tegrastats":
        yield None
        return
    with TegrastatsSampler(interval_ms=100) as sampler:
        yield sampler


def _run_row(
    role: str, name: str, runtime: str, precision: str, timed: dict[str, Any], size_mb: float
) -> dict:
    return {
        "name": f"{name}/{runtime}/{precision}",
        "model": role,
        "runtime": runtime,
        "precision": precision,
        "executed_precision": timed["executed_precision"],
        "latency_ms": timed["latency_ms"],
        "throughput_ips": timed.get("throughput", {}).get("throughput_ips"),
        "throughput_batch": timed.get("throughput", {}).get("batch"),
        "peak_memory_mb": timed["peak_memory_mb"],
        "peak_memory_batch_mb": timed.get("peak_memory_batch_mb"),
        "process_peak_mb": timed.get("process_peak_mb"),
        "size_mb": round(size_mb, 2),
        "threads": timed.get("threads"),
        "cpu_affinity": timed.get("cpu_affinity"),
        "runtime_version": timed.get("runtime_version"),
        "malloc": timed.get("malloc"),
        **{
            k: timed[k]
            for k in ("gpu", "cuda_peak_allocated_mb", "nvml_used_mb", "tegrastats", "timed_shapes")
            if k in timed
        },
    }


def _quality(
    subject: Subject,
    profile: DeviceProfile,
    dataset: PreparedDataset,
    device: str,
    teacher_folder: Path | None,
    console: Console,
) -> dict[str, Any]:
    """PSNR/SSIM of the subject next to the baselines (one setting: recon at R=4), and of the teacher."""
    predictor: Predictor
    if subject.artifact:
        from edgesr.export.artifact import open_artifact

        predictor, _ = open_artifact(subject.folder, threads=profile.threads, device=device)
    else:
        model, _, _ = load_for_inference(subject.folder)
        # Scored at the precision it was timed at (BF16 autocast when the profile asks for it).
        predictor = TorchPredictor(model.to(device), subject.spec, precision=profile.precision)
    protocol = ReconProtocol(accelerations=(4.0,))
    with console.status(f"scoring {subject.name} and the baselines on the test split"):
        evaluation = evaluate_model(
            subject.spec,
            predictor,
            dataset,
            label="__subject__",
            max_slices=profile.quality_slices,
            recon=protocol,
        )
    rows = evaluation["results"]
    mine = next(r for r in rows if r["method"] == "__subject__")
    scores = {
        "subject": _scores(mine),
        "baselines": [{"name": r["method"], **_scores(r)} for r in rows if r is not mine],
    }
    if teacher_folder is not None:
        teacher, spec, _ = load_for_inference(teacher_folder)
        with console.status("scoring the teacher on the same slices"):
            scored = score_predictor(
                spec,
                TorchPredictor(teacher.to(device), spec),
                dataset,
                split="test",
                max_slices=profile.quality_slices,
            )
        scores["teacher"] = {"psnr": scored["psnr"], "ssim": scored["ssim"], "by_source": scored["by_source"]}
    return scores


def _figures(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in ("psnr", "ssim", "by_source")}


def _scores(row: dict[str, Any]) -> dict[str, Any]:
    return {"psnr": row["psnr_db"], "ssim": row["ssim"], "by_source": row.get("by_source", {})}


def read_spec_dict(folder: Path) -> dict[str, Any]:
    return read_spec(read_metadata(folder), folder).to_dict()


def _weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def _shipped_teacher(name: Any) -> str:
    """The teacher of a shipped model name: itself for a teacher, its card's teacher for a student."""
    if not name:
        return ""
    if name in list_teachers():
        return str(name)
    compression = read_card(teacher_path(str(name))).get("compression", {})
    return str(compression.get("teacher", "")) if isinstance(compression, dict) else ""


__all__ = ["BENCH_FILE", "Subject", "bench", "subject_of"]
