"""Training: the data streams, the loop, checkpoints (safetensors + JSON) and distributed helpers."""

from __future__ import annotations
