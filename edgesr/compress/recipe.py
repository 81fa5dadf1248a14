"""Compression recipes: YAML validated into frozen dataclasses (unknown keys and bad values name the key).

A recipe names a teacher, how the result is scored and gated, and an ordered list of stages::

    teacher: rdn-mr-x2            # a shipped teacher, or a checkpoint folder
    max_psnr_drop_db: 0.15        # the gate, against the teacher on the same images (real scans)
    stages:
      - kind: distill
        student: rdn_tiny
        steps: 1500

Overrides reach any field, list items by index: ``edgesr compress recipe=quickstart stages.0.steps=200``.
Recipes live in the top-level ``recipes/`` folder (``recipe=NAME``) or anywhere (``recipe=PATH``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesr.config import check_choice, check_range, load_yaml, opt
from edgesr.errors import ConfigError

STAGE_KINDS = ("distill", "prune", "quantize")
STUDENT_INITS = ("scratch", "teacher")
IMPORTANCES = ("l1", "l2", "taylor", "lamp")
QUANTIZE_RUNTIMES = ("openvino", "onnxruntime")
QUANTIZE_REMEDIES = ("keep_fp", "more_calibration", "bias_correction", "qat")
GATE_ON = ("real_scans", "all")
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class Stage:
    kind: str = opt("distill", f"what the stage does: {', '.join(STAGE_KINDS)}")
    name: str = opt("", "the stage's folder name (default: its number and kind)")
    student: str = opt("", "distill: a registered model to train (default: the previous stage's model)")
    student_options: dict[str, Any] = opt(
        {},
        "distill: the student's builder options beyond those the teacher fixes (scale, coils); on the "
        "command line stages.N.student_options.KEY=VALUE sets one, a {KEY: VALUE, ...} mapping replaces all",
    )
    student_init: str = opt(
        "scratch",
        "distill: 'teacher' starts the student from the teacher's weights wherever a tensor's name and "
        "shape match (MoDL with fewer unrolls, the same blocks fewer times); 'scratch': random; or a "
        "shipped model's name or a checkpoint folder: that model, shape and weights, is the student (an "
        "existing student re-distilled from a re-trained teacher)",
    )
    coils: int = opt(
        0,
        "distill (recon, a teacher that takes any number of coils, e.g. MoDL): the student's coils; the "
        "pipeline SVD-compresses every acquisition to this many virtual coils before the student, so "
        "each data-consistency step costs less (0: as the teacher). With steps: 0 only (the student is "
        "not trained on compressed data)",
    )
    ratio: float = opt(0.5, "prune: fraction of each prunable layer's channels to remove")
    target_macs: float = opt(
        0.0,
        "prune: prune until the MACs per latency_size output (as report.md counts) fall to this (0: ratio)",
    )
    target_params: float = opt(
        0.0, "prune: prune until the parameter count falls to this (0: ratio; not with target_macs)"
    )
    importance: str = opt("l1", f"prune: channel importance, {', '.join(IMPORTANCES)}")
    round_to: int = opt(8, "prune: keep channel counts multiples of this (the CPU's matrix units want 8-32)")
    keep_blocks: list[int] = opt(
        [],
        "prune (RDN): after the channels, keep only these residual dense blocks, by index (depth pruning; "
        "the global fusion keeps their inputs); []: every block",
    )
    steps: int = opt(
        1000,
        "distill: optimisation steps (0 only with student_init: teacher); prune: distillation "
        "fine-tuning steps (0: none)",
    )
    lr: float = opt(5e-4, "distill: peak learning rate")
    warmup: int = opt(50, "distill: warm-up steps")
    batch_size: int = opt(16, "distill: samples per step")
    patch: int = opt(48, "distill: SR LR patch size")
    crop: int = opt(128, "distill: recon crop size")
    output_weight: float = opt(1.0, "distill: weight of L1 to the teacher's output")
    target_weight: float = opt(0.5, "distill: weight of L1 to the ground truth")
    eval_every: int = opt(250, "distill: validate and checkpoint every N steps")
    amp: bool = opt(
        True,
        "distill: the networks' forward passes in bf16 autocast where the hardware multiplies bf16 (CUDA, "
        "a CPU with AVX512-BF16 or AMX; weights and optimiser stay fp32); false: fp32 throughout",
    )
    feature_layers: list[str] = opt(
        [], "distill: module names whose outputs the student matches to the teacher's (e.g. blocks.2)"
    )
    feature_weight: float = opt(0.0, "distill: weight of L1 to the teacher's features at feature_layers")
    perceptual_weight: float = opt(
        0.0, "distill (SR): weight of the perceptual distance to the teacher's output (GAN teachers' texture)"
    )
    adversarial_weight: float = opt(
        0.0, "distill (SR): weight of the adversarial term (a discriminator trained on the ground truth)"
    )
    disc_lr: float = opt(1e-4, "distill: the discriminator's learning rate (adversarial_weight > 0)")
    select_by: str = opt(
        "target",
        "distill: what the stage's model is chosen by among its validations: 'target' (val PSNR to the "
        "ground truth) or 'teacher' (val PSNR to the teacher's output; SR: for GAN teachers, whose "
        "texture PSNR to the ground truth penalises)",
    )
    perceptual_steps: int = opt(
        1500,
        "distill: training steps of edgesr's feature network (once per data set, cached; as edgesr train)",
    )
    runtimes: list[str] = opt(
        ["openvino", "onnxruntime"],
        "quantize: INT8 artifacts to build (TensorRT reads the onnxruntime QDQ file)",
    )
    calibration_slices: int = opt(16, "quantize: training slices whose pipeline inputs calibrate the ranges")
    keep_fp_ends: int = opt(1, "quantize: convolutions kept in float at each end of the network")
    keep_fp_upsampler: bool = opt(True, "quantize: keep the convolutions around each pixel shuffle in float")
    keep_fp_modules: list[str] = opt([], "quantize: torch module names kept in float (e.g. blocks.0)")
    keep_fp_patterns: list[str] = opt(
        [], "quantize: regular expressions over module and node names kept in float"
    )
    remedies: list[str] = opt(
        list(QUANTIZE_REMEDIES),
        f"quantize: tried in order while the gate is missed: {', '.join(QUANTIZE_REMEDIES)}",
    )
    qat_steps: int = opt(
        400, "quantize (qat remedy): distillation steps of quantization-aware training (batch as distill)"
    )
    qat_lr: float = opt(5e-5, "quantize (qat remedy): peak learning rate (a fine-tuning: small)")
    qat_eval_every: int = opt(100, "quantize (qat remedy): validate and checkpoint every N steps")
    gate_psnr_drop_db: float = opt(
        -1.0, "quantize: PSNR the INT8 model may lose against its float model (negative: the recipe's gate)"
    )
    gate_ssim_drop: float = opt(-1.0, "quantize: SSIM it may lose (negative: the recipe's gate)")
    gate_slices: int = opt(4, "quantize: val slices per volume that attempts are scored on")

    def __post_init__(self) -> None:
        check_choice("stages.kind", self.kind, STAGE_KINDS)
        # A distill stage trains, unless it only rebuilds the teacher's weights with other options
        # (student_init: teacher, e.g. MoDL with fewer CG steps per solve): then steps 0 is allowed.
        if self.kind == "distill" and self.student_init != "teacher" and self.steps == 0:
            raise ConfigError(
                "stages.steps=0: a distill stage trains its student; 0 steps only with "
                "student_init: teacher (the teacher's weights with the stage's student_options)"
            )
        check_range("stages.steps", self.steps, low=0)
        check_range("stages.coils", self.coils, low=0)
        if self.coils and (self.kind != "distill" or self.steps):
            raise ConfigError(
                f"stages.coils={self.coils}: a distill stage of steps: 0 only (the teacher's or a "
                "student's weights run on compressed coils); training on compressed coils is not built"
            )
        if self.starts_from_checkpoint and self.student:
            raise ConfigError(
                f"stages.student_init={self.student_init!r} is a checkpoint: it gives the student's model "
                f"and weights, so stages.student={self.student!r} must be left out"
            )
        if self.student_init not in STUDENT_INITS and not self.student_init.strip():
            raise ConfigError(
                f"stages.student_init must be one of {', '.join(STUDENT_INITS)}, a shipped model's name or "
                "a checkpoint folder, not empty"
            )
        for key, value in self.student_options.items():
            if ":" in str(key) and value is None:
                # YAML/OmegaConf read {iterations:6} as one key "iterations:6" with no value.
                raise ConfigError(
                    f"stages.student_options: {key!r} reads as a key without a value; set one option "
                    "as stages.N.student_options.iterations=6 (the recipe's other options stay), or "
                    "give the whole mapping with a space after each colon ({iterations: 6, "
                    "cg_iterations: 4}: it replaces the recipe's)"
                )
        check_choice("stages.importance", self.importance, IMPORTANCES)
        if self.keep_blocks and self.kind != "prune":
            raise ConfigError(
                f"stages.keep_blocks: only a prune stage removes blocks (this one is {self.kind})"
            )
        check_choice("stages.select_by", self.select_by, ("target", "teacher"))
        check_range("stages.round_to", self.round_to, low=1)
        check_range("stages.target_macs", self.target_macs, low=0.0)
        check_range("stages.target_params", self.target_params, low=0.0)
        if self.target_macs and self.target_params:
            raise ConfigError("stages.target_macs and stages.target_params: give one target, not both")
        if not (self.target_macs or self.target_params) and not 0 < self.ratio < 1:
            raise ConfigError(f"stages.ratio={self.ratio} must lie in (0, 1)")
        check_range("stages.batch_size", self.batch_size, low=1)
        check_range("stages.eval_every", self.eval_every, low=1)
        check_range("stages.lr", self.lr, low=0.0)
        check_range("stages.feature_weight", self.feature_weight, low=0.0)
        check_range("stages.perceptual_weight", self.perceptual_weight, low=0.0)
        check_range("stages.adversarial_weight", self.adversarial_weight, low=0.0)
        check_range("stages.perceptual_steps", self.perceptual_steps, low=1)
        if self.feature_weight > 0 and not self.feature_layers:
            raise ConfigError("stages.feature_weight > 0 needs stages.feature_layers (the layers to match)")
        for runtime in self.runtimes:
            check_choice("stages.runtimes", runtime, QUANTIZE_RUNTIMES)
        if self.kind == "quantize" and not self.runtimes:
            raise ConfigError("stages.runtimes: a quantize stage needs at least one runtime")
        for remedy in self.remedies:
            check_choice("stages.remedies", remedy, QUANTIZE_REMEDIES)
        check_range("stages.calibration_slices", self.calibration_slices, low=1)
        check_range("stages.keep_fp_ends", self.keep_fp_ends, low=0)
        check_range("stages.gate_slices", self.gate_slices, low=0)
        check_range("stages.qat_steps", self.qat_steps, low=1)
        check_range("stages.qat_eval_every", self.qat_eval_every, low=1)
        check_range("stages.qat_lr", self.qat_lr, low=0.0)
        check_range("stages.patch", self.patch, low=1)
        check_range("stages.crop", self.crop, low=8)
        check_range("stages.warmup", self.warmup, low=0)
        check_range("stages.disc_lr", self.disc_lr, low=0.0)
        check_range("stages.output_weight", self.output_weight, low=0.0)
        check_range("stages.target_weight", self.target_weight, low=0.0)
        if self.output_weight + self.target_weight == 0:
            raise ConfigError(
                "stages.output_weight and stages.target_weight cannot both be 0 (nothing to learn)"
            )
        for pattern in self.keep_fp_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"stages.keep_fp_patterns: {pattern!r} is not a regular expression ({exc})"
                ) from None

    @property
    def starts_from_checkpoint(self) -> bool:
        """A distill stage whose student is an existing model (``student_init`` names a checkpoint)."""
        return self.kind == "distill" and self.student_init not in STUDENT_INITS


@dataclass(frozen=True)
class Recipe:
    description: str = opt("", "what the recipe is for")
    teacher: str = opt("rdn-mr-x2", "a shipped teacher's name, or a checkpoint folder")
    stages: list[Stage] = opt([Stage()], "the stages, in order")
    eval_split: str = opt("test", "the split every model is scored on")
    eval_slices: int = opt(0, "at most this many slices per volume when scoring (0: all)")
    max_psnr_drop_db: float = opt(0.15, "the gate: the final model may lose at most this much PSNR")
    max_ssim_drop: float = opt(0.003, "the gate: and at most this much SSIM")
    gate_on: str = opt(
        "real_scans",
        "the slices the gate scores: 'real_scans' (the eval split's real scans; a template, an average "
        "of many subjects that no console sends, is reported apart) or 'all' (every slice)",
    )
    latency_size: int = opt(256, "timing: output size in pixels (SR: the LR input is size / scale)")
    latency_repeats: int = opt(20, "timing: timed runs after 3 warm-up runs")
    report_runtimes: list[str] = opt(
        ["torch", "onnxruntime", "openvino"],
        "runtimes the teacher and the final float model are scored and timed in (torch always)",
    )
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    data_root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    seed: int = opt(0, "seed of students and batches")

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("a recipe needs at least one stage")
        check_choice("eval_split", self.eval_split, ("train", "val", "test"))
        check_range("max_psnr_drop_db", self.max_psnr_drop_db, low=0.0)
        check_range("max_ssim_drop", self.max_ssim_drop, low=0.0)
        check_choice("gate_on", self.gate_on, GATE_ON)
        check_range("latency_repeats", self.latency_repeats, low=1)
        check_range("latency_size", self.latency_size, low=16)
        for runtime in self.report_runtimes:
            check_choice("report_runtimes", runtime, ("torch", "onnxruntime", "openvino"))
        if "torch" not in self.report_runtimes:
            raise ConfigError(
                "report_runtimes must include torch: the teacher in torch FP32 is the reference"
            )
        quantize_at = [i for i, stage in enumerate(self.stages) if stage.kind == "quantize"]
        if quantize_at and quantize_at != [len(self.stages) - 1]:
            raise ConfigError(
                f"stages.{quantize_at[0]}: a quantize stage must be the last stage (its INT8 artifacts are "
                "runtime files that no later stage can train)"
            )


def recipe_path(name_or_path: str) -> Path:
    """``recipes/NAME.yaml`` for a name, else the path as given."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if candidate.is_dir():
            raise ConfigError(
                f"recipe={candidate} is a folder; name a recipe file (.yaml) or a shipped recipe"
            )
        if not candidate.is_file():
            raise ConfigError(f"recipe file not found: {candidate}")
        return candidate
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"no recipe {name_or_path!r}; shipped: {', '.join(known) or 'none'}")
    return shipped


def load_recipe(name_or_path: str, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """A recipe by name or path, with ``key=value`` overrides (``stages.0.steps=200``)."""
    return load_yaml(Recipe, recipe_path(name_or_path), list(overrides))


def stage_folder_name(index: int, stage: Stage) -> str:
    return f"{index + 1}-{stage.name or stage.kind}"


__all__ = ["Recipe", "Stage", "load_recipe", "recipe_path", "stage_folder_name"]
