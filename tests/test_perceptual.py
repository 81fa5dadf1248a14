from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from edgesr.errors import DataError
from edgesr.losses.perceptual import PerceptualLoss, VGG19Features, cached_feature_encoder, load_vgg19


def test_vgg19_loads_torchvision_style_keys(tmp_path):
    reference = VGG19Features()
    path = tmp_path / "vgg19.safetensors"
    save_file({k: v for k, v in reference.state_dict().items() if k.startswith("features.")}, str(path))
    loaded = load_vgg19(path)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(loaded(x)[0], reference(x)[0])
    save_file(
        {"features.0.weight": reference.features[0].weight.detach()}, str(tmp_path / "partial.safetensors")
    )
    with pytest.raises(DataError, match="lack"):
        load_vgg19(tmp_path / "partial.safetensors")


def test_edgesr_feature_encoder_is_trained_once_and_cached(tiny_dataset, tmp_path):
    cache = tmp_path / "features"
    first = cached_feature_encoder(tiny_dataset, cache, steps=3)
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = cached_feature_encoder(tiny_dataset, cache, steps=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    loss = PerceptualLoss(first)
    target = torch.rand(2, 1, 32, 32)
    pred = target.clone().requires_grad_(True)
    assert float(loss(pred, target).detach()) == 0.0
    value = loss(pred + 0.1 * torch.randn_like(pred), target)
    value.backward()
    assert float(value.detach()) > 0 and pred.grad is not None
    assert all(not p.requires_grad for p in loss.features.parameters())
