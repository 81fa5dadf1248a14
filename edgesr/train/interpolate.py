"""Network interpolation: one generator between its pixel-loss network and its GAN fine-tune.

A GAN-trained SR generator adds texture that a pixel loss would not, and on scans unlike its training
data that texture can cost more PSNR than the console's own interpolation. ESRGAN (Wang et al., 2018,
section 3.4) showed that the weights of a GAN fine-tune and of the pixel-loss network it started from
can be blended parameter by parameter,

    weights = (1 - gan_share) * pixel + gan_share * gan,

which moves the output smoothly between the two ends of the perception-distortion trade-off without
training again. This module does that blend and can choose ``gan_share`` itself: the largest share on a
0.1 grid at which no real scan of the validation split falls below the best classical baseline (the
console's own upsampling), scored by :func:`edgesr.evaluate.evaluate_model`, the code ``edgesr
evaluate`` runs. The validation split chooses; test and external figures stay untouched by the choice.

Written by hand: a weighted sum of two state dicts is a few lines, and no library does the checks
that matter here (one architecture, one spec, the GAN fine-tuned from that very pixel network).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from edgesr._io import replace_folder
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, DataError
from edgesr.train.checkpoint import (
    META_FILE,
    MODEL_FILE,
    build_model,
    checkpoint_exists,
    load_model,
    read_metadata,
    read_spec,
    resolve_checkpoint,
    weights_sha256,
)

# From the GAN end downwards: the first share that passes is the largest.
GAN_SHARES = tuple(round(1.0 - 0.1 * i, 1) for i in range(11))


def interpolate_weights(
    pixel: dict[str, torch.Tensor], gan: dict[str, torch.Tensor], *, gan_share: float
) -> dict[str, torch.Tensor]:
    """``(1 - gan_share) * pixel + gan_share * gan`` for every floating-point tensor.

    Integer tensors (counters such as BatchNorm's ``num_batches_tracked``) are taken from ``gan``.

    Raises:
        ValueError: ``gan_share`` outside [0, 1], or the two state dicts differ in names or shapes
            (named in the message).
    """
    if not 0.0 <= gan_share <= 1.0:
        raise ValueError(f"gan_share must be in [0, 1]; got {gan_share}")
    if pixel.keys() != gan.keys():
        only = sorted(pixel.keys() ^ gan.keys())
        raise ValueError(f"the two networks hold different tensors (e.g. {', '.join(only[:3])})")
    blended: dict[str, torch.Tensor] = {}
    for name, gan_tensor in gan.items():
        pixel_tensor = pixel[name]
        if pixel_tensor.shape != gan_tensor.shape:
            raise ValueError(
                f"tensor {name}: shape {tuple(pixel_tensor.shape)} in the pixel network, "
                f"{tuple(gan_tensor.shape)} in the GAN network"
            )
        if not gan_tensor.is_floating_point():
            blended[name] = gan_tensor.clone()
            continue
        mixed = (1.0 - gan_share) * pixel_tensor.double() + gan_share * gan_tensor.double()
        blended[name] = mixed.to(gan_tensor.dtype)
    return blended


@dataclass(frozen=True)
class Endpoints:
    """The two checkpoints of one architecture and spec that a blend lies between."""

    pixel: Path
    gan: Path
    pixel_weights: dict[str, torch.Tensor]
    gan_weights: dict[str, torch.Tensor]
    meta: dict[str, Any]  # the GAN checkpoint's metadata: the blend's architecture and spec
    gan_started_from_pixel: bool
    sha256: dict[str, str]  # of each input's weights file, taken when it was loaded: "pixel", "gan"

    def model(self, gan_share: float) -> torch.nn.Module:
        model = build_model(self.meta)
        model.load_state_dict(interpolate_weights(self.pixel_weights, self.gan_weights, gan_share=gan_share))
        return model.eval()


def load_endpoints(pixel: str | Path, gan: str | Path) -> Endpoints:
    """Both checkpoints, checked to be one architecture with one spec.

    Raises:
        DataError: a checkpoint is missing or unreadable, holds NaN/Inf weights, is given twice, or the
            two differ in model, options, layer widths (a pruned network) or spec.
    """
    pixel, gan = Path(pixel), Path(gan)
    if resolve_checkpoint(pixel).resolve() == resolve_checkpoint(gan).resolve():
        raise DataError(f"{gan}: is the pixel network too; a blend needs two trainings (pixel= and gan=)")
    pixel_model, pixel_meta = load_model(pixel)
    gan_model, gan_meta = load_model(gan)
    sha256 = {"pixel": weights_sha256(pixel), "gan": weights_sha256(gan)}
    for key in ("model", "model_options", "layer_shapes"):
        if (pixel_meta.get(key) or None) != (gan_meta.get(key) or None):
            raise DataError(
                f"{gan}: its {key} ({gan_meta.get(key)!r}) differs from {pixel}'s ({pixel_meta.get(key)!r}); "
                "only two trainings of one architecture can be interpolated"
            )
    for folder, model in ((pixel, pixel_model), (gan, gan_model)):
        # A diverged GAN run leaves NaN weights: a blend of them would score as NaN, never as an error.
        bad = next(
            (n for n, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), ""
        )
        if bad:
            raise DataError(
                f"{folder}: tensor {bad} holds NaN or Inf values; this checkpoint cannot be blended"
            )
    pixel_spec, gan_spec = read_spec(pixel_meta, pixel), read_spec(gan_meta, gan)
    if pixel_spec != gan_spec:
        raise DataError(
            f"{gan}: its spec ({gan_spec.describe()}) differs from {pixel}'s ({pixel_spec.describe()})"
        )
    init = _init_folder(gan, gan_meta["config"])
    started_from_pixel = init is not None and _same_folder(init, pixel)
    return Endpoints(
        pixel, gan, pixel_model.state_dict(), gan_model.state_dict(), gan_meta, started_from_pixel, sha256
    )


def _init_folder(checkpoint: Path, config: dict[str, Any]) -> Path | None:
    """Where a run's ``init=`` checkpoint is: its paths are relative to the folder the run ran in, which
    is the checkpoint's folder less the run's ``out`` (``<there>/<out>/last``); else the current one."""
    recorded = str(config.get("init", "") or "")
    if not recorded:
        return None
    init = Path(recorded)
    if init.is_absolute():
        return init
    run_out = Path(str(config.get("out", "") or ""))
    run_dir = resolve_checkpoint(checkpoint).resolve().parent
    depth = len(run_out.parts)
    if depth and not run_out.is_absolute() and run_dir.parts[-depth:] == run_out.parts:
        return Path(*run_dir.parts[:-depth]) / init
    return Path.cwd() / init


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return resolve_checkpoint(a).resolve() == resolve_checkpoint(b).resolve()
    except DataError:
        return False


def score_share(
    endpoints: Endpoints, gan_share: float, dataset: PreparedDataset, *, split: str, max_slices: int = 0
) -> dict[str, Any]:
    """The blend at ``gan_share`` on ``split``, next to the baselines: PSNR, SSIM and sharpness over all
    the split's slices (templates too, as training's validation curve), and on its real scans alone the
    gain over the best baseline and the slices below the per-slice best (all settings of the spec)."""
    from edgesr.evaluate import evaluate_model
    from edgesr.pipeline import TorchPredictor

    spec = read_spec(endpoints.meta, endpoints.gan)
    label = f"gan_share={gan_share:g}"
    report = evaluate_model(
        spec,
        TorchPredictor(endpoints.model(gan_share), spec),
        dataset,
        label=label,
        split=split,
        max_slices=max_slices,
    )
    mine = [r for r in report["results"] if r["method"] == label]
    below = 0
    gains = []
    for comparison in report["comparison"]:
        real = comparison.get("real_scans")
        if real is None:  # the criterion is about real scans: a template-only split cannot choose
            raise DataError(
                f"the {split} split of the data set at {dataset.path} holds only templates; the GAN's "
                "share is chosen on real scans (give gan_share=... or another split)"
            )
        below += int(real["slices_below_per_slice_best_baseline"])
        gains.append(float(real["gain_db_over_best_baseline"]))
    return {
        "gan_share": gan_share,
        "split": split,
        "max_slices_per_volume": max_slices,
        "psnr_db": round(sum(r["psnr_db"] for r in mine) / len(mine), 3),
        "ssim": round(sum(r["ssim"] for r in mine) / len(mine), 4),
        "gradient_energy_ratio": round(sum(r["gradient_energy_ratio"] for r in mine) / len(mine), 4),
        "gain_db_over_best_baseline": round(sum(gains) / len(gains), 3),
        "slices_below_best_baseline": below,
    }


def choose_gan_share(
    endpoints: Endpoints,
    dataset: PreparedDataset,
    *,
    split: str = "val",
    max_slices: int = 0,
    shares: tuple[float, ...] = GAN_SHARES,
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """The largest of ``shares`` at which no real scan of ``split`` is below the best baseline.

    Shares are tried from the largest down and the search stops at the first that passes, so the
    trials are returned too (what the card records). When none passes, the smallest share is chosen
    and its trial says how many slices still fall below.
    """
    trials: list[dict[str, Any]] = []
    for share in sorted(shares, reverse=True):
        trial = score_share(endpoints, share, dataset, split=split, max_slices=max_slices)
        trials.append(trial)
        if progress is not None:
            progress(trial)
        if trial["slices_below_best_baseline"] == 0:
            return share, trials
    return trials[-1]["gan_share"], trials


def check_output_folder(out: str | Path, endpoints: Endpoints) -> Path:
    """Checks, before minutes of scoring, that the blend can go to ``out``; returns it as an absolute path.

    A checkpoint folder is replaced as a whole (the new one written beside it, then two renames through
    ``<out>.old``), so ``out`` and ``<out>.old`` may each be absent, an empty folder, or an earlier
    ``edgesr interpolate`` result, and nothing else: not a training run's ``last/`` (its optimizer state),
    a shipped model's folder (its card), one of the two inputs, a file, a device or a link.

    Raises:
        ConfigError: naming ``out`` and the problem.
    """
    out = Path(os.path.abspath(out))
    if not out.name:
        raise ConfigError(f"out={out}: names no folder; name a new or empty folder")
    inputs = {resolve_checkpoint(p).resolve() for p in (endpoints.pixel, endpoints.gan)}
    old = out.with_name(out.name + ".old")
    for candidate in (out, old):
        if candidate.resolve() in inputs:
            raise ConfigError(f"out={out}: is one of the two networks; write the blend to another folder")
    for candidate in (out, old):
        if os.path.lexists(candidate) and (candidate.is_symlink() or not candidate.is_dir()):
            raise ConfigError(
                f"out={out}: {candidate} exists and is not a folder; name a new or empty folder"
            )
        if candidate.is_dir() and any(candidate.iterdir()) and not _is_blend(candidate):
            raise ConfigError(
                f"out={out}: {candidate} exists and is not an earlier blend (edgesr interpolate replaces "
                "only its own output); name a new or empty folder"
            )
    existing = next(p for p in (out.parent, *out.parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ConfigError(f"out={out}: {existing} is not a folder")
    try:  # a real write: permissions alone miss read-only mounts and immutable folders (and root)
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".edgesr-probe-"))
    except OSError as exc:
        raise ConfigError(f"out={out}: cannot write in {existing} ({exc.strerror or exc})") from None
    return out


def _is_blend(folder: Path) -> bool:
    """Whether ``folder`` holds only an earlier ``edgesr interpolate`` checkpoint."""
    if not checkpoint_exists(folder) or {p.name for p in folder.iterdir()} - {MODEL_FILE, META_FILE}:
        return False
    try:
        return "interpolation" in read_metadata(folder)
    except DataError:
        return False


def write_interpolated(
    out: str | Path,
    endpoints: Endpoints,
    *,
    gan_share: float,
    chosen_by: str,
    trials: list[dict[str, Any]],
    command: str,
    max_slices: int = 0,
) -> Path:
    """Writes the blend as a checkpoint (safetensors + JSON) that ``edgesr evaluate card=`` can ship.

    Its metadata is the GAN checkpoint's, with ``config.init`` pointing at the GAN run (so a card's
    training chain reads blend <- GAN <- pixel network), ``step`` 0 (nothing was trained), the chosen
    trial's validation figures as ``metrics``, and an ``interpolation`` record: both inputs with their
    weights' sha256, the share, how it was chosen, every trial.
    """
    out = check_output_folder(out, endpoints)
    chosen = next((t for t in trials if t["gan_share"] == gan_share), None)
    meta = json.loads(json.dumps(endpoints.meta))  # a deep copy of plain JSON
    for key in ("optimizer", "scheduler"):
        meta.pop(key, None)
    meta["step"] = 0
    # Nothing was trained: the GAN run's machine is in the card's chain, not the blend's.
    meta["machine"] = {"device": "none: a weighted sum of two checkpoints (see interpolation)"}
    meta["metrics"] = (
        {"val_psnr": chosen["psnr_db"], "val_ssim": chosen["ssim"], "best_val_psnr": chosen["psnr_db"]}
        if chosen is not None and chosen["split"] == "val"
        else {}
    )
    meta["config"] = dict(meta["config"]) | {"init": str(endpoints.gan), "command": command}
    meta["interpolation"] = {
        "method": "ESRGAN network interpolation: (1 - gan_share) * pixel + gan_share * gan",
        "pixel": {"checkpoint": str(endpoints.pixel), "weights_sha256": endpoints.sha256["pixel"]},
        "gan": {"checkpoint": str(endpoints.gan), "weights_sha256": endpoints.sha256["gan"]},
        "gan_started_from_pixel": endpoints.gan_started_from_pixel,
        "gan_share": gan_share,
        "chosen_by": chosen_by,
        "max_slices_per_volume": max_slices,  # 0: every slice of the split scored
        "trials": trials,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private name beside ``out`` (never a user's ``<out>.tmp``), removed if anything fails.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        weights = interpolate_weights(endpoints.pixel_weights, endpoints.gan_weights, gan_share=gan_share)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / MODEL_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        read_metadata(tmp)  # what was written reads back as a checkpoint before it replaces anything
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is shared like any file
        for file in (MODEL_FILE, META_FILE):
            os.chmod(tmp / file, 0o666 & ~umask)
        return replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
