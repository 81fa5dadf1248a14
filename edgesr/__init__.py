"""edgesr: medical image super-resolution and MRI reconstruction, from the lab to the console and the edge.

The public API is what this module exports; everything else may change between minor versions.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgesr.data.dataset import PreparedDataset  # noqa: E402
from edgesr.data.images import ImageVolume, load_image  # noqa: E402
from edgesr.data.kspace import KSpaceVolume, load_kspace  # noqa: E402
from edgesr.errors import ConfigError, DataError, EdgesrError  # noqa: E402

__all__ = [
    "ConfigError",
    "DataError",
    "EdgesrError",
    "ImageVolume",
    "KSpaceVolume",
    "PreparedDataset",
    "__version__",
    "load_image",
    "load_kspace",
]
