"""``edgesr report runs=DIR[,DIR...] [out=DIR]``: one readable report of compress and bench runs.

Each folder holds a ``report.json`` (``edgesr compress``) or a ``bench.json`` (``edgesr bench``).
Writes ``report.md``, a self-contained ``report.html`` (images embedded) and the plots as PNG files.
See :mod:`edgesr.bench.pages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from edgesr.config import opt
from edgesr.errors import ConfigError


@dataclass(frozen=True)
class ReportConfig:
    runs: str = opt("", "folders of compress or bench runs, separated by commas")
    out: str = opt("", "output folder (default: the first run's folder/report)")
    images: bool = opt(
        True, "draw each run's image grid (runs its teacher and student on a test slice per volume)"
    )
    data_root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")

    def __post_init__(self) -> None:
        if not [r for r in self.runs.split(",") if r.strip()]:
            raise ConfigError("runs= is required: folders of `edgesr compress` or `edgesr bench` runs")


def run_report(cfg: ReportConfig) -> int:
    from edgesr.bench.pages import load_sources, render

    folders = [r.strip() for r in cfg.runs.split(",") if r.strip()]
    sources = load_sources(folders)
    out = Path(cfg.out or Path(folders[0]) / "report")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder for the report")
    dataset = None
    if cfg.images:
        from edgesr.data.dataset import open_or_prepare

        dataset = open_or_prepare(cfg.data_root)
    written = render(sources, out, dataset=dataset)
    Console(stderr=True).print(
        f"[green]wrote[/] {escape(str(written['html']))} and {escape(str(written['md']))}"
    )
    return 0
