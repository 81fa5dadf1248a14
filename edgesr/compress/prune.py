"""Structured channel pruning with torch-pruning (DepGraph), plus the groupings DepGraph cannot see.

:func:`prune` returns a pruned copy of a model. Torch-pruning's dependency graph couples the channels
of plain ``nn.Conv2d`` layers (residual adds, RDN's dense concatenations and 1x1 fusions, BN, PReLU).
Two couplings it gets wrong are handled here, with the same importance criterion:

* ``nn.PixelShuffle(r)`` turns ``r^2`` consecutive channels into one; DepGraph treats it as
  channel-preserving (it crashes or mis-prunes, DESIGN.md 5). The conv before a shuffle is kept out of
  DepGraph (only its input side follows the trunk) and its outputs are pruned here in whole groups of
  ``r^2``, together with the channels after the shuffle (a per-channel PReLU, the next conv's inputs).
* :class:`edgesr.models.deepcomplex.ComplexConv2d`: ``real`` and ``imag`` share output channels and the
  complex bias interleaves them (``2k``, ``2k + 1``), a layout DepGraph does not trace. A complex conv
  whose output feeds (through CReLU) another complex conv is pruned here as one unit.

A module called more than once per forward (MoDL's denoiser, shared across unrolls) is pruned once, on
its own, with the input of its first call: DepGraph would otherwise see one graph node per unroll.
Plain convs outside such shared modules then stay as they are (MoDL has none).

Image channels, coils and the outputs of each model's last conv never change: the last conv called in
each pruned part is always ignored, and PixelShuffle/complex units only prune channels that end in
another conv.

Example:
    >>> small = prune(create_model("rdn_tiny"), (lr, base), ratio=0.5, round_to=4)
    >>> shape_changes(create_model("rdn_tiny"), small)  # what a checkpoint stores
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgesr.models.deepcomplex import ComplexConv2d
from edgesr.models.rdn import RDN

IMPORTANCES = ("l1", "l2", "taylor", "lamp")
# Modules that act on each channel alone: a pruned channel can be followed through them.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity)


def count_macs_params(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[float, int]:
    """(MACs, parameters) of one forward on ``example_inputs``, as torch-pruning counts them."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        model.train(was_training)
    return float(macs), int(params)


@dataclass
class _Call:
    module: nn.Module
    inputs: list[torch.Tensor]
    output: torch.Tensor | None


@dataclass
class _Unit:
    """Output channels pruned here rather than by DepGraph: a producer, its group size, its followers."""

    producer: nn.Module  # nn.Conv2d (before a PixelShuffle) or ComplexConv2d
    group: int  # r^2 for a shuffle, 1 for a complex conv
    prelus: list[nn.PReLU] = field(default_factory=list)
    consumer: nn.Module | None = None  # the conv (or complex conv) whose inputs are the pruned channels
    scores: torch.Tensor | None = None


def _trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[_Call]:
    """Every module call of one forward, in order; ComplexConv2d counts as one call (not its convs)."""
    calls: list[_Call] = []
    inside_complex = {id(m) for c in model.modules() if isinstance(c, ComplexConv2d) for m in c.modules()}
    inside_complex -= {id(c) for c in model.modules() if isinstance(c, ComplexConv2d)}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        # Holding the tensors keeps their ids unique for the whole trace.
        calls.append(_Call(module, tensors, output if isinstance(output, torch.Tensor) else None))

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) not in inside_complex]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, ComplexConv2d) or not any(True for _ in module.children())


def _follow(calls: list[_Call], start: int) -> tuple[list[nn.PReLU], nn.Module | None]:
    """From call ``start``'s output, through channel-wise modules, to the one conv that consumes it.

    Returns ``(per-channel PReLUs on the way, the consumer)``; the consumer is ``None`` when the path
    branches, ends in something else or leaves through a tensor op (a residual add): then the channels
    are not safe to prune here.
    """
    output = calls[start].output
    seen = {id(calls[start].module)}
    prelus: list[nn.PReLU] = []
    index = start
    while output is not None:
        later = [
            (i, c)
            for i, c in enumerate(calls)
            if i > index
            and c.inputs
            and c.inputs[0] is output
            and id(c.module) not in seen
            and _is_leaf(c.module)
        ]
        if not later:
            return prelus, None
        index, call = later[0]
        # An in-place activation returns its input, so the next module also reads ``output``: not a branch.
        in_place = isinstance(call.module, _ELEMENTWISE) and call.output is output
        if len(later) > 1 and not in_place:
            return prelus, None
        seen.add(id(call.module))
        if isinstance(call.module, (nn.Conv2d, ComplexConv2d)) and len(call.inputs) == 1:
            return prelus, call.module
        if not isinstance(call.module, _ELEMENTWISE):
            return prelus, None
        if isinstance(call.module, nn.PReLU) and call.module.num_parameters > 1:
            prelus.append(call.module)
        output = call.output
    return prelus, None


def _units(calls: list[_Call], skip: set[int]) -> tuple[list[_Unit], set[int]]:
    """The PixelShuffle and complex-conv units, and the ids of all producers before a shuffle."""
    units: list[_Unit] = []
    pre_shuffle: set[int] = set()
    # Leaves only: a container returns its last child's output and would hide the real producer.
    producers = {id(c.output): c.module for c in calls if c.output is not None and _is_leaf(c.module)}
    for i, call in enumerate(calls):
        module = call.module
        if isinstance(module, nn.PixelShuffle):
            producer = producers.get(id(call.inputs[0]))
            if isinstance(producer, nn.Conv2d):
                pre_shuffle.add(id(producer))
                prelus, consumer = _follow(calls, i)
                if consumer is not None and id(producer) not in skip and isinstance(consumer, nn.Conv2d):
                    units.append(_Unit(producer, module.upscale_factor**2, prelus, consumer))
        elif isinstance(module, ComplexConv2d) and id(module) not in skip:
            prelus, consumer = _follow(calls, i)
            if isinstance(consumer, ComplexConv2d) and not prelus:
                units.append(_Unit(module, 1, [], consumer))
    return units, pre_shuffle


def _channel_tensors(unit: _Unit) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
    """(tensor, its gradient, dimension) whose slices along ``dimension`` belong to the unit's channels."""
    producer, consumer = unit.producer, unit.consumer

    def entry(parameter: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        return parameter, parameter.grad, dim

    triples = []
    if isinstance(producer, ComplexConv2d):
        triples += [entry(producer.real.weight, 0), entry(producer.imag.weight, 0)]
        grad = producer.bias.grad
        # (k, real/imag) rows of the interleaved bias: complex channel k owns entries 2k and 2k + 1.
        triples.append((producer.bias.view(-1, 2), None if grad is None else grad.view(-1, 2), 0))
    else:
        assert isinstance(producer, nn.Conv2d)
        triples.append(entry(producer.weight, 0))
        if producer.bias is not None:
            triples.append(entry(producer.bias, 0))
    if isinstance(consumer, ComplexConv2d):
        triples += [entry(consumer.real.weight, 1), entry(consumer.imag.weight, 1)]
    elif isinstance(consumer, nn.Conv2d):
        triples.append(entry(consumer.weight, 1))
    return triples


def _unit_scores(unit: _Unit, importance: str) -> torch.Tensor:
    """One score per group (post-shuffle channel or complex channel); higher is kept."""
    groups = _total_groups(unit)
    total = torch.zeros(groups)
    for tensor, grad, dim in _channel_tensors(unit):
        moved = tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1)
        if importance == "taylor":
            if grad is None:
                continue
            per = (moved * grad.detach().movedim(dim, 0).reshape(moved.shape)).sum(1).abs()
        else:
            per = moved.abs().pow(1 if importance == "l1" else 2).sum(1)
        # The producer has r^2 outputs per group (one per group for a complex conv); the consumer one.
        total += per.view(groups, -1).sum(1).float().cpu()
    if importance == "lamp":  # LAMP: a score over the sum of all scores at least as large (order-preserving)
        order = torch.argsort(total)
        tail = torch.flip(torch.cumsum(torch.flip(total[order], [0]), 0), [0])
        lamp = torch.empty_like(total)
        lamp[order] = total[order] / tail.clamp_min(1e-12)
        total = lamp
    return total


def _total_groups(unit: _Unit) -> int:
    """How many groups the unit's producer has now."""
    producer = unit.producer
    channels = producer.real.out_channels if isinstance(producer, ComplexConv2d) else producer.out_channels
    assert isinstance(channels, int)
    return channels // unit.group


class _RoundUpPruner(tp.pruner.MetaPruner):
    """torch-pruning's MetaPruner, with the kept channel count rounded *up* to a multiple of round_to.

    torch-pruning rounds it down: a 32-channel layer at ratio 0.25 with round_to=16 kept 16 channels
    (as at 0.5), and at ratio 0.75 it would keep 0, so the layer was silently left whole. Rounding up,
    as :func:`_keep_count` does for the sub-pixel units, keeps "ratio" an upper bound on what is
    removed. (Overrides torch-pruning 1.6's ``_round_to``.)
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = max(1, current_channels - n_pruned)
        kept = min(current_channels, math.ceil(kept / round_to) * round_to)
        return current_channels - kept


def _keep_count(current: int, ratio: float, round_to: int) -> int:
    """Channels kept: ``current * (1 - ratio)`` rounded up to a multiple of ``round_to``, at most all."""
    keep = max(1, current - int(current * ratio))
    keep = math.ceil(keep / round_to) * round_to
    return min(current, keep)


def _slice_conv(conv: nn.Conv2d, keep: torch.Tensor, dim: int) -> None:
    conv.weight = nn.Parameter(conv.weight.data.index_select(dim, keep).clone())
    if dim == 0:
        conv.out_channels = len(keep)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[keep].clone())
    else:
        conv.in_channels = len(keep)


def _apply_unit(unit: _Unit, keep: torch.Tensor) -> None:
    """Drops every group not in ``keep`` (sorted group indices) from the producer and its followers."""
    producer, consumer = unit.producer, unit.consumer
    rows = (keep[:, None] * unit.group + torch.arange(unit.group)).flatten()  # whole r^2 groups
    if isinstance(producer, ComplexConv2d):
        _slice_conv(producer.real, rows, 0)
        _slice_conv(producer.imag, rows, 0)
        producer.bias = nn.Parameter(producer.bias.data.view(-1, 2)[keep].flatten().clone())
    else:
        assert isinstance(producer, nn.Conv2d)
        _slice_conv(producer, rows, 0)
    for prelu in unit.prelus:
        prelu.weight = nn.Parameter(prelu.weight.data[keep].clone())
        prelu.num_parameters = len(keep)
    if isinstance(consumer, ComplexConv2d):
        _slice_conv(consumer.real, keep, 1)
        _slice_conv(consumer.imag, keep, 1)
    elif isinstance(consumer, nn.Conv2d):
        _slice_conv(consumer, keep, 1)


def _tp_importance(importance: str) -> tp.importance.Importance:
    if importance == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if importance == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if importance == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.LAMPImportance(p=2)


def _check_options(
    ratio: float | None, targets: dict[str, float | None], importance: str, round_to: int
) -> None:
    given = [name for name, value in {"ratio": ratio, **targets}.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of ratio, {', '.join(targets)}; got {', '.join(given) or 'none'}")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1); got {ratio}")
    for name, value in targets.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive; got {value}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}; got {importance!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer; got {round_to!r}")


def _output_energy(output: Any) -> torch.Tensor:
    first = output[0] if isinstance(output, (tuple, list)) else output
    assert isinstance(first, torch.Tensor)
    return first.pow(2).mean()


def _is_ignored(name: str, ignored: Sequence[str]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in ignored)


def _prune_at(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ratio: float,
    importance: str,
    round_to: int,
    ignored: Sequence[str],
    loss_fn: Callable[[Any], torch.Tensor] | None,
    taylor_loss: Callable[[nn.Module], torch.Tensor] | None = None,
) -> nn.Module:
    """One pruning pass at a fixed channel ratio, on a copy of ``model``."""
    model = copy.deepcopy(model)
    was_training = {m: m.training for m in model.modules()}
    model.eval()  # BN running statistics must not move while we trace
    skip = {id(m) for n, m in model.named_modules() if _is_ignored(n, ignored)}
    if importance == "taylor":
        model.zero_grad()
        with torch.enable_grad():
            if taylor_loss is not None:
                loss = taylor_loss(model)
            else:
                output = model(*example_inputs)
                loss = loss_fn(output) if loss_fn is not None else _output_energy(output)
            loss.backward()
    calls = _trace(model, example_inputs)

    units, pre_shuffle = _units(calls, skip)
    for unit in units:  # scored before DepGraph changes the producers' inputs
        unit.scores = _unit_scores(unit, importance)

    # Pruning roots: modules called more than once (shared, e.g. MoDL's denoiser) are pruned on their
    # own with their first input; otherwise the whole model is one root.
    counts: dict[int, int] = {}
    first_call: dict[int, _Call] = {}
    for call in calls:
        counts[id(call.module)] = counts.get(id(call.module), 0) + 1
        first_call.setdefault(id(call.module), call)
    complex_parts = {id(m) for c in model.modules() if isinstance(c, ComplexConv2d) for m in c.modules()}
    roots: list[tuple[nn.Module, tuple[torch.Tensor, ...]]] = []
    for module in model.modules():
        if counts.get(id(module), 0) > 1 and any(
            isinstance(m, nn.Conv2d) and id(m) not in complex_parts for m in module.modules()
        ):
            if not any(module in r.modules() for r, _ in roots):
                roots.append((module, tuple(t.detach().clone() for t in first_call[id(module)].inputs)))
    if not roots:
        roots = [(model, example_inputs)]

    for root, inputs in roots:
        plain = [m for m in root.modules() if isinstance(m, nn.Conv2d) and id(m) not in complex_parts]
        order = [c.module for c in calls if isinstance(c.module, nn.Conv2d) and c.module in plain]
        ignored_layers: list[nn.Module] = [m for m in plain if id(m) in skip or id(m) in pre_shuffle]
        if order:
            ignored_layers.append(order[-1])  # the last conv writes the image/coil channels
        ignored_layers += [m for m in root.modules() if isinstance(m, ComplexConv2d)]
        if not any(m not in ignored_layers for m in plain):
            continue  # nothing for DepGraph to prune here (DeepcomplexMRI is all complex convs)
        pruner = _RoundUpPruner(
            root,
            inputs,
            importance=_tp_importance(importance),
            pruning_ratio=ratio,
            ignored_layers=ignored_layers,
            round_to=round_to,
        )
        pruner.step()

    for unit in units:
        assert unit.scores is not None
        current = len(unit.scores)
        keep_count = _keep_count(current, ratio, round_to)
        if keep_count < current:
            keep = torch.sort(torch.topk(unit.scores, keep_count).indices).values
            _apply_unit(unit, keep)

    for module in model.modules():
        module.train(was_training.get(module, True))
    for parameter in model.parameters():
        parameter.grad = None
    return model


def prune(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    importance: str = "l1",
    round_to: int = 1,
    ignored: Sequence[str] = (),
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    taylor_loss: Callable[[nn.Module], torch.Tensor] | None = None,
) -> nn.Module:
    """A channel-pruned copy of ``model`` (``model`` itself is not changed).

    Args:
        model: an edgesr network (RDN, SRResNet, MoDL, DeepcomplexMRI, ...).
        example_inputs: one forward's inputs, e.g. ``(lr [B, C, h, w], base [B, C, h*s, w*s])`` or
            ``(masked_kspace [B, 2C, H, W], mask [B, 1, 1, W], sens_maps [B, 2C, H, W])``; traced to
            find channel couplings, and used for Taylor importance and MAC counts.
        ratio: fraction of each prunable layer's output channels to remove, in (0, 1).
        target_macs: instead of ``ratio``, the MACs (on ``example_inputs``) to reach: the smallest
            ratio that reaches them is found by bisection.
        target_params: instead of ``ratio``, the parameter count to reach, found the same way (what
            a memory-bound device or a size budget asks for; latency follows MACs more closely).
        importance: ``"l1"``/``"l2"`` (weight magnitude), ``"taylor"`` (``|w * dL/dw|`` with ``loss_fn``,
            or the output energy ``mean(out^2)`` as a data-free proxy when there is none), ``"lamp"``
            (LAMP scores; with per-layer ratios they rank channels as ``"l2"`` does).
        round_to: kept channel counts are multiples of this (8/16/32 for the CPU's matrix units);
            PixelShuffle convs keep a multiple of ``round_to`` groups of ``r^2``.
        ignored: module names (with everything inside them) whose output channels stay as they are;
            their inputs still follow the layers that feed them.
        loss_fn: for ``"taylor"``: maps the model's output on ``example_inputs`` to a scalar loss.
        taylor_loss: for ``"taylor"``, instead of ``loss_fn``: the loss of a model (the copy being
            pruned) on real data, e.g. the distillation loss to the teacher on training batches; the
            gradients it leaves score the channels. ``edgesr compress`` passes this (see
            :func:`edgesr.compress.runner`), so Taylor scores come from the task, not from the latency
            input.

    Returns:
        The pruned model, in ``model``'s train/eval mode, its widths describable by
        :func:`edgesr.models._shapes.shape_changes`.

    Raises:
        ValueError: an option is out of range (names it), or the target cannot be reached.
    """
    _check_options(ratio, {"target_macs": target_macs, "target_params": target_params}, importance, round_to)
    ignored = (ignored,) if isinstance(ignored, str) else tuple(ignored)
    names = {name for name, _ in model.named_modules()}
    unknown = [name for name in ignored if name not in names]
    if unknown:
        raise ValueError(f"ignored names no module of the model: {', '.join(map(repr, unknown))}")
    if ratio is not None:
        pruned = _prune_at(model, example_inputs, ratio, importance, round_to, ignored, loss_fn, taylor_loss)
        if sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()):
            widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
            raise ValueError(
                f"ratio={ratio} with round_to={round_to} removes no channel: every layer's kept count "
                f"rounds up to all its channels (layer widths {widths}); raise the ratio or lower round_to"
            )
        return pruned
    # A target: the smallest ratio that reaches it, by bisection (MACs and parameters both fall
    # monotonically as the ratio grows).
    index, target, what = (
        (0, target_macs, "target_macs") if target_macs is not None else (1, target_params, "target_params")
    )
    assert target is not None
    unit = "MACs (counted on the example input)" if index == 0 else "parameters"

    def size(candidate: nn.Module) -> float:
        return float(count_macs_params(candidate, example_inputs)[index])

    unpruned = size(model)
    if unpruned <= target:  # the bisection would settle on a ratio that removes nothing
        raise ValueError(
            f"{what}={target:.4g} is not below the unpruned model's {unpruned:.4g} {unit}: nothing to prune"
        )
    low, high = 0.0, 0.99
    best = _prune_at(model, example_inputs, high, importance, round_to, ignored, loss_fn, taylor_loss)
    if size(best) > target:
        raise ValueError(
            f"{what}={target:.4g} is out of reach: pruning 99% of the channels leaves {size(best):.4g} {unit}"
        )
    for _ in range(12):
        middle = (low + high) / 2
        candidate = _prune_at(
            model, example_inputs, middle, importance, round_to, ignored, loss_fn, taylor_loss
        )
        if size(candidate) <= target:
            high, best = middle, candidate
        else:
            low = middle
    return best


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of an RDN with only the residual dense blocks ``keep`` (depth pruning).

    The kept blocks run in the order given (each maps the features' width to itself, so any increasing
    subset chains), and the global fusion's 1x1 convolution keeps the input channels that carried
    their outputs. Every other layer keeps its weights. Why: on the 2-core CPU the shipped RDN students
    (16 channels, 6 blocks) run 6x faster than their teacher in torch, and 10x needs about half the
    blocks as well (``benchmarks/student_shapes.py``); a 16-channel student of 3 of those blocks, distilled
    for 3000 steps, lost 0.05 dB on real scans (``benchmarks/depth_probe.py``).

    Raises:
        ValueError: ``model`` is not an RDN, or ``keep`` is empty, out of range, not increasing, or keeps
            every block.
    """
    if not isinstance(model, RDN):
        raise ValueError(f"keep_blocks: only an RDN has dense blocks to remove; got {type(model).__name__}")
    count = len(model.blocks)
    keep = list(keep)
    if not keep or any(not 0 <= k < count for k in keep) or keep != sorted(set(keep)):
        raise ValueError(f"keep_blocks={keep}: increasing block indices in 0..{count - 1}, at least one")
    if len(keep) == count:
        raise ValueError(f"keep_blocks={keep} keeps all {count} blocks: nothing to remove")
    pruned = copy.deepcopy(model)
    fusion = pruned.global_fusion[0]
    if not isinstance(fusion, nn.Conv2d):
        raise ValueError(f"keep_blocks: the global fusion starts with a {type(fusion).__name__}, not a conv")
    # Each block's output channels: its local fusion's (a 1x1 conv back to the features' width).
    widths = [_out_channels(block) for block in model.blocks]
    starts = [sum(widths[:k]) for k in range(count)]
    columns = torch.cat([torch.arange(starts[k], starts[k] + widths[k]) for k in keep])
    narrower = nn.Conv2d(len(columns), fusion.out_channels, 1, bias=fusion.bias is not None)
    narrower = narrower.to(fusion.weight.device, fusion.weight.dtype)
    with torch.no_grad():
        narrower.weight.copy_(fusion.weight[:, columns])
        if fusion.bias is not None and narrower.bias is not None:
            narrower.bias.copy_(fusion.bias)
    narrower.train(fusion.training)
    pruned.global_fusion[0] = narrower
    pruned.blocks = nn.ModuleList(pruned.blocks[k] for k in keep)
    return pruned


def _out_channels(block: nn.Module) -> int:
    fusion = getattr(block, "fusion", None)
    if not isinstance(fusion, nn.Conv2d):
        raise ValueError(f"keep_blocks: a dense block without a fusion conv ({type(block).__name__})")
    return fusion.out_channels
