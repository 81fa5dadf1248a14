"""Data: the real default sources, the prepared data set, and loaders for users' images and raw k-space."""

from __future__ import annotations
