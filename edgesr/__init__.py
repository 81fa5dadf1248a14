"""edgesr: medical image super-resolution and MRI reconstruction, from the lab to the console and the edge.

The public API is what this module exports (``__all__``, tested); everything else may change between
minor versions.

Console software starts from :class:`Enhancer` (arrays in, arrays plus provenance out)::

    import edgesr
    enhancer = edgesr.Enhancer.from_shipped("rdn-mr-x2")      # or from_checkpoint / from_artifact
    result = enhancer.enhance(image, spacing=(1.0, 1.0))      # image: [H, W] or [S, H, W]
    result.image, result.spacing, result.provenance           # [S, 2H, 2W], mm, model + sha256

The steps underneath (the same path ``edgesr enhance`` and ``edgesr evaluate`` take)::

    import edgesr
    model, spec, _ = edgesr.load_for_inference(edgesr.teacher_path("rdn-ct-x2"))
    image = edgesr.load_image("head_ct_dicom/")              # CT in Hounsfield units
    prepared = edgesr.prepare(spec, image)                    # HU + 1024, clipped, / the volume max
    outputs = edgesr.run(edgesr.TorchPredictor(model, spec), prepared)
    hu = edgesr.finish(spec, prepared, outputs)               # [S, 2H, 2W] back in HU
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from edgesr.data.dataset import PreparedDataset  # noqa: E402
from edgesr.data.images import ImageVolume, load_image  # noqa: E402
from edgesr.data.kspace import KSpaceVolume, load_kspace  # noqa: E402
from edgesr.errors import ConfigError, DataError, EdgesrError  # noqa: E402
from edgesr.spec import ModelSpec  # noqa: E402
from edgesr.teachers import list_shipped, list_students, list_teachers, teacher_path  # noqa: E402

# Imported on first use: they load torch, which a command like `edgesr --help` does not need.
_LAZY = {
    "prepare": "edgesr.pipeline",
    "run": "edgesr.pipeline",
    "finish": "edgesr.pipeline",
    "infer": "edgesr.pipeline",
    "TorchPredictor": "edgesr.pipeline",
    "load_for_inference": "edgesr.train.checkpoint",
    "Enhancer": "edgesr.integrate.api",
    "EnhancerResult": "edgesr.integrate.api",
    "Provenance": "edgesr.integrate.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgesr' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataError",
    "EdgesrError",
    "Enhancer",
    "EnhancerResult",
    "ImageVolume",
    "KSpaceVolume",
    "ModelSpec",
    "PreparedDataset",
    "Provenance",
    "TorchPredictor",
    "__version__",
    "finish",
    "infer",
    "list_shipped",
    "list_students",
    "list_teachers",
    "load_for_inference",
    "load_image",
    "load_kspace",
    "prepare",
    "run",
    "teacher_path",
]
