"""``edgesr evaluate``: a trained model next to the classical baselines, in one run, on one split.

The model runs through the same pipeline that ``enhance`` ships (:mod:`edgesr.pipeline`), as its spec
says. With ``card=DIR`` it also scores the external split (sources never trained on) and writes a
shippable teacher (:mod:`edgesr.cards`). A model whose card was measured on another data set (other
sources installed, other files) is scored all the same, with a warning that says what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgesr._io import write_json_atomic
from edgesr.cards import card_data_differences, check_card_target, evaluate_command, write_card
from edgesr.config import check_choice, check_exactly_one, check_range, opt
from edgesr.data.dataset import PreparedDataset
from edgesr.data.splits import ALL_SPLITS, EXTERNAL
from edgesr.errors import DataError
from edgesr.evaluate import ReconProtocol, evaluate_model, has_slices
from edgesr.physics.coils import ESTIMATION_METHODS
from edgesr.pipeline import TorchPredictor
from edgesr.results import print_results, setting_title
from edgesr.teachers import read_card, teacher_path
from edgesr.train.checkpoint import load_for_inference

_PROTOCOL = ReconProtocol()


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = opt("", "a checkpoint folder written by `edgesr train` (best/ or last/)")
    model: str = opt("", "or a shipped teacher's name")
    split: str = opt("test", "test, val, train, or external (sources never trained on)")
    accelerations: tuple[float, ...] = opt(_PROTOCOL.accelerations, "recon: undersampling factors to score")
    masks: tuple[str, ...] = opt(_PROTOCOL.masks, "recon: mask kinds to score")
    maps: tuple[str, ...] = opt(
        _PROTOCOL.maps,
        "recon: coil maps for every method, each scored: simulated (true), lowres or espirit (from ACS)",
    )
    coils: int = opt(
        _PROTOCOL.coils, "recon: simulated coils (a model built for a fixed number uses its own)"
    )
    center_fraction: float = opt(_PROTOCOL.center_fraction, "recon: fully sampled centre fraction")
    min_acs_lines: int = opt(
        _PROTOCOL.min_acs_lines, "recon: the fewest fully sampled centre lines (small matrices)"
    )
    noise_std: float = opt(_PROTOCOL.noise_std, "recon: complex noise per coil")
    max_slices: int = opt(0, "at most this many slices per volume (0: all)")
    sources: tuple[str, ...] = opt(
        (), "score only these source volumes (default: all; see `edgesr data info`)"
    )
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    format: str = opt("table", "table or json")
    out: str = opt("", "also write the results as JSON to this file")
    card: str = opt("", "write weights + model_card.json to this folder (a teacher to ship)")
    name: str = opt("", "the teacher's name in its model card (default: the card folder's name)")

    def __post_init__(self) -> None:
        check_exactly_one({"checkpoint": self.checkpoint, "model": self.model})
        check_choice("split", self.split, ALL_SPLITS)
        check_choice("format", self.format, ("table", "json"))
        for maps in self.maps:
            check_choice("maps", maps, ("simulated", *ESTIMATION_METHODS))
        check_range("coils", self.coils, low=1)
        check_range("min_acs_lines", self.min_acs_lines, low=0)


def _chosen_sources(
    dataset: PreparedDataset, names: tuple[str, ...], *, split: str, modality: str
) -> PreparedDataset:
    """``dataset`` with only the volumes ``names``, which must hold ``modality`` slices of ``split``."""
    chosen = dataset.restricted(names)
    if not has_slices(chosen, split, modality):
        offered = [v["name"] for v in dataset.volumes(modality, split)]
        raise DataError(
            f"none of the chosen sources ({', '.join(names)}) has {modality} slices in the {split} split "
            f"of the data set at {dataset.path}; its {modality} sources there: {', '.join(offered) or 'none'}"
        )
    return chosen


def run_evaluate(cfg: EvaluateConfig) -> int:
    console = Console(stderr=cfg.format == "json")
    folder = Path(cfg.checkpoint) if cfg.checkpoint else teacher_path(cfg.model)
    model, spec, meta = load_for_inference(folder)
    if cfg.card:
        check_card_target(folder, cfg.card)
    dataset = PreparedDataset(cfg.root or None)
    modality = spec.intensity.modality if spec.sr is not None else "MR"
    if cfg.sources:
        dataset = _chosen_sources(dataset, cfg.sources, split=cfg.split, modality=modality)
    differences = card_data_differences(read_card(folder), dataset, only=cfg.sources)
    if differences:
        console.print(
            f"[yellow]warning[/]: the data set at {escape(str(dataset.path))} (fingerprint "
            f"{dataset.fingerprint['id']}) is not the one this model's card was measured on: "
            + escape("; ".join(differences))
            + ". The figures below are not comparable with the card's."
        )
    protocol = ReconProtocol(
        accelerations=cfg.accelerations,
        masks=cfg.masks,
        maps=cfg.maps,
        coils=cfg.coils,
        center_fraction=cfg.center_fraction,
        min_acs_lines=cfg.min_acs_lines,
        noise_std=cfg.noise_std,
    )
    report = evaluate_model(
        spec,
        TorchPredictor(model, spec),
        dataset,
        label=_label(meta),
        split=cfg.split,
        max_slices=cfg.max_slices,
        recon=protocol,
        status=console.status,
    )
    report = {**report, "checkpoint": str(folder), "spec": spec.to_dict()}
    if differences:
        report["data_differs_from_card"] = differences
    external: dict[str, Any] | None = None
    if cfg.card and cfg.split != EXTERNAL and has_slices(dataset, EXTERNAL, modality):
        # A card states both: how the model does on its own sources and on sources it never saw.
        external = evaluate_model(
            spec, TorchPredictor(model, spec), dataset, label=report["results"][-1]["method"],
            split=EXTERNAL, max_slices=cfg.max_slices, recon=protocol, status=console.status,
        )  # fmt: skip
    if cfg.out:
        write_json_atomic(cfg.out, report)
    if cfg.card:
        name = cfg.name or Path(cfg.card).name
        command = evaluate_command(
            name, meta, split=cfg.split, accelerations=cfg.accelerations, masks=cfg.masks,
            maps=cfg.maps, max_slices=cfg.max_slices,
        )  # fmt: skip
        written = write_card(
            folder, cfg.card, report, name=name, dataset=dataset, evaluate_command=command, external=external
        )
        console.print(f"[green]wrote[/] {escape(str(written))}")
    if cfg.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    print_results(console, report)
    print_comparisons(console, report)
    if external is not None:
        print_results(console, external)
        print_comparisons(console, external)
    return 0


def _label(meta: dict[str, Any]) -> str:
    """The model's row name: its step, or for a blend (``edgesr interpolate``) the GAN's share."""
    if "interpolation" in meta:
        return f"{meta['model']} (gan_share {meta['interpolation']['gan_share']:g})"
    return f"{meta['model']} (step {meta['step']})"


def print_comparisons(console: Console, report: dict[str, Any]) -> None:
    """The model against the best baseline, overall, on the real scans, and per source."""
    for c in report["comparison"]:
        console.print(
            f"{setting_title(c)}, {report['split']} split: vs best baseline ({c['best_baseline']}) "
            f"{c['gain_db_over_best_baseline']:+.2f} dB on average; "
            f"below the per-slice best baseline on {c['slices_below_per_slice_best_baseline']} slice(s)"
        )
        real = c.get("real_scans")
        if real is not None and len(c.get("by_source", {})) > 1:
            console.print(f"  real scans (templates left out): {_gain_line(real)}")
        for source, gain in c.get("by_source", {}).items():
            label = f"{source} (template)" if gain.get("template") else source
            console.print(f"  {label}: {_gain_line(gain)}", highlight=False)


def _gain_line(gain: dict[str, Any]) -> str:
    return (
        f"{gain['psnr_db']:.2f} dB, {gain['gain_db_over_best_baseline']:+.2f} vs {gain['best_baseline']}, "
        f"{gain['slices']} slices, {gain['slices_below_per_slice_best_baseline']} below the per-slice best"
    )
