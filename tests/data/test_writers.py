from __future__ import annotations

import numpy as np
import pytest

from edgesr.data.images import load_image
from edgesr.data.writers import cast_to, write_image
from edgesr.errors import DataError


def test_cast_rounds_and_clips_integers():
    values = np.array([-3.4, 0.6, 70000.2])
    np.testing.assert_array_equal(cast_to(values, "uint16"), [0, 1, 65535])
    np.testing.assert_array_equal(cast_to(values, "int16"), [-3, 1, 32767])
    assert cast_to(values, "float32").dtype == np.float32


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif", ".npy"])
def test_round_trip_through_the_readers(tmp_path, suffix):
    data = np.random.default_rng(0).random((3, 9, 7)).astype(np.float32) * 1000
    path = write_image(tmp_path / f"out{suffix}", data, dtype="uint16")
    np.testing.assert_array_equal(load_image(path).data, np.rint(data))


def test_png_takes_one_slice_and_bad_suffix_or_nan_is_refused(tmp_path):
    with pytest.raises(DataError, match="PNG holds one slice"):
        write_image(tmp_path / "x.png", np.zeros((2, 4, 4)), dtype="uint8")
    with pytest.raises(DataError, match="cannot write this format"):
        write_image(tmp_path / "x.jpg", np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="NaN"):
        write_image(tmp_path / "x.npy", np.full((1, 4, 4), np.nan))
    assert list(tmp_path.iterdir()) == []
