"""``manifest.json``: what an exported artifact folder holds, and the check that it still holds it.

An artifact is a folder: the runtime files (``model.onnx``; ``model.xml`` + ``model.bin``; a TensorRT
plan) and ``manifest.json`` beside them. The manifest records the sha256 of every file, the model's
:class:`~edgesr.spec.ModelSpec` (how the runtime is fed and its output read), where the model came from
(teacher, recipe, checkpoint), the verification figures and the library versions that made it.

:func:`read_manifest` is the only way edgesr opens an artifact. Before a runtime sees a byte it refuses:
a missing or corrupt manifest; a listed file that is missing, changed (sha256) or outside the folder
(absolute, ``..``, or a symlink out); and an ONNX file whose external data points outside the
folder or at a file that is not listed. ONNX external data paths are the one place where a model file
names other files; ONNX Runtime follows them, so a crafted ``location`` could otherwise read any file
on the console. Files the manifest does not list are left alone: no runtime reads them (a README
beside the model is harmless).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from edgesr import __version__
from edgesr._io import sha256_file, write_json_atomic
from edgesr.errors import DataError
from edgesr.spec import ModelSpec

MANIFEST_FILE = "manifest.json"
FORMAT = "edgesr-artifact/1"
RUNTIMES = ("onnxruntime", "openvino", "tensorrt", "torch")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """An artifact's record (``manifest.json``).

    Attributes:
        target: the export profile that made it (``cpu-openvino``...).
        runtime: the runtime that loads ``entry`` (one of :data:`RUNTIMES`).
        precision: the precision the file was built for (one of :data:`PRECISIONS`); what a runtime
            actually executed is a benchmark's record, not the artifact's.
        entry: the file the runtime opens, relative to the folder (``model.onnx``, ``model.xml``).
        files: every file of the artifact but the manifest, relative POSIX path -> sha256.
        spec: the model contract the artifact keeps.
        source: where the model came from (model name, checkpoint sha256, teacher, recipe).
        verification: the figures of the check against PyTorch that admitted it.
        versions: torch, onnx and runtime versions that made it.
        graph: how the graph was exported: ONNX ``opset``, ``dynamic_shapes``, a fixed-shape file's
            ``input_shapes``, recon models' ``fft`` form (``matmul`` or ``dft``); empty for torch.
        edgesr_version: the edgesr that wrote it.
        created: UTC time of writing, ISO 8601.
    """

    target: str
    runtime: str
    precision: str
    entry: str
    files: Mapping[str, str]
    spec: ModelSpec
    source: Mapping[str, Any] = field(default_factory=dict)
    verification: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    graph: Mapping[str, Any] = field(default_factory=dict)
    edgesr_version: str = __version__
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "target": self.target,
            "runtime": self.runtime,
            "precision": self.precision,
            "entry": self.entry,
            "files": dict(sorted(self.files.items())),
            "spec": self.spec.to_dict(),
            "source": dict(self.source),
            "verification": dict(self.verification),
            "versions": dict(self.versions),
            "graph": dict(self.graph),
            "edgesr_version": self.edgesr_version,
            "created": self.created,
        }


def write_manifest(
    folder: str | os.PathLike[str],
    *,
    target: str,
    runtime: str,
    precision: str,
    entry: str,
    spec: ModelSpec,
    source: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
    graph: Mapping[str, Any] | None = None,
) -> Manifest:
    """Hashes every file under ``folder`` and writes ``manifest.json`` there (atomically), last.

    Call it once the folder holds exactly the artifact's files: everything in it is listed, so a
    leftover from an earlier attempt would become part of the artifact.

    Raises:
        ValueError: ``runtime``/``precision`` unknown, ``entry`` not among the files, or the folder
            holds a symlink (an artifact is plain files, so that it can be copied to a console as is).
    """
    folder = Path(folder)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ValueError(f"{path} is a symlink; an artifact folder holds plain files only")
        if path.is_file() and relative != MANIFEST_FILE and not _is_temporary(path):
            files[relative] = sha256_file(path)
    if entry not in files:
        raise ValueError(
            f"entry {entry!r} is not a file in {folder} (it holds {', '.join(files) or 'nothing'})"
        )
    manifest = Manifest(
        target=target,
        runtime=runtime,
        precision=precision,
        entry=entry,
        files=files,
        spec=spec,
        source=dict(source or {}),
        verification=dict(verification or {}),
        versions=dict(versions or {}),
        graph=dict(graph or {}),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(folder / MANIFEST_FILE, manifest.to_dict())
    return manifest


def read_manifest(folder: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Reads ``folder/manifest.json`` and, with ``verify``, checks the folder against it.

    Raises:
        DataError: naming the file and the problem: no manifest, corrupt JSON, a missing key, a file
            path outside the folder, a missing or changed file, an ONNX file whose external data leaves
            the folder or is not listed.
    """
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataError(f"artifact={folder} is not a folder (an export writes a folder with {MANIFEST_FILE})")
    if not path.is_file():
        # The folder `edgesr export out=` names holds one artifact per precision: say which to pick.
        inside = sorted(p.parent.name for p in folder.glob(f"*/{MANIFEST_FILE}"))
        if inside:
            raise DataError(
                f"{folder} is an export's folder with one artifact per precision ({', '.join(inside)}); "
                f"name one: artifact={folder / inside[0]}"
            )
        raise DataError(f"{folder} holds no {MANIFEST_FILE}: not an artifact of `edgesr export`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None
    manifest = _parse(raw, path)
    if verify:
        verify_files(folder, manifest)
    return manifest


def _parse(raw: Any, path: Path) -> Manifest:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: corrupt manifest (a JSON object expected, got {type(raw).__name__})")
    if raw.get("format") != FORMAT:
        raise DataError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}; re-export the model")
    required = ("target", "runtime", "precision", "entry", "files", "spec")
    missing = [key for key in required if key not in raw]
    if missing:
        raise DataError(f"{path}: corrupt manifest, missing {', '.join(missing)}")
    files = raw["files"]
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()
    ):
        raise DataError(f"{path}: corrupt manifest, 'files' must map relative paths to sha256 hex digests")
    if raw["runtime"] not in RUNTIMES or raw["precision"] not in PRECISIONS:
        raise DataError(f"{path}: unknown runtime {raw['runtime']!r} or precision {raw['precision']!r}")
    if raw["entry"] not in files:
        raise DataError(f"{path}: entry {raw['entry']!r} is not among the listed files")
    for key in ("source", "verification", "versions", "graph"):
        if not isinstance(raw.get(key, {}), dict):
            raise DataError(f"{path}: corrupt manifest, {key!r} must be a JSON object")
    return Manifest(
        target=str(raw["target"]),
        runtime=raw["runtime"],
        precision=raw["precision"],
        entry=raw["entry"],
        files=files,
        spec=ModelSpec.from_dict(raw["spec"], source=str(path)),
        source=raw.get("source", {}),
        verification=raw.get("verification", {}),
        versions=raw.get("versions", {}),
        graph=raw.get("graph", {}),
        edgesr_version=str(raw.get("edgesr_version", "")),
        created=str(raw.get("created", "")),
    )


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every listed file inside ``folder``, present and unchanged; ONNX external data listed and inside.

    Raises:
        DataError: the first problem found, naming the file.
    """
    root = folder.resolve()
    for relative, expected in manifest.files.items():
        target = inside(root, relative, what=f"{folder / MANIFEST_FILE} lists {relative!r}")
        if not target.is_file():
            raise DataError(
                f"{folder / relative} is missing (listed in {MANIFEST_FILE}); re-export the model"
            )
        actual = sha256_file(target)
        if actual != expected:
            raise DataError(
                f"{folder / relative} has changed since export (sha256 {actual[:12]}..., manifest says "
                f"{expected[:12]}...); re-export the model"
            )
    listed = set(manifest.files)
    for relative in manifest.files:
        if relative.endswith(".onnx"):
            _check_onnx_external_data(root, relative, listed)


def inside(root: Path, relative: str, *, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` (no absolute path, no ``..``, no
    symlink that leads out). ``root`` must already be resolved."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise DataError(f"{what}: the path leaves the artifact folder {root}")
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{what}: it resolves to {resolved}, outside the artifact folder {root}")
    return resolved


def _check_onnx_external_data(root: Path, relative: str, listed: set[str]) -> None:
    """Each tensor of the ONNX file ``root/relative`` stored as external data names a listed file
    inside ``root`` (ONNX resolves ``location`` against the model file's own folder)."""
    import onnx

    path = root / relative
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError... for a corrupt file
        raise DataError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        what = f"{path} stores tensor {tensor.name!r} in external data {location!r}"
        target = inside(root, (PurePosixPath(relative).parent / location).as_posix(), what=what)
        if target.relative_to(root).as_posix() not in listed:
            raise DataError(f"{what}: that file is not listed in {MANIFEST_FILE}")


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _is_temporary(path: Path) -> bool:
    """A leftover of :func:`edgesr._io.atomic_path` (``.name.XXXX.tmp.ext``): never part of an artifact."""
    return path.name.startswith(".") and ".tmp" in path.name
