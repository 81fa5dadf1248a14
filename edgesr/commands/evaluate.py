"""``edgesr evaluate``: a trained model next to the classical baselines, in one run, on one split.

With ``card=DIR`` it also writes a shippable teacher: the weights (safetensors), the checkpoint's
metadata without optimizer state, and ``model_card.json`` (training command, data sources, steps and
time, the figures of this run, sha256 of the weights).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgesr import __version__
from edgesr._io import write_json_atomic
from edgesr.commands.baseline import (
    print_results,
    recon_baseline_methods,
    recon_setting,
    setting_title,
    sr_baseline_methods,
)
from edgesr.config import check_choice, opt, parse_overrides
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, DataError
from edgesr.evaluate import PROTOCOL, MethodScores, recon_samples, score_recon, score_sr, sr_pairs, sr_predict
from edgesr.models import model_task
from edgesr.physics.coils import ESTIMATION_METHODS
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import META_FILE, MODEL_FILE, load_model, read_metadata
from edgesr.train.config import DataSection


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = opt("", "a checkpoint folder written by `edgesr train` (best/ or last/)")
    model: str = opt("", "or a shipped teacher's name")
    split: str = opt("test", "test, val or train")
    accelerations: tuple[float, ...] = opt((4.0, 6.0), "recon: undersampling factors to score")
    masks: tuple[str, ...] = opt(("random",), "recon: mask kinds to score")
    maps: tuple[str, ...] = opt(
        ("simulated",),
        "recon: coil maps for every method, each scored: simulated (true), lowres or espirit (from ACS)",
    )
    max_slices: int = opt(0, "at most this many slices per volume (0: all)")
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    format: str = opt("table", "table or json")
    out: str = opt("", "also write the results as JSON to this file")
    card: str = opt("", "write weights + model_card.json to this folder (a teacher to ship)")
    name: str = opt("", "the teacher's name in its model card (default: the card folder's name)")

    def __post_init__(self) -> None:
        if bool(self.checkpoint) == bool(self.model):
            raise ConfigError("give exactly one of checkpoint= or model=")
        check_choice("split", self.split, ("train", "val", "test"))
        check_choice("format", self.format, ("table", "json"))
        for maps in self.maps:
            check_choice("maps", maps, ("simulated", *ESTIMATION_METHODS))


def _comparison(scores: list[MethodScores], model_name: str) -> dict[str, Any]:
    """The model against the baselines: mean gain over the best baseline, and per-slice losses."""
    model = next(s for s in scores if s.method == model_name)
    baselines = [s for s in scores if s.method != model_name]
    best = max(baselines, key=lambda s: sum(s.psnr) / len(s.psnr))
    per_slice_best = [max(values) for values in zip(*(b.psnr for b in baselines), strict=True)]
    below = [sid for sid, m, b in zip(model.slices, model.psnr, per_slice_best, strict=True) if m < b]
    return {
        "best_baseline": best.method,
        "gain_db_over_best_baseline": round(
            sum(model.psnr) / len(model.psnr) - sum(best.psnr) / len(best.psnr), 3
        ),
        "slices_below_per_slice_best_baseline": len(below),
        "slices_below": below,
        "min_gain_db_per_slice": round(
            min(m - b for m, b in zip(model.psnr, per_slice_best, strict=True)), 3
        ),
        # What the model can be held to: the baselines it beats on every slice of this setting.
        "baselines_beaten_on_every_slice": [
            b.method for b in baselines if all(m > v for m, v in zip(model.psnr, b.psnr, strict=True))
        ],
    }


def evaluate_model(cfg: EvaluateConfig, folder: Path, console: Console) -> dict[str, Any]:
    model, meta = load_model(folder)
    model.eval()
    dataset = PreparedDataset(cfg.root or None)
    data = parse_overrides(DataSection, base=meta["config"].get("data", {}))
    label = f"{meta['model']} (step {meta['step']})"
    results: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    started = time.perf_counter()
    if getattr(model, "task", "sr") == "sr":
        kind, scale = data.resolved_degradation, int(getattr(model, "scale", data.scale))
        methods = sr_baseline_methods() | {label: lambda lr, s, k: sr_predict(model, lr, k)}
        with console.status(f"SR x{scale} on {data.modality} ({kind}), {cfg.split} split"):
            pairs = sr_pairs(
                dataset,
                modality=data.modality,
                scale=scale,
                split=cfg.split,
                degradation=kind,
                max_slices=cfg.max_slices,
            )
            scores = score_sr(methods, pairs, scale=scale, degradation=kind)
        setting = {"task": "sr", "modality": data.modality, "scale": scale, "degradation": kind}
        results += [setting | s.summary() for s in scores]
        comparisons.append(setting | _comparison(scores, label))
    else:
        methods = recon_baseline_methods() | {label: model}
        settings = [(m, k, r) for m in cfg.maps for k in cfg.masks for r in cfg.accelerations]
        for maps, mask_kind, r in settings:
            with console.status(f"recon R={r:g} ({mask_kind}, {maps} maps), {cfg.split} split"):
                samples = recon_samples(
                    dataset, acceleration=r, mask_kind=mask_kind, n_coils=data.coils,
                    center_fraction=data.center_fraction, noise_std=data.noise_std, split=cfg.split,
                    max_slices=cfg.max_slices, maps=maps,
                )  # fmt: skip
                scores = score_recon(methods, samples)
            setting = recon_setting(acceleration=r, mask=mask_kind, coils=data.coils, maps=maps)
            results += [setting | s.summary() for s in scores]
            comparisons.append(setting | _comparison(scores, label))
    return {
        "split": cfg.split,
        "protocol": PROTOCOL,
        "sources": [v["name"] for v in dataset.volumes()],
        "checkpoint": str(folder),
        "results": results,
        "comparison": comparisons,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _training_seconds(run_dir: Path) -> float | None:
    """Wall-clock training time from a run's log.jsonl, summed over resumed segments."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    total, previous = 0.0, 0.0
    for line in log.read_text().splitlines():
        seconds = json.loads(line).get("seconds")
        if seconds is None:
            continue
        if seconds < previous:  # a resumed segment restarted the clock
            total += previous
        previous = seconds
    return round(total + previous, 1)


def _training_machine(meta: dict[str, Any]) -> dict[str, Any] | str:
    """The machine a checkpoint's run trained on; checkpoints written before training recorded it lack it."""
    return meta.get("machine", "not recorded by the training run")


def _initialised_from(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of ``init=`` checkpoints a run started from (e.g. SRGAN <- its SRResNet pre-training),
    nearest first, each with the command that trained it, so a card reproduces every stage."""
    chain: list[dict[str, Any]] = []
    init = meta.get("config", {}).get("init", "")
    while init and len(chain) < 10:  # a bound against a cycle of hand-edited metadata
        folder = Path(init)
        try:
            parent = read_metadata(folder)
        except DataError as exc:
            chain.append({"checkpoint": init, "note": f"not readable when the card was written: {exc}"})
            break
        chain.append(
            {
                "checkpoint": init,
                "command": parent.get("config", {}).get("command", ""),
                "steps": parent.get("step"),
                "best_val_psnr_db": parent.get("metrics", {}).get("best_val_psnr"),
                "wall_clock_seconds": _training_seconds(folder.parent),
                "machine": _training_machine(parent),
            }
        )
        init = parent.get("config", {}).get("init", "")
    return chain


def _evaluate_command(cfg: EvaluateConfig, name: str, meta: dict[str, Any]) -> str:
    """The command that re-scores the shipped teacher on the settings of this card."""
    command = f"edgesr evaluate model={name} split={cfg.split}"
    if model_task(meta["model"]) == "recon":

        def listed(values: tuple[Any, ...]) -> str:
            return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"

        command += (
            f" accelerations={listed(cfg.accelerations)} masks={listed(cfg.masks)} maps={listed(cfg.maps)}"
        )
    if cfg.max_slices:
        command += f" max_slices={cfg.max_slices}"
    return command


def write_card(cfg: EvaluateConfig, folder: Path, report: dict[str, Any]) -> Path:
    target = Path(cfg.card)
    target.mkdir(parents=True, exist_ok=True)
    meta = json.loads((folder / META_FILE).read_text())
    for key in ("optimizer", "scheduler"):
        meta.pop(key, None)
    shutil.copyfile(folder / MODEL_FILE, target / MODEL_FILE)
    write_json_atomic(target / META_FILE, meta)
    weights = (target / MODEL_FILE).read_bytes()
    dataset = PreparedDataset(cfg.root or None)
    card = {
        "name": cfg.name or target.name,
        "model": meta["model"],
        "model_options": meta["model_options"],
        "parameters": sum(
            t.numel() for t in load_model(target)[0].state_dict().values() if t.is_floating_point()
        ),
        "training": {
            "command": meta["config"].get("command", ""),
            "steps": meta["step"],
            "best_val_psnr_db": meta["metrics"].get("best_val_psnr"),
            "wall_clock_seconds": _training_seconds(folder.parent),
            "machine": _training_machine(meta),
            "initialised_from": _initialised_from(meta),
        },
        "data": [
            {k: v[k] for k in ("name", "modality", "package", "license", "input_sha256")}
            for v in dataset.manifest["volumes"]
        ],
        "evaluation": report,
        "evaluate_command": _evaluate_command(cfg, cfg.name or target.name, meta),
        "weights": {"file": MODEL_FILE, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
        "edgesr_version": __version__,
    }
    write_json_atomic(target / "model_card.json", card)
    return target


def run_evaluate(cfg: EvaluateConfig) -> int:
    console = Console(stderr=cfg.format == "json")
    folder = Path(cfg.checkpoint) if cfg.checkpoint else teacher_path(cfg.model)
    report = evaluate_model(cfg, folder, console)
    if cfg.out:
        write_json_atomic(cfg.out, report)
    if cfg.card:
        console.print(f"[green]wrote[/] {write_card(cfg, folder, report)}")
    if cfg.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    print_results(console, report)
    for c in report["comparison"]:
        console.print(
            f"{setting_title(c)}: vs best baseline ({c['best_baseline']}) "
            f"{c['gain_db_over_best_baseline']:+.2f} dB on average; "
            f"below the per-slice best baseline on {c['slices_below_per_slice_best_baseline']} slice(s)"
        )
    return 0
