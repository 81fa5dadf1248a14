"""Train/val/test splits by anatomical region of a volume, with guard gaps.

Slices of one volume are grouped into contiguous blocks; the blocks take the splits of a fixed,
repeating pattern, so every split samples the whole head (inferior to superior) while no slice of one
split lies within ``gap`` slices of another split (neighbouring slices are nearly identical, and a
test slice next to a training slice would measure memory, not generalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
# Slices of the sources held out whole (never trained on): other subjects, scanners and anatomy.
EXTERNAL = "external"
ALL_SPLITS = (*SPLITS, EXTERNAL)
# At most this many external slices per volume, evenly spaced: neighbouring slices add little, and
# every evaluation scores them all.
EXTERNAL_SLICES_PER_VOLUME = 24


@dataclass(frozen=True)
class SplitPolicy:
    block: int = 12
    gap: int = 2
    pattern: tuple[str, ...] = ("train", "train", "test", "train", "train", "val")


def split_slices(indices: list[int], policy: SplitPolicy = SplitPolicy()) -> dict[str, list[int]]:
    """Assigns usable slice indices (ascending, possibly with holes) to the splits of ``policy``."""
    if any(name not in SPLITS for name in policy.pattern):
        raise ValueError(f"split pattern may only name {SPLITS}; got {policy.pattern}")
    if not indices:
        return {name: [] for name in ALL_SPLITS}
    first = indices[0]
    label = {i: policy.pattern[((i - first) // policy.block) % len(policy.pattern)] for i in indices}
    result: dict[str, list[int]] = {name: [] for name in ALL_SPLITS}
    for i in indices:
        # Drop a slice when a slice of another split lies within `gap` of it.
        neighbours = (label.get(j) for j in range(i - policy.gap, i + policy.gap + 1))
        if all(n is None or n == label[i] for n in neighbours):
            result[label[i]].append(i)
    return result


def external_slices(indices: list[int], limit: int = EXTERNAL_SLICES_PER_VOLUME) -> dict[str, list[int]]:
    """The splits of a source held out whole: every usable slice is external (at most ``limit``,
    evenly spaced over the volume); nothing is trained on."""
    n = len(indices)
    picked = indices if n <= limit else [indices[round(i * (n - 1) / (limit - 1))] for i in range(limit)]
    return {name: [] for name in SPLITS} | {EXTERNAL: picked}
