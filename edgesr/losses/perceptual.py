"""Perceptual (feature) loss for SRGAN without downloadable VGG weights.

SRGAN's content loss compares VGG19 features of the SR and HR images. ImageNet VGG weights cannot be
downloaded here (nor on many consoles), so edgesr offers two feature networks:

* ``edgesr`` (default): a VGG-style encoder (3x3 convs, 32-64-128 channels, two poolings) that edgesr
  trains itself, as the encoder of a denoising-and-deblurring autoencoder on the training slices of
  the prepared data set (MR and CT). It needs no labels, it sees the same intensities and anatomy as
  the SR model, and an autoencoder's features must keep the edges and texture that a pixel loss
  averages away — what a perceptual loss is for. It takes a few CPU minutes and is cached per data
  set fingerprint.
* ``vgg19``: torchvision's VGG19 layout loaded from a local safetensors file the user supplies
  (``features.N.weight`` keys); grayscale is repeated to RGB with ImageNet normalisation and the
  features are taken at relu5_4 (before the last max-pooling), as in the SRGAN paper.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from safetensors.torch import load_file, save_file
from torch import nn

from edgesr.data.dataset import PreparedDataset
from edgesr.errors import DataError
from edgesr.physics.degrade import gaussian_blur


class FeatureEncoder(nn.Module):
    """edgesr's feature network: ``[B, 1, H, W]`` -> features after stages 2 and 3 (ReLU outputs)."""

    def __init__(self) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()
            )

        self.stage1, self.stage2, self.stage3 = stage(1, 32), stage(32, 64), stage(64, 128)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(F.max_pool2d(f1, 2))
        f3 = self.stage3(F.max_pool2d(f2, 2))
        return [f2, f3]


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


# torchvision's vgg19().features, up to relu5_4: conv channel plan with "M" for max-pooling.
_VGG19_PLAN = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
)


class VGG19Features(nn.Module):
    """VGG19 convolutional features up to relu5_4, with torchvision's module indices (``features.N``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        rgb = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return [self.features(rgb)]


def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19 features from a local safetensors file with torchvision's ``features.N.weight/bias`` keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such VGG19 weights file")
    model = VGG19Features()
    state = {k: v for k, v in load_file(str(path)).items() if k.startswith("features.")}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing:
        raise DataError(f"{path}: VGG19 weights lack {', '.join(missing[:4])}...")
    return model


def train_feature_encoder(
    dataset: PreparedDataset, *, steps: int = 1500, batch_size: int = 16, patch: int = 64, seed: int = 0
) -> FeatureEncoder:
    """Trains :class:`FeatureEncoder` as a denoising/deblurring autoencoder on the train split."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = [torch.from_numpy(s.image / s.volume_max) for s in dataset.slices("train")]
    if not images:
        raise DataError(f"no training slices at {dataset.path}")
    patch = min(patch, *(min(image.shape) for image in images)) // 4 * 4  # two poolings
    encoder, decoder = FeatureEncoder(), _Decoder()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    # Minutes on a CPU, once per data set (cached): shown, so a run does not look stuck before step 1.
    description = "training the perceptual loss's feature encoder (once per data set)"
    for _ in track(range(steps), description=description, console=Console(stderr=True), transient=True):
        batch = []
        for _ in range(batch_size):
            image = images[int(torch.randint(0, len(images), (), generator=generator))]
            top = int(torch.randint(0, image.shape[0] - patch + 1, (), generator=generator))
            left = int(torch.randint(0, image.shape[1] - patch + 1, (), generator=generator))
            batch.append(image[top : top + patch, left : left + patch])
        clean = torch.stack(batch)[:, None].float()
        sigma = float(torch.rand((), generator=generator)) * 1.5
        corrupted = gaussian_blur(clean, sigma) + 0.03 * torch.randn(clean.shape, generator=generator)
        loss = F.l1_loss(decoder(encoder(corrupted)[-1]), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return encoder.eval()


def cached_feature_encoder(dataset: PreparedDataset, cache_dir: Path, *, steps: int = 1500) -> FeatureEncoder:
    """The feature encoder for this data set, trained once and cached by the data set's fingerprint."""
    fingerprint = hashlib.sha256(
        json.dumps([dataset.manifest["fingerprint"], steps], sort_keys=True).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"edgesr-features-{fingerprint}.safetensors"
    encoder = FeatureEncoder()
    if path.is_file():
        encoder.load_state_dict(load_file(str(path)), strict=True)
        return encoder.eval()
    encoder = train_feature_encoder(dataset, steps=steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return encoder


class PerceptualLoss(nn.Module):
    """Mean squared distance between frozen features of prediction and target, summed over the taps."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.eval()
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(target)
        return sum(
            (F.mse_loss(p, t) for p, t in zip(self.features(pred), target_features, strict=True)),
            torch.zeros((), device=pred.device),
        )
