from __future__ import annotations

import numpy as np
import pytest
import torch

import edgesr.data.prepare as prepare_module
from edgesr import baselines
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import PrepareConfig, prepare_dataset
from edgesr.data.sources import Source, SourceVolume
from edgesr.evaluate import recon_samples, score_recon, score_sr, sr_pairs


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch) -> PreparedDataset:
    """A prepared data set of one synthetic MR volume of smooth blobs (odd in-plane size)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, 37), np.linspace(-1, 1, 33), indexing="ij")
    slices = [np.exp(-((yy - 0.2 * np.sin(k / 5)) ** 2 + xx**2) * 3) * (1 + 0.1 * k / 40) for k in range(40)]
    volume = (np.stack(slices) * 100).astype(np.float32)
    path = tmp_path / "fake.bin"
    path.write_bytes(b"fake")
    source = Source(
        "fake-mr",
        "MR",
        "synthetic",
        "test",
        "CC0",
        locate=lambda: path,
        load=lambda p: SourceVolume(volume, (1, 1, 1)),
    )
    monkeypatch.setattr(prepare_module, "SOURCES", (source,))
    prepare_dataset(PrepareConfig(root=str(tmp_path / "cache")))
    return PreparedDataset(tmp_path / "cache")


def test_sr_pairs_follow_the_protocol(tiny_dataset):
    pairs = list(sr_pairs(tiny_dataset, modality="MR", scale=2))
    assert pairs
    lr, hr, slice_id = pairs[0]
    assert hr.shape == (1, 1, 36, 32) and lr.shape == (1, 1, 18, 16)  # cropped to a multiple of 2
    assert float(hr.max()) <= 1.0  # divided by the volume maximum
    assert slice_id.startswith("fake-mr:")
    scores = score_sr(
        {"zero-fill": lambda x, s, _: baselines.sr_zero_fill(x, s)}, pairs, scale=2, degradation="mr-kspace"
    )
    summary = scores[0].summary()
    assert summary["slices"] == len(pairs) and summary["psnr_db"] > 30


def test_recon_samples_are_reproducible_and_limited(tiny_dataset):
    first = list(recon_samples(tiny_dataset, acceleration=4, max_slices=2))
    second = list(recon_samples(tiny_dataset, acceleration=4, max_slices=2))
    assert len(first) == 2
    for (a, id_a), (b, id_b) in zip(first, second, strict=True):
        assert id_a == id_b
        torch.testing.assert_close(a.kspace, b.kspace)
    scores = score_recon({"zero-filled": baselines.recon_zero_filled}, first)
    assert len(scores[0].psnr) == 2 and all(np.isfinite(scores[0].psnr))
