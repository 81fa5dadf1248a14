from __future__ import annotations

import numpy as np
import torch

from edgesr import baselines
from edgesr.evaluate import recon_samples, score_recon, score_sr, sr_pairs


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


def test_recon_samples_can_use_maps_estimated_from_acs(tiny_dataset):
    options = {"acceleration": 3, "max_slices": 1, "center_fraction": 0.25}
    (given, _), (estimated, _) = (
        next(recon_samples(tiny_dataset, **options)),
        next(recon_samples(tiny_dataset, **options, maps="lowres")),
    )
    torch.testing.assert_close(given.kspace, estimated.kspace)
    assert not torch.allclose(given.sens_maps, estimated.sens_maps)
    scores = score_recon(
        {"cg-sense": baselines.recon_cg_sense}, [(given, "simulated"), (estimated, "estimated")]
    )
    true_maps, estimated_maps = scores[0].psnr
    # Usable maps (garbage maps give < 20 dB); on real brain slices lowres maps match the true ones
    # (R = 4: 27.85 vs 27.64 dB), on this tiny 37x33 phantom with 8 ACS lines they cost some dB.
    assert estimated_maps > 30.0 and true_maps > 30.0
