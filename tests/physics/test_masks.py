from __future__ import annotations

import pytest
import torch

from edgesr.physics.masks import acs_indices, cartesian_mask


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("acceleration", [2, 4, 6, 8])
@pytest.mark.parametrize("width", [31, 218, 368])
def test_mask_acceleration_and_acs(kind, acceleration, width):
    mask = cartesian_mask(width, acceleration, center_fraction=0.08, kind=kind, seed=3)
    assert mask.shape == (width,)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == max(len(acs_indices(width, 0.08)), round(width / acceleration))
    assert bool(mask[acs_indices(width, 0.08)].all())
    assert mask[width // 2] == 1


def test_min_acs_lines_widens_the_centre_of_a_small_matrix_only():
    """8 % of 64 columns is 5 lines; scanners keep a fixed number of reference lines instead."""
    small = cartesian_mask(64, 4, center_fraction=0.08, min_acs_lines=12, seed=0)
    assert bool(small[acs_indices(64, 0.08, 12)].all())
    assert len(acs_indices(64, 0.08, 12)) == 12
    assert int(small.sum()) == 16  # still R=4: the ACS takes 12 of the 16 lines
    wide = cartesian_mask(218, 4, center_fraction=0.08, seed=0)
    torch.testing.assert_close(cartesian_mask(218, 4, center_fraction=0.08, min_acs_lines=12, seed=0), wide)
    assert len(acs_indices(10, 0.08, 12)) == 10  # never more lines than the matrix has
    with pytest.raises(ValueError, match="min_lines"):
        acs_indices(64, 0.08, -1)


def test_mask_is_seeded():
    a = cartesian_mask(128, 4, seed=1)
    torch.testing.assert_close(a, cartesian_mask(128, 4, seed=1))
    assert not torch.equal(a, cartesian_mask(128, 4, seed=2))


def test_equispaced_mask_is_regular_outside_acs():
    mask = cartesian_mask(256, 4, center_fraction=0.04, kind="equispaced", seed=0)
    lines = torch.nonzero(mask).flatten()
    for side in (lines[lines < 123], lines[lines > 133]):  # each side of the ACS block
        gaps = side.diff()
        assert int(gaps.max() - gaps.min()) <= 1


@pytest.mark.parametrize("bad", [{"acceleration": 0.5}, {"kind": "radial"}, {"center_fraction": 0.0}])
def test_mask_rejects_bad_options(bad):
    options = {"acceleration": 4, "kind": "random", "center_fraction": 0.08} | bad
    with pytest.raises(ValueError):
        cartesian_mask(64, options.pop("acceleration"), **options)
