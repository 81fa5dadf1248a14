"""Pruned models round-trip through a JSON shape spec: prune by hand, record, rebuild, load, compare."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgesr.models import create_model
from edgesr.models._shapes import apply_layer_shapes, layer_shapes, shape_changes
from edgesr.models.deepcomplex import ComplexConv2d
from edgesr.models.srgan import Discriminator
from edgesr.physics.masks import cartesian_mask


def _keep(owner: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    """Keeps the entries ``index`` along ``dim`` of one of ``owner``'s parameters or buffers."""
    old = getattr(owner, name)
    if old is None:
        return
    new = old.detach().index_select(dim, index).clone()
    setattr(
        owner,
        name,
        nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new,
    )


def _keep_outputs(module: nn.Module, index: torch.Tensor) -> set[str]:
    """Drops output channels (tensors and width attributes); returns the layer names it changed."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        _keep(module, "weight", 0, index)
        _keep(module, "bias", 0, index)
        if isinstance(module, nn.Conv2d):
            module.out_channels = len(index)
        else:
            module.out_features = len(index)
    elif isinstance(module, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _keep(module, name, 0, index)
        module.num_features = len(index)
    elif isinstance(module, nn.PReLU):
        _keep(module, "weight", 0, index)
        module.num_parameters = len(index)
    elif isinstance(module, ComplexConv2d):
        _keep_outputs(module.real, index)
        _keep_outputs(module.imag, index)
        _keep(module, "bias", 0, torch.stack([2 * index, 2 * index + 1], dim=1).flatten())  # interleaved
        return {"real", "imag", "bias"}
    else:
        raise TypeError(f"cannot prune the outputs of {type(module).__name__}")
    return {""}


def _keep_inputs(module: nn.Module, index: torch.Tensor) -> set[str]:
    if isinstance(module, nn.Conv2d):
        _keep(module, "weight", 1, index)
        module.in_channels = len(index)
    elif isinstance(module, nn.Linear):
        _keep(module, "weight", 1, index)
        module.in_features = len(index)
    elif isinstance(module, ComplexConv2d):
        _keep_inputs(module.real, index)
        _keep_inputs(module.imag, index)
        return {"real", "imag"}
    else:
        raise TypeError(f"cannot prune the inputs of {type(module).__name__}")
    return {""}


def prune(
    model: nn.Module,
    keep: list[int],
    *,
    outputs: Mapping[str, int],
    inputs: Mapping[str, int],
) -> set[str]:
    """Drops the channels of one feature map everywhere it is made and read, keeping ``keep``.

    Args:
        model: changed in place.
        keep: the map's channels to keep.
        outputs: the layers that make the map (a conv, then its per-channel BN/PReLU), each with the
            layer's channels per map channel: 1, or r^2 for a conv feeding ``PixelShuffle(r)``.
        inputs: the layers that read the map, each with the channel where the map starts in the
            layer's input (RDN's dense layers read a concatenation of earlier maps).

    Returns:
        The names of the layers and bare tensors that changed: what ``shape_changes`` must report.
    """
    modules = dict(model.named_modules())
    index = torch.tensor(keep)
    first, group = next(iter(outputs.items()))
    weight = modules[first].weight if hasattr(modules[first], "weight") else modules[first].real.weight
    width = weight.shape[0] // group
    changed: set[str] = set()
    for name, per_channel in outputs.items():
        grouped = (index[:, None] * per_channel + torch.arange(per_channel)).flatten()
        changed |= {f"{name}.{part}".rstrip(".") for part in _keep_outputs(modules[name], grouped)}
    for name, offset in inputs.items():
        module = modules[name]
        total = (module.real if isinstance(module, ComplexConv2d) else module).weight.shape[1]
        spliced = torch.cat([torch.arange(offset), offset + index, torch.arange(offset + width, total)])
        changed |= {f"{name}.{part}".rstrip(".") for part in _keep_inputs(module, spliced)}
    return changed


def _prune_rdn(model: nn.Module) -> set[str]:
    # rdn_tiny: G0=16, G=8, C=2 layers per block; a dense layer's growth feeds every later layer of its
    # block and the block's fusion, at offset G0 + i*G of their concatenated inputs.
    changed = prune(
        model,
        [0, 2, 3, 5, 7],
        outputs={"blocks.0.layers.0.0": 1},
        inputs={"blocks.0.layers.1.0": 16, "blocks.0.fusion": 16},
    )
    changed |= prune(model, [1, 4, 6], outputs={"blocks.1.layers.1.0": 1}, inputs={"blocks.1.fusion": 24})
    changed |= prune(
        model, list(range(0, 16, 2)), outputs={"global_fusion.0": 1}, inputs={"global_fusion.1": 0}
    )
    # Sub-pixel upsampling: whole groups of r^2 conv outputs, one image-side channel each.
    # At x2 and x3 one conv feeds PixelShuffle(r), then the image conv.
    group = model.scale**2
    changed |= prune(model, [0, 1, 5, 9, 10, 14], outputs={"upsample.0": group}, inputs={"to_image": 0})
    return changed


def _prune_srresnet(model: nn.Module) -> set[str]:
    # A residual block's first conv feeds (through BN and PReLU) only its second conv.
    changed = prune(
        model,
        [1, 2, 4, 6, 7],
        outputs={"body.0.body.0": 1, "body.0.body.1": 1, "body.0.body.2": 1},
        inputs={"body.0.body.3": 0},
    )
    changed |= prune(
        model,
        [0, 3, 5],
        outputs={"body.1.body.0": 1, "body.1.body.1": 1, "body.1.body.2": 1},
        inputs={"body.1.body.3": 0},
    )
    # x4 upsampling is two x2 stages, each conv -> PixelShuffle(2) -> PReLU.
    changed |= prune(
        model, [0, 2, 3, 6, 7], outputs={"upsample.0": 4, "upsample.2": 1}, inputs={"upsample.3": 0}
    )
    changed |= prune(model, [1, 2, 5], outputs={"upsample.3": 4, "upsample.5": 1}, inputs={"to_image": 0})
    return changed


def _prune_modl(model: nn.Module) -> set[str]:
    # modl_tiny's denoiser: conv(2->8)-BN-ReLU-conv(8->8)-BN-ReLU-conv(8->2).
    changed = prune(
        model,
        [0, 1, 3, 4, 6],
        outputs={"denoiser.net.0": 1, "denoiser.net.1": 1},
        inputs={"denoiser.net.3": 0},
    )
    changed |= prune(
        model, [2, 5, 7], outputs={"denoiser.net.3": 1, "denoiser.net.4": 1}, inputs={"denoiser.net.6": 0}
    )
    return changed


def _prune_deepcomplex(model: nn.Module) -> set[str]:
    # deepcomplex_tiny: each block is ComplexConv2d(4 coils -> 4) - CReLU - ComplexConv2d(4 -> 4 coils).
    changed = prune(model, [0, 2, 3], outputs={"blocks.0.net.0": 1}, inputs={"blocks.0.net.2": 0})
    changed |= prune(model, [1, 2], outputs={"blocks.1.net.0": 1}, inputs={"blocks.1.net.2": 0})
    return changed


def _sr_inputs(scale: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 1, 37, 31, generator=generator)
    return lr, F.interpolate(lr, scale_factor=scale, mode="bicubic")


def _recon_inputs(coils: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    height, width = 37, 31
    mask = cartesian_mask(width, 2, center_fraction=0.2, seed=0).view(1, 1, 1, width).expand(2, -1, -1, -1)
    kspace = torch.randn(2, 2 * coils, height, width, generator=generator) * mask
    maps = torch.randn(2, 2 * coils, height, width, generator=generator)  # random coil maps
    return kspace, mask, maps


CASES: dict[
    str, tuple[str, dict[str, int], Callable[[nn.Module], set[str]], Callable[[], tuple[torch.Tensor, ...]]]
] = {
    "rdn_tiny-x2": ("rdn_tiny", {"scale": 2}, _prune_rdn, lambda: _sr_inputs(2)),
    "rdn_tiny-x3": ("rdn_tiny", {"scale": 3}, _prune_rdn, lambda: _sr_inputs(3)),
    "srgan_tiny-x4": ("srgan_tiny", {"scale": 4}, _prune_srresnet, lambda: _sr_inputs(4)),
    "modl_tiny": ("modl_tiny", {}, _prune_modl, _recon_inputs),
    "deepcomplex_tiny-4coils": ("deepcomplex_tiny", {"coils": 4}, _prune_deepcomplex, _recon_inputs),
}


@torch.no_grad()
def _randomize(model: nn.Module) -> nn.Module:
    """Random weights everywhere: zero-initialised output layers would hide any wrong channel."""
    torch.manual_seed(1)
    for name, tensor in model.state_dict().items():
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5)
        elif tensor.is_floating_point():
            tensor.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_model_round_trips_through_json_shapes(case):
    name, options, prune_by_hand, make_inputs = CASES[case]
    pruned = _randomize(create_model(name, **options))
    inputs = make_inputs()
    with torch.no_grad():
        unpruned_output = pruned(*inputs)
    expected_names = prune_by_hand(pruned)

    changes = shape_changes(create_model(name, **options), pruned)
    assert set(changes) == expected_names
    stored = json.loads(json.dumps(changes))
    assert stored == changes  # only JSON types: nothing lost on the way to checkpoint.json

    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model(name, **options).load_state_dict(pruned.state_dict(), strict=True)
    rebuilt = apply_layer_shapes(create_model(name, **options), stored)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.eval()

    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert shape_changes(create_model(name, **options), rebuilt) == changes
    with torch.no_grad():
        expected, output = pruned(*inputs), rebuilt(*inputs)
    assert torch.equal(output, expected)
    assert not torch.allclose(output, unpruned_output)  # the pruning did reach the output


def test_pruned_linear_layers_round_trip():
    preset = Discriminator(features=4)
    pruned = _randomize(Discriminator(features=4))
    changed = prune(pruned, [0, 5, 9, 11, 40], outputs={"head.2": 1}, inputs={"head.4": 0})
    changes = shape_changes(preset, pruned)
    assert set(changes) == changed == {"head.2", "head.4"}
    assert changes["head.2"] == {"type": "Linear", "in_features": 32, "out_features": 5, "bias": True}
    rebuilt = apply_layer_shapes(Discriminator(features=4), json.loads(json.dumps(changes))).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    image = torch.rand(2, 1, 37, 31)
    with torch.no_grad():
        assert torch.equal(rebuilt(image), pruned(image))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rdn_tiny", {"scale": 2}),
        ("srgan_tiny", {"scale": 4}),
        ("modl_tiny", {}),
        ("deepcomplex_tiny", {"coils": 4}),
    ],
)
def test_unpruned_model_has_no_changes_and_every_tensor_is_described(name, options):
    model = create_model(name, **options)
    assert shape_changes(create_model(name, **options), model) == {}
    assert apply_layer_shapes(model, {}) is model
    shapes = layer_shapes(model)
    for key in model.state_dict():
        owner = key.rpartition(".")[0]
        assert key in shapes or owner in shapes, f"{key} is in no recorded layer or bare tensor"


def test_bare_parameters_are_recorded_with_their_shapes():
    modl_shapes = layer_shapes(create_model("modl_tiny"))
    assert modl_shapes["lam_raw"] == {"type": "Parameter", "shape": []}
    assert modl_shapes["denoiser.net.1"]["type"] == "BatchNorm2d"
    complex_shapes = layer_shapes(create_model("deepcomplex_tiny", coils=4))
    assert complex_shapes["blocks.0.net.0.bias"] == {"type": "Parameter", "shape": [8]}
    assert complex_shapes["consistency.1.raw"] == {"type": "Parameter", "shape": []}
    assert complex_shapes["blocks.0.net.0.real"]["out_channels"] == 4


def test_bad_name_raises():
    model = create_model("rdn_tiny")
    entry = layer_shapes(model)["shallow2"]
    with pytest.raises(ValueError, match="'shallow3'.*no Conv2d"):
        apply_layer_shapes(model, {"shallow3": entry})
    with pytest.raises(ValueError, match="'blocks.7.fusion'"):
        apply_layer_shapes(model, {"blocks.7.fusion": entry})
    with pytest.raises(ValueError, match="'lam_raw'.*no Parameter"):
        apply_layer_shapes(model, {"lam_raw": {"type": "Parameter", "shape": [1]}})


def test_type_mismatch_raises():
    discriminator = Discriminator(features=4)
    conv = layer_shapes(discriminator)["features.0"]
    with pytest.raises(ValueError, match="'head.2': recorded Conv2d, found Linear"):
        apply_layer_shapes(discriminator, {"head.2": conv})
    modl = create_model("modl_tiny")
    with pytest.raises(ValueError, match="'lam_raw': recorded Conv2d, found Parameter"):
        apply_layer_shapes(modl, {"lam_raw": conv})
    with pytest.raises(ValueError, match="'denoiser.net.0': recorded Parameter, found Conv2d"):
        apply_layer_shapes(modl, {"denoiser.net.0": {"type": "Parameter", "shape": [3]}})
    with pytest.raises(ValueError, match="belongs to a Conv2d layer"):
        apply_layer_shapes(modl, {"denoiser.net.0.weight": {"type": "Parameter", "shape": [3, 2, 3, 3]}})
    with pytest.raises(ValueError, match="unknown type 'ConvTranspose2d'"):
        apply_layer_shapes(modl, {"denoiser.net.0": {"type": "ConvTranspose2d"}})


def test_malformed_entries_raise_and_leave_the_model_unchanged():
    model = create_model("modl_tiny")
    before = layer_shapes(model)
    narrower = dict(before["denoiser.net.0"], out_channels=5)
    with pytest.raises(ValueError, match="'denoiser.net.3'.*out_channels must be a positive integer"):
        apply_layer_shapes(
            model,
            {"denoiser.net.0": narrower, "denoiser.net.3": dict(before["denoiser.net.3"], out_channels=0)},
        )
    with pytest.raises(ValueError, match="'denoiser.net.1'.*cannot rebuild"):
        apply_layer_shapes(model, {"denoiser.net.1": {"type": "BatchNorm2d", "num_features": 5}})
    with pytest.raises(ValueError, match="'lam_raw': shape must be a list of sizes"):
        apply_layer_shapes(model, {"lam_raw": {"type": "Parameter", "shape": [-1]}})
    assert layer_shapes(model) == before  # nothing applied when any entry is bad


class _WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.norm = nn.GroupNorm(2, 4)


class _MyConv(nn.Conv2d):
    pass


def test_unsupported_layers_raise_naming_module_and_type():
    with pytest.raises(ValueError, match="module 'norm' of type GroupNorm holds tensors"):
        layer_shapes(_WithGroupNorm())
    with pytest.raises(ValueError, match="module '1' of type _MyConv"):
        layer_shapes(nn.Sequential(nn.ReLU(), _MyConv(2, 3, 1)))


def test_widths_must_agree_with_tensors():
    """A pruner that slices a weight but leaves ``out_channels`` fails at save time, not at load."""
    model = create_model("srgan_tiny")
    _keep(model.head[0], "weight", 0, torch.arange(5))
    with pytest.raises(ValueError, match="layer 'head.0' \\(Conv2d\\): its tensors .* disagree"):
        layer_shapes(model)


def test_shape_changes_rejects_another_architecture():
    with pytest.raises(ValueError, match="not its preset with other widths"):
        shape_changes(create_model("rdn_tiny"), create_model("srgan_tiny"))


def test_rebuild_keeps_dtype_mode_frozen_parameters_and_sharing():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), shared, shared).double().eval()
    model[0].weight.requires_grad_(False)
    pruned = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1))
    changes = {"0": layer_shapes(pruned)["0"], "1": layer_shapes(pruned)["1"]}
    apply_layer_shapes(model, changes)
    assert model[1] is model[2]  # both references to the shared conv see the new one
    assert model[0].weight.dtype == torch.float64 and not model[0].weight.requires_grad
    assert not model[0].training
    assert (model[0].out_channels, model[1].in_channels) == (3, 3)


def test_a_pruned_checkpoint_loads_without_pickles(tmp_path):
    """save_checkpoint records the widths that differ from the preset; load_model rebuilds them."""
    from edgesr.train.checkpoint import load_model, read_metadata
    from tests.conftest import save_model

    pruned = _randomize(create_model("rdn_tiny", scale=2))
    _prune_rdn(pruned)
    folder = save_model(tmp_path / "pruned", pruned, "rdn_tiny", {"scale": 2})
    assert read_metadata(folder)["layer_shapes"]  # only the changed layers are recorded
    loaded, _ = load_model(folder)
    lr = torch.rand(1, 1, 37, 31)
    base = torch.rand(1, 1, 74, 62)
    assert torch.equal(loaded.eval()(lr, base), pruned.eval()(lr, base))
