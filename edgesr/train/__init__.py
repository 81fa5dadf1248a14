"""Training: settings, data streams, one loop (:func:`edgesr.train.fit.fit`) for every stage, ``edgesr train``
(:mod:`edgesr.train.teacher`), checkpoints (safetensors + JSON) and distributed helpers."""

from __future__ import annotations
