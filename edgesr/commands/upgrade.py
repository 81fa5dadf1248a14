"""``edgesr upgrade``: write the model spec into a checkpoint saved before the model contract."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from edgesr.config import opt
from edgesr.errors import ConfigError
from edgesr.upgrade import upgrade_checkpoint


@dataclass(frozen=True)
class UpgradeConfig:
    checkpoint: str = opt("", "a checkpoint folder (best/, last/ or a shipped teacher's folder)")

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint= is required")


def run_upgrade(cfg: UpgradeConfig) -> int:
    console = Console(stderr=True)
    spec, wrote = upgrade_checkpoint(cfg.checkpoint)
    verb = "wrote the model spec into" if wrote else "already has a model spec:"
    console.print(f"{verb} {escape(cfg.checkpoint)}: {spec.describe()}", highlight=False)
    return 0
