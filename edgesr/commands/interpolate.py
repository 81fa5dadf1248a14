"""``edgesr interpolate``: an SR generator between its pixel-loss network and its GAN fine-tune.

See :mod:`edgesr.train.interpolate`. The blend is a checkpoint like any other: score it with ``edgesr
evaluate checkpoint=OUT`` and ship it with ``card=``.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from edgesr.config import check_choice, check_range, opt
from edgesr.data.dataset import PreparedDataset
from edgesr.data.splits import ALL_SPLITS, EXTERNAL
from edgesr.errors import ConfigError
from edgesr.train.interpolate import (
    check_output_folder,
    choose_gan_share,
    load_endpoints,
    score_share,
    write_interpolated,
)


@dataclass(frozen=True)
class InterpolateConfig:
    pixel: str = opt("", "the pixel-loss network's checkpoint (the GAN stage's init)")
    gan: str = opt("", "the GAN fine-tune's checkpoint")
    gan_share: str = opt(
        "auto",
        "the GAN's weight in [0, 1], or auto: the largest (0.1 steps) with no real scan of `split` "
        "below the best classical baseline",
    )
    split: str = opt("val", "the split that chooses gan_share=auto (never test or external)")
    max_slices: int = opt(0, "at most this many slices per volume while choosing (0: all)")
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    out: str = opt("", "the folder to write the blended checkpoint to")

    def __post_init__(self) -> None:
        for key in ("pixel", "gan", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key}= is required")
        check_choice("split", self.split, ALL_SPLITS)
        if self.split in ("test", EXTERNAL):
            raise ConfigError(
                f"split={self.split}: the share is chosen on data that the figures to publish do not use; "
                "choose it on val (or train)"
            )
        check_range("max_slices", self.max_slices, low=0)
        if self.gan_share != "auto":
            check_range("gan_share", self.share, low=0.0, high=1.0)

    @property
    def share(self) -> float:
        # A plain decimal only: float() would also take "nan" and "inf".
        if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", self.gan_share.strip()):
            raise ConfigError(f"gan_share={self.gan_share!r}: a number in [0, 1] or auto")
        return float(self.gan_share)


def run_interpolate(cfg: InterpolateConfig) -> int:
    console = Console(stderr=True)
    command = "edgesr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    endpoints = load_endpoints(cfg.pixel, cfg.gan)
    check_output_folder(cfg.out, endpoints)  # before minutes of scoring, not after
    if not endpoints.gan_started_from_pixel:
        console.print(
            f"[yellow]warning[/]: {escape(cfg.gan)} was not fine-tuned from {escape(cfg.pixel)} (its init "
            "names another checkpoint): a blend of networks trained apart need not lie between them"
        )
    dataset = PreparedDataset(cfg.root or None)

    def show(trial: dict) -> None:
        console.print(
            f"gan_share={trial['gan_share']:.1f}: {trial['psnr_db']:.2f} dB, SSIM {trial['ssim']:.4f}, "
            f"sharpness {trial['gradient_energy_ratio']:.3f}, {trial['gain_db_over_best_baseline']:+.2f} dB "
            f"vs the best baseline, {trial['slices_below_best_baseline']} real slice(s) below it "
            f"({trial['split']} split)",
            highlight=False,
        )

    if cfg.gan_share == "auto":
        with console.status(f"choosing the GAN's share on the {cfg.split} split"):
            share, trials = choose_gan_share(
                endpoints, dataset, split=cfg.split, max_slices=cfg.max_slices, progress=show
            )
        passed = trials[-1]["slices_below_best_baseline"] == 0
        chosen_by = (
            f"the largest share (0.1 steps) with no real {cfg.split} scan below the best classical baseline"
            if passed
            else f"none of the shares kept every real {cfg.split} scan above the best baseline: the smallest"
        )
        if not passed:
            console.print(f"[yellow]warning[/]: {chosen_by} (gan_share=0) was taken")
    else:
        share, chosen_by = cfg.share, "given on the command line"
        trials = [score_share(endpoints, share, dataset, split=cfg.split, max_slices=cfg.max_slices)]
        show(trials[0])
    written = write_interpolated(
        cfg.out, endpoints, gan_share=share, chosen_by=chosen_by, trials=trials, command=command,
        max_slices=cfg.max_slices,
    )  # fmt: skip
    console.print(f"[green]wrote[/] {escape(str(written))} (gan_share={share:g})")
    return 0
