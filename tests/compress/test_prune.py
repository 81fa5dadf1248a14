"""Structured pruning: every family prunes, runs, round-trips through a checkpoint, and keeps the
channel groups DepGraph cannot see (PixelShuffle's r^2 blocks, complex channel pairs) intact."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from edgesr.compress.prune import count_macs_params, keep_blocks, prune
from edgesr.models import create_model
from edgesr.models._shapes import apply_layer_shapes, shape_changes
from edgesr.models.deepcomplex import ComplexConv2d
from edgesr.train.checkpoint import load_model
from tests.conftest import save_model

FAMILIES = [
    ("rdn_tiny", {"scale": 2}),
    ("rdn_tiny", {"scale": 4}),
    ("srgan_tiny", {}),
    ("modl_tiny", {}),
    ("deepcomplex_tiny", {"coils": 4}),
]
IDS = ["rdn-x2", "rdn-x4", "srgan", "modl", "deepcomplex"]


def _random_model(name: str, options: dict) -> nn.Module:
    """The preset with random non-zero weights everywhere (zero-initialised last layers included)."""
    torch.manual_seed(0)
    model = create_model(name, **options)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
            elif parameter.dim() == 1:
                parameter.uniform_(0.05, 0.2)
    return model.eval()


def _inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    if hasattr(model, "scale"):
        s = model.scale
        return (
            torch.rand(1, 1, 37, 31, generator=generator),
            torch.rand(1, 1, 37 * s, 31 * s, generator=generator),
        )
    coils = getattr(model, "coils", 3)
    mask = (torch.rand(1, 1, 1, 31, generator=generator) > 0.5).float()
    return (
        torch.randn(1, 2 * coils, 37, 31, generator=generator) * mask,
        mask,
        torch.randn(1, 2 * coils, 37, 31, generator=generator),
    )


def _output(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.parametrize(("name", "options"), FAMILIES, ids=IDS)
def test_prune_family(name: str, options: dict, tmp_path) -> None:
    model = _random_model(name, options)
    inputs = _inputs(model)
    before_state = copy.deepcopy(model.state_dict())
    before_out = _output(model, inputs)
    macs, params = count_macs_params(model, inputs)

    pruned = prune(model, inputs, ratio=0.5, round_to=2).eval()

    # The input model is untouched.
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(_output(model, inputs), before_out, rtol=0, atol=0)
    # Half the channels gone: params and MACs at most about half (interior layers lose ~3/4).
    pruned_macs, pruned_params = count_macs_params(pruned, inputs)
    assert pruned_params <= 0.55 * params and pruned_macs <= 0.55 * macs
    out = _output(pruned, inputs)
    assert out.shape == before_out.shape and torch.isfinite(out).all()
    # Describable as widths and rebuilt from them.
    changes = shape_changes(create_model(name, **options), pruned)
    assert changes
    save_model(tmp_path / "ckpt", pruned, name, options)
    loaded, _ = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(_output(loaded.eval(), inputs), out)


def _widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize(("name", "options"), FAMILIES, ids=IDS)
def test_round_to_and_ratio(name: str, options: dict) -> None:
    model = _random_model(name, options)
    step = 2 if name.startswith("deepcomplex") else 4  # deepcomplex_tiny has only 4 complex channels
    pruned = prune(model, _inputs(model), ratio=0.5, round_to=step)
    before, after = _widths(model), _widths(pruned)
    assert before.keys() == after.keys()
    changed = [n for n in before if before[n][1] != after[n][1]]
    assert changed
    for name_ in changed:
        out_before, out_after = before[name_][1], after[name_][1]
        assert out_after % step == 0, name_
        assert out_before * 0.5 <= out_after <= out_before * 0.5 + step, name_  # half, rounded up


def test_kept_channels_round_up_so_a_ratio_never_removes_more_than_asked() -> None:
    # torch-pruning alone rounds the kept count down: a 32-channel layer with round_to=16 kept 16 at
    # ratio 0.25 (as at 0.5) and was silently left whole at 0.75 (0 kept). edgesr rounds up.
    model = _random_model("rdn_tiny", {"scale": 2})
    trunk = _widths(model)["blocks.0.layers.0.0"][1]
    for step in (2, 4):
        for ratio in (0.25, 0.5, 0.75):
            pruned = prune(model, _inputs(model), ratio=ratio, round_to=step)
            expected = min(trunk, math.ceil((trunk - int(trunk * ratio)) / step) * step)
            assert _widths(pruned)["blocks.0.layers.0.0"][1] == expected, (step, ratio)
    # A ratio that rounds back up to every channel is an error, not a silent copy of the model.
    with pytest.raises(ValueError, match="removes no channel"):
        prune(model, _inputs(model), ratio=0.1, round_to=16)


def test_image_and_coil_channels_never_change() -> None:
    for name, options in FAMILIES:
        model = _random_model(name, options)
        pruned = prune(model, _inputs(model), ratio=0.7)
        if name.startswith("deepcomplex"):
            for block in pruned.blocks:
                first, last = block.net[0], block.net[-1]
                assert first.real.in_channels == last.real.out_channels == model.coils
                assert last.bias.numel() == 2 * model.coils
            continue
        part = pruned.denoiser if name.startswith("modl") else pruned
        convs = [m for m in part.modules() if isinstance(m, nn.Conv2d)]
        image_channels = 2 if name.startswith("modl") else model.in_channels
        assert convs[0].in_channels == convs[-1].out_channels == image_channels
        assert torch.isfinite(_output(pruned, _inputs(model))).all()


def test_target_macs() -> None:
    model = _random_model("rdn_tiny", {"scale": 2})
    inputs = _inputs(model)
    macs, _ = count_macs_params(model, inputs)
    pruned = prune(model, inputs, target_macs=0.6 * macs)
    pruned_macs, _ = count_macs_params(pruned, inputs)
    assert 0.4 * macs <= pruned_macs <= 0.6 * macs  # reached, without pruning far past it
    with pytest.raises(ValueError, match="target_macs"):
        prune(model, inputs, target_macs=1.0)
    with pytest.raises(ValueError, match="not below the unpruned model's"):  # would remove nothing
        prune(model, inputs, target_macs=2 * macs)


def test_target_params_and_exactly_one_target() -> None:
    model = _random_model("rdn_tiny", {"scale": 2})
    inputs = _inputs(model)
    _, params = count_macs_params(model, inputs)
    pruned = prune(model, inputs, target_params=0.5 * params)
    _, pruned_params = count_macs_params(pruned, inputs)
    assert 0.3 * params <= pruned_params <= 0.5 * params
    assert sum(p.numel() for p in pruned.parameters()) == pruned_params
    with pytest.raises(ValueError, match="not below the unpruned model's .* parameters"):
        prune(model, inputs, target_params=2 * params)
    with pytest.raises(ValueError, match="give exactly one of ratio, target_macs, target_params"):
        prune(model, inputs, ratio=0.5, target_params=0.5 * params)


def test_taylor_scores_come_from_the_given_loss_on_a_copy() -> None:
    """`edgesr compress` scores Taylor importance with the stage's loss on training batches: the loss
    sees the copy being pruned (its gradients score the channels), never the caller's model."""
    model = _random_model("rdn_tiny", {"scale": 2})
    inputs = _inputs(model)
    seen: list[nn.Module] = []

    def loss(copy: nn.Module) -> torch.Tensor:
        seen.append(copy)
        return copy(*inputs).abs().mean()

    pruned = prune(model, inputs, ratio=0.5, importance="taylor", taylor_loss=loss)
    assert len(seen) == 1 and seen[0] is not model
    assert all(p.grad is None for p in model.parameters()) and torch.isfinite(_output(pruned, inputs)).all()
    assert prune(model, inputs, ratio=0.5, importance="l1", taylor_loss=loss) is not None and len(seen) == 1


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "lamp"])
def test_importances(importance: str) -> None:
    model = _random_model("srgan_tiny", {})
    inputs = _inputs(model)
    pruned = prune(model, inputs, ratio=0.5, importance=importance)
    assert torch.isfinite(_output(pruned, inputs)).all()


def test_taylor_with_loss_fn_differs_from_magnitude_only_in_choice() -> None:
    model = _random_model("rdn_tiny", {"scale": 2})
    inputs = _inputs(model)
    target = torch.rand_like(inputs[1])
    pruned = prune(
        model, inputs, ratio=0.5, importance="taylor", loss_fn=lambda out: (out - target).abs().mean()
    )
    assert _widths(pruned) == _widths(prune(model, inputs, ratio=0.5))
    assert all(p.grad is None for p in pruned.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.5}, "ratio"),
        ({"ratio": 0.5, "target_macs": 1e6}, "exactly one of ratio, target_macs, target_params"),
        ({}, "exactly one of ratio, target_macs, target_params; got none"),
        ({"target_params": 0.0}, "target_params must be positive"),
        ({"target_macs": -1.0}, "target_macs"),
        ({"ratio": 0.5, "importance": "fisher"}, "importance"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "ignored": ["trunk"]}, "ignored"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    model = _random_model("rdn_tiny", {"scale": 2})
    with pytest.raises(ValueError, match=match):
        prune(model, _inputs(model), **options)


# --- the groupings DepGraph does not see ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "trunk"),
    [
        ("rdn_tiny", {"scale": 2}, ["shallow1", "shallow2", "blocks", "global_fusion"]),
        ("rdn_tiny", {"scale": 4}, ["shallow1", "shallow2", "blocks", "global_fusion"]),
        ("srgan_tiny", {}, ["head", "body", "body_tail"]),
    ],
    ids=["rdn-x2", "rdn-x4", "srgan"],
)
def test_pixel_shuffle_groups_stay_whole(name: str, options: dict, trunk: list[str]) -> None:
    """Pruning whole r^2 groups equals zeroing those groups in the original: the same pixels come out.

    The trunk is ignored so the upsampler's inputs are unchanged and its rows comparable one to one.
    """
    model = _random_model(name, options)
    inputs = _inputs(model)
    pruned = prune(model, inputs, ratio=0.5, ignored=trunk).eval()
    masked = copy.deepcopy(model)
    shuffles = [m for m in model.upsample if isinstance(m, nn.PixelShuffle)]
    convs = [n for n, m in model.upsample.named_children() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(shuffles) == (2 if model.scale == 4 else 1)
    for conv_name, shuffle in zip(convs, shuffles, strict=True):
        group = shuffle.upscale_factor**2
        original, after = model.upsample.get_submodule(conv_name), pruned.upsample.get_submodule(conv_name)
        assert after.out_channels == original.out_channels // 2 and after.out_channels % group == 0
        # Rows are matched on their input channels, a subset of the original's (x4: the first stage
        # already pruned the second stage's inputs).
        kept = _row_origin(original.weight, after.weight)
        for start in range(0, len(kept), group):
            block = kept[start : start + group]
            assert block[0] % group == 0 and block == list(range(block[0], block[0] + group))
        dropped = sorted(set(range(original.out_channels)) - set(kept))
        with torch.no_grad():
            masked.upsample.get_submodule(conv_name).weight[dropped] = 0
            masked.upsample.get_submodule(conv_name).bias[dropped] = 0
    # The same sums over fewer channels: equal up to float32 summation order, which differs between CPU
    # kernels (AVX2 vs AVX-512: 1.1e-5 on outputs near 0.8 was seen on an AVX2-only machine).
    torch.testing.assert_close(_output(pruned, inputs), _output(masked, inputs), atol=1e-4, rtol=1e-4)


def _row_origin(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which output row of ``original`` each output row of ``pruned`` is.

    A pruned row may have fewer input channels: it matches the original row that holds each of its
    input-channel kernels (random weights make the match unique).
    """
    origins = []
    for row in pruned:
        matches = [
            i
            for i in range(len(original))
            if all(any(torch.equal(channel, o) for o in original[i]) for channel in row)
        ]
        assert len(matches) == 1
        origins.append(matches[0])
    return origins


def test_pixel_shuffle_convs_keep_whole_groups_when_everything_is_pruned() -> None:
    for name, options in FAMILIES[:3]:
        model = _random_model(name, options)
        pruned = prune(model, _inputs(model), ratio=0.5, round_to=2)
        layers = list(pruned.upsample)
        for conv, shuffle in zip(layers, layers[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(shuffle, nn.PixelShuffle):
                assert conv.out_channels % (2 * shuffle.upscale_factor**2) == 0


def test_complex_channel_pairs_pruned_together() -> None:
    """Dropping complex channels equals zeroing their real/imag weights and both bias entries."""
    model = _random_model("deepcomplex_tiny", {"coils": 4})
    inputs = _inputs(model)
    pruned = prune(model, inputs, ratio=0.5).eval()
    masked = copy.deepcopy(model)
    pruned_any = False
    for (name, original), after in zip(
        [(n, m) for n, m in model.named_modules() if isinstance(m, ComplexConv2d)],
        [m for m in pruned.modules() if isinstance(m, ComplexConv2d)],
        strict=True,
    ):
        assert after.real.weight.shape == after.imag.weight.shape
        assert after.bias.numel() == 2 * after.real.out_channels
        if after.real.out_channels == original.real.out_channels:
            continue
        pruned_any = True
        kept = _row_origin(original.real.weight, after.real.weight)
        assert _row_origin(original.imag.weight, after.imag.weight) == kept  # real and imag together
        torch.testing.assert_close(after.bias.view(-1, 2), original.bias.view(-1, 2)[kept], rtol=0, atol=0)
        dropped = sorted(set(range(original.real.out_channels)) - set(kept))
        target = masked.get_submodule(name)
        assert isinstance(target, ComplexConv2d)
        with torch.no_grad():
            target.real.weight[dropped] = 0
            target.imag.weight[dropped] = 0
            target.bias.view(-1, 2)[dropped] = 0
    assert pruned_any
    torch.testing.assert_close(_output(pruned, inputs), _output(masked, inputs), atol=1e-4, rtol=1e-4)


def test_rdn_dense_concatenations_stay_consistent() -> None:
    model = _random_model("rdn_tiny", {"scale": 2})
    pruned = prune(model, _inputs(model), ratio=0.5)
    features = pruned.shallow2.out_channels
    assert features < model.shallow2.out_channels
    for block in pruned.blocks:
        seen = features
        for layer in block.layers:
            assert layer[0].in_channels == seen
            seen += layer[0].out_channels
        assert block.fusion.in_channels == seen and block.fusion.out_channels == features
    assert pruned.global_fusion[0].in_channels == len(pruned.blocks) * features
    assert pruned.shallow1.out_channels == pruned.global_fusion[1].out_channels == features


def test_srresnet_residual_trunk_coupled() -> None:
    model = _random_model("srgan_tiny", {})
    pruned = prune(model, _inputs(model), ratio=0.5)
    features = pruned.head[0].out_channels
    assert features < model.head[0].out_channels
    for block in pruned.body:
        assert block.body[0].in_channels == block.body[3].out_channels == features
        assert block.body[1].num_features == block.body[0].out_channels == block.body[2].num_parameters
    assert pruned.body_tail[0].out_channels == pruned.upsample[0].in_channels == features


def test_modl_denoiser_pruned_once() -> None:
    model = _random_model("modl_tiny", {})
    inputs = _inputs(model)
    pruned = prune(model, inputs, ratio=0.5)
    changes = shape_changes(create_model("modl_tiny"), pruned)
    assert changes and all(name.startswith("denoiser.") for name in changes)
    convs = [m for m in pruned.denoiser.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 2 and convs[-1].out_channels == 2
    assert [c.out_channels for c in convs[:-1]] == [4, 4]
    # One denoiser, called every unroll: the pruned one.
    calls = []
    handle = pruned.denoiser.register_forward_hook(lambda *_: calls.append(1))
    _output(pruned, inputs)
    handle.remove()
    assert len(calls) == model.iterations


def test_keep_blocks_removes_dense_blocks_and_their_global_fusion_inputs() -> None:
    """Depth pruning of an RDN: with the dropped block's fusion inputs zeroed the output is unchanged;
    the checkpoint's shape record (a shorter ModuleList, a narrower fusion) rebuilds it strictly."""
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2).eval()  # 2 blocks of 16 features
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.05)
    with torch.no_grad():  # block 1 then adds nothing to the output: dropping it changes nothing
        model.global_fusion[0].weight[:, 16:32] = 0
    lr, base = torch.rand(1, 1, 11, 13), torch.rand(1, 1, 22, 26)
    shallow = keep_blocks(model, [0])
    assert len(shallow.blocks) == 1 and shallow.global_fusion[0].in_channels == 16
    assert len(model.blocks) == 2 and model.global_fusion[0].in_channels == 32  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(shallow(lr, base), model(lr, base), rtol=0, atol=1e-6)
    changes = shape_changes(create_model("rdn_tiny", scale=2), shallow)
    assert changes["blocks"] == {"type": "ModuleList", "length": 1}
    assert changes["global_fusion.0"]["in_channels"] == 16
    rebuilt = apply_layer_shapes(create_model("rdn_tiny", scale=2), json.loads(json.dumps(changes)))
    rebuilt.load_state_dict(shallow.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(lr, base), shallow(lr, base), rtol=0, atol=0)
    # Channels first, then depth: the two records together.
    narrow = keep_blocks(prune(model, (lr, base), ratio=0.5, round_to=4), [1])
    both = shape_changes(create_model("rdn_tiny", scale=2), narrow)
    rebuilt = apply_layer_shapes(create_model("rdn_tiny", scale=2), json.loads(json.dumps(both)))
    rebuilt.load_state_dict(narrow.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("keep", "match"),
    [([], "at least one"), ([2], "0..1"), ([1, 0], "increasing"), ([0, 1], "nothing to remove")],
)
def test_keep_blocks_refuses_what_it_cannot_do(keep, match) -> None:
    with pytest.raises(ValueError, match=match):
        keep_blocks(create_model("rdn_tiny", scale=2), keep)
    with pytest.raises(ValueError, match="only an RDN"):
        keep_blocks(create_model("srgan_tiny", scale=4), [0])
    with pytest.raises(ValueError, match="length must be an integer in 1..2"):
        apply_layer_shapes(create_model("rdn_tiny", scale=2), {"blocks": {"type": "ModuleList", "length": 3}})
    with pytest.raises(ValueError, match="no ModuleList"):
        apply_layer_shapes(
            create_model("rdn_tiny", scale=2), {"shallow1": {"type": "ModuleList", "length": 1}}
        )
