"""``edgesr compress recipe=NAME|PATH [out=DIR] [resume=true] [key=value ...]``: run a compression recipe.

The command's own keys are ``recipe``, ``out``, ``resume`` and ``card``; every other ``key=value``
overrides the recipe (``stages.0.steps=200``, ``teacher=rdn-ct-x2``). See :mod:`edgesr.compress.runner`.

Exit status: 0 when the final model meets the recipe's quality gate, ``GATE_MISSED`` (3) when it does
not (the report is written all the same, with the best figures reached, and no model card is: a model
outside its gate does not ship unless the gate itself is loosened, in the recipe or as
``max_psnr_drop_db=...`` on the command line, which the resolved recipe and the card then record), 2
for a user error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesr.compress.recipe import load_recipe
from edgesr.compress.report import real_scan_psnr
from edgesr.compress.runner import compress
from edgesr.config import opt
from edgesr.errors import ConfigError

GATE_MISSED = 3  # the exit status of a run whose final model is outside the recipe's gate


@dataclass(frozen=True)
class CompressConfig:
    recipe: str = opt("", "a recipe in recipes/ (by name) or a YAML file")
    out: str = opt("", "output folder (default: runs/compress/<recipe name>)")
    resume: bool = opt(False, "continue an interrupted run in out=, skipping finished stages")
    card: str = opt(
        "", "write the final model with its model card into this folder (edgesr/weights/<name> ships it)"
    )
    overrides: tuple[str, ...] = field(
        default=(),
        metadata={"help": "every other key=value overrides the recipe (teacher=..., stages.0.steps=...)"},
    )

    def __post_init__(self) -> None:
        if not self.recipe:
            raise ConfigError("recipe= is required (a name in recipes/ or a YAML file)")


def run_compress(cfg: CompressConfig) -> int:
    console = Console(stderr=True)
    recipe = load_recipe(cfg.recipe, list(cfg.overrides))
    if cfg.card and Path(cfg.card).exists() and not Path(cfg.card).is_dir():
        # Checked before the run, not after an hour of it.
        raise ConfigError(f"card={cfg.card} is a file, not a folder; choose a folder for the model and card")
    out = Path(cfg.out or f"runs/compress/{Path(cfg.recipe).stem}")
    report = compress(recipe, out=out, resume=cfg.resume, console=console)
    if report is None:  # a torchrun rank other than 0: rank 0 writes the report and the card
        return 0
    from edgesr.bench.pages import load_sources, render

    # The page a person opens: the runs table, latency against PSNR and the per-stage chart.
    from edgesr.data.dataset import open_or_prepare

    written = render(load_sources([out]), out, markdown=False, dataset=open_or_prepare(recipe.data_root))
    page = written["html"]
    # report.md (the compress report's own) links the same plots the page embeds.
    plots = [path.name for key, path in written.items() if key != "html"]
    if plots:
        from edgesr._io import write_text_atomic

        text = (out / "report.md").read_text(encoding="utf-8").rstrip("\n")
        links = "\n\n".join(f"![{name}]({name})" for name in plots)
        write_text_atomic(out / "report.md", f"{text}\n\n## Plots\n\n{links}\n")
    gate = report["gate"]
    if cfg.card and not gate["passed"]:
        console.print(
            f"[red]no model card written to {escape(cfg.card)}[/]: the final model is outside the recipe's "
            "gate (below); to ship it anyway, loosen the gate explicitly (max_psnr_drop_db=..., "
            "max_ssim_drop=...) and run again with resume=true (a quantize stage, whose remedies the gate "
            "steers, is then redone: delete its folder first)"
        )
    elif cfg.card:
        from edgesr.compress.card import write_student_card
        from edgesr.data.dataset import PreparedDataset

        command = " ".join(["edgesr compress", f"recipe={cfg.recipe}", *cfg.overrides])
        dataset = PreparedDataset(recipe.data_root or None)
        folder = write_student_card(
            report, cfg.card, recipe_name=Path(cfg.recipe).stem, command=command, dataset=dataset
        )
        console.print(f"model and card written to {escape(str(folder))}")
    templates = report["dataset"].get("templates", [])
    Console().print(runs_table(report, teacher=recipe.teacher))
    if templates:
        console.print(f"templates (population averages, shown apart in report.md): {', '.join(templates)}")
    verdict = "[green]gate passed[/]" if gate["passed"] else "[red]gate missed[/]"
    on_real_scans = gate.get("scored_on") == "real_scans" and "all_slices" in gate
    every = gate.get("all_slices", {})
    console.print(
        f"{verdict} by {escape(gate['final'])}: PSNR {-gate['psnr_drop_db']:+.3f} dB, "
        f"SSIM {-gate['ssim_drop']:+.4f} vs the teacher"
        + (f" on real scans ({gate['slices']} slice{'' if gate['slices'] == 1 else 's'}; every slice, "
           "templates included: "
           f"{-every['psnr_drop_db']:+.3f} dB, {-every['ssim_drop']:+.4f})" if on_real_scans else "")
        + f" (limits -{gate['max_psnr_drop_db']} dB, -{gate['max_ssim_drop']}); "
        f"report: {escape(str(page))} (and report.md)"
    )  # fmt: skip
    return 0 if gate["passed"] else GATE_MISSED


def runs_table(report: dict[str, Any], *, teacher: str) -> Table:
    """The report's runs as the terminal table that ``edgesr compress`` ends with.

    It fits an 80-column terminal (the width rich assumes when the output is not a terminal, as in a
    CI log): no vertical rules, run names (``stage/runtime/precision`` paths) kept on one line, and
    the short numeric columns right-aligned under headers that may wrap. A run that could not be
    measured says "no result" (its cause was printed when it failed, and is in ``report.json``).
    """
    table = Table(
        title=f"{teacher}: {report['dataset']['split']} split, {report['dataset']['images']} slices",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    # With a template among the sources, "real scans" gives the change against the teacher on the
    # others: the figure to judge a model by (report.md has every source apart).
    templates = report["dataset"].get("templates", [])
    teacher_real = real_scan_psnr(report["teacher"], templates) if templates else None
    numbers = ["PSNR dB", "vs teacher", *(["real scans"] if teacher_real is not None else [])]
    rows: list[list[str]] = []
    for run in report["runs"]:
        if "error" in run:
            rows.append([escape(run["name"]), "no result", *[""] * (len(numbers) + 2)])
            continue
        real = real_scan_psnr(run, templates)
        change = [] if teacher_real is None else ["" if real is None else f"{real - teacher_real:+.2f}"]
        rows.append(
            [escape(run["name"]), run["executed_precision"], f"{run['psnr']:.2f}",
             f"{run['psnr_vs_teacher_db']:+.2f}", *change,
             f"{run['latency_ms']['p50']:.1f}", f"{run['speedup_vs_teacher_torch_fp32']:.2f}x"]
        )  # fmt: skip
    # Each column as wide as its longest figure or header word (headers wrap between words).
    for index, column in enumerate(["run", "executed", *numbers, "p50 ms", "speed-up"]):
        width = max(len(text) for text in [*column.split(), *(row[index] for row in rows)])
        table.add_column(column, justify="left" if index < 2 else "right", width=width, no_wrap=index < 2)
    for row in rows:
        table.add_row(*row)
    return table
