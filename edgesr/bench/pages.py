"""Reports people can read: ``report.md`` and a self-contained ``report.html`` from compress and bench runs.

``edgesr report runs=DIR[,DIR...] out=DIR`` reads every ``report.json`` (``edgesr compress``) and
``bench.json`` (``edgesr bench``) it is given, puts all their runs in one table, and draws with
matplotlib:

* **latency vs PSNR**: every run as a point (p50 on a log axis), coloured by runtime, with the Pareto
  front (no other run is both faster and better) drawn through it: the plot a compression trade-off
  is read from;
* **per stage** (compress runs): parameters, MACs, PSNR and torch latency of the teacher and each stage.

The HTML embeds its images (base64 PNG) and its CSS, so the single file can be mailed or archived and
opens offline. The figures come from the JSON as measured; nothing is recomputed or rounded further
than the table shows.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesr._io import write_text_atomic
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import DataError

RUNTIME_COLOURS = {"torch": "#4c72b0", "onnxruntime": "#dd8452", "openvino": "#55a868", "tensorrt": "#c44e52"}


@dataclass(frozen=True)
class Source:
    """One input folder: its kind (compress or bench), its label and its JSON."""

    folder: Path
    kind: str
    label: str
    data: dict[str, Any]


def load_sources(folders: Sequence[str | Path]) -> list[Source]:
    """The compress reports and bench results of ``folders`` (each holds report.json or bench.json).

    Raises:
        DataError: a folder holds neither, or its JSON is corrupt or lacks ``runs``.
    """
    sources = []
    for folder in map(Path, folders):
        for kind, name in (("compress", "report.json"), ("bench", "bench.json")):  # noqa: B007 (used below)
            path = folder / name
            if path.is_file():
                break
        else:
            raise DataError(f"{folder} holds no report.json (edgesr compress) or bench.json (edgesr bench)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: corrupt JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise DataError(f"{path}: no 'runs' list; not written by edgesr {kind}")
        sources.append(Source(folder, kind, folder.name, data))
    if not sources:
        raise DataError("runs= names no folder")
    return sources


def run_rows(sources: list[Source]) -> list[dict[str, Any]]:
    """Every measured run of every source, flattened for the table and the plots."""
    rows = []
    for source in sources:
        for run in source.data["runs"]:
            if "error" in run or "latency_ms" not in run:
                continue  # a run that could not be measured is listed by its own report, not plotted
            latency = run["latency_ms"]
            rows.append({
                "source": source.label, "name": run["name"], "model": run.get("model", ""),
                "runtime": run["runtime"], "precision": run.get("precision", ""),
                "executed": run.get("executed_precision", ""), "p50": latency["p50"], "p90": latency["p90"],
                "p99": latency["p99"], "throughput_ips": run.get("throughput_ips"),
                "peak_memory_mb": run.get("peak_memory_mb"), "size_mb": run.get("size_mb"),
                "psnr": run.get("psnr"), "ssim": run.get("ssim"),
                "psnr_vs_teacher_db": run.get("psnr_vs_teacher_db"),
                "speedup": run.get("speedup_vs_teacher_torch_fp32"),
            })  # fmt: skip
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs no other run beats on both latency (lower) and PSNR (higher), fastest first."""
    scored = sorted((r for r in rows if r.get("psnr") is not None), key=lambda r: (r["p50"], -r["psnr"]))
    front, best = [], -math.inf
    for row in scored:
        if row["psnr"] > best:
            front.append(row)
            best = row["psnr"]
    return front


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def latency_psnr_plot(rows: list[dict[str, Any]]) -> bytes | None:
    """Latency (p50, log) against PSNR for every scored run, with the Pareto front; None without PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.get("psnr") is not None]
    if not scored:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    try:
        for runtime in sorted({r["runtime"] for r in scored}):
            mine = [r for r in scored if r["runtime"] == runtime]
            axes.scatter([r["p50"] for r in mine], [r["psnr"] for r in mine], s=40, label=runtime,
                         color=RUNTIME_COLOURS.get(runtime, "#8172b2"), zorder=3)  # fmt: skip
        front = pareto_front(scored)
        axes.step([r["p50"] for r in front], [r["psnr"] for r in front], where="post", color="#333333",
                  linewidth=1, linestyle="--", label="Pareto front", zorder=2)  # fmt: skip
        for row in front:
            axes.annotate(f"{row['source']}: {row['name']}", (row["p50"], row["psnr"]), fontsize=7,
                          xytext=(4, -10), textcoords="offset points")  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel("latency p50 (ms, log scale; lower is better)")
        axes.set_ylabel("PSNR (dB, higher is better)")
        axes.set_title("Latency against image quality, every run")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        return _figure_png(figure)
    finally:
        plt.close(figure)


def stage_plot(source: Source) -> bytes | None:
    """Parameters, MACs, PSNR and torch p50 of the teacher and each stage of a compress run."""
    if source.kind != "compress" or not source.data.get("stages"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = source.data
    rows = [report["teacher"], *report["stages"]]
    names = [r["name"] for r in rows]
    torch_ms = {}
    for run in report["runs"]:
        # FP32 only: a stage also timed under BF16 autocast would otherwise overwrite its FP32 bar.
        if run.get("runtime") == "torch" and run.get("precision", "fp32") == "fp32" and "latency_ms" in run:
            torch_ms[run["name"].split("/")[0]] = run["latency_ms"]["p50"]
    panels = [
        ("parameters (M)", [r["params"] / 1e6 for r in rows]),
        ("GMAC per image", [r["macs"] / 1e9 for r in rows]),
        ("PSNR (dB)", [r["psnr"] for r in rows]),
        ("torch p50 (ms)", [torch_ms.get(n, float("nan")) for n in names]),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    try:
        for ax, (title, values) in zip(axes, panels, strict=True):
            ax.bar(range(len(names)), values, color="#4c72b0")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(title, fontsize=9)
            if title.startswith("PSNR"):
                finite = [v for v in values if math.isfinite(v)]
                ax.set_ylim(min(finite) - 0.5, max(finite) + 0.3)
        figure.suptitle(f"{source.label}: what each stage cost and bought", fontsize=10, y=1.04)
        return _figure_png(figure)
    finally:
        plt.close(figure)


def _cell(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


TABLE_COLUMNS = (
    ("source", "source"), ("run", "name"), ("runtime", "runtime"), ("precision", "precision"),
    ("executed", "executed"), ("p50 ms", "p50"), ("p90 ms", "p90"), ("p99 ms", "p99"),
    ("img/s", "throughput_ips"), ("peak MB", "peak_memory_mb"), ("size MB", "size_mb"), ("PSNR dB", "psnr"),
    ("SSIM", "ssim"), ("vs teacher dB", "psnr_vs_teacher_db"), ("speed-up", "speedup"),
)  # fmt: skip


def _row_cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for _, key in TABLE_COLUMNS:
        value = row.get(key)
        if key == "ssim":
            cells.append(_cell(value, 4))
        elif key == "psnr_vs_teacher_db":
            cells.append(_cell(value, 2, signed=True))
        elif key == "speedup":
            cells.append("-" if value is None else f"{value:.2f}x")
        elif key in ("p50", "p90", "p99", "peak_memory_mb"):
            cells.append(_cell(value, 1))
        else:
            cells.append(_cell(value))
    return cells


def render(
    sources: list[Source], out: str | Path, *, markdown: bool = True, dataset: PreparedDataset | None = None
) -> dict[str, Path]:
    """Writes ``report.md`` (unless ``markdown`` is false: ``edgesr compress`` writes its own),
    ``report.html`` and the plots' PNGs into ``out``; returns their paths. With ``dataset``, each
    source also gets its image grid (:mod:`edgesr.bench.grid`): input, teacher, student, reference and
    error maps on a test slice per volume."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_rows(sources)
    images: dict[str, bytes] = {}
    if (pareto := latency_psnr_plot(rows)) is not None:
        images["latency_psnr.png"] = pareto
    for source in sources:
        if (stages := stage_plot(source)) is not None:
            images[f"stages_{source.label}.png"] = stages
        if dataset is not None:
            from edgesr.bench.grid import image_grid, models_of

            models = models_of(source.kind, source.folder, source.data)
            if models is not None:
                images[f"images_{source.label}.png"] = image_grid(models, dataset)
    for name, data in images.items():
        with open(out / name, "wb") as f:  # plain files beside the pages; the HTML embeds its own copies
            f.write(data)
    front = {(r["source"], r["name"]) for r in pareto_front(rows)}
    written = {"html": out / "report.html"} | {n: out / n for n in images}
    if markdown:
        write_text_atomic(out / "report.md", _markdown(sources, rows, images, front))
        written["md"] = out / "report.md"
    write_text_atomic(out / "report.html", _html(sources, rows, images, front))
    return written


def _source_lines(source: Source) -> list[str]:
    data = source.data
    dataset = data.get("dataset", {})
    fingerprint = ", ".join(f"{k} {v[:12]}" for k, v in dataset.get("input_sha256", {}).items())
    what = data.get("recipe", {}).get("description") if source.kind == "compress" else data.get("device")
    machine = data.get("machine", {})
    return [
        f"{source.label} ({source.kind}): {what or ''}",
        f"data: {dataset.get('split', '?')} split of {', '.join(dataset.get('sources', []))} "
        f"(data set fingerprint {dataset.get('fingerprint', 'not recorded')}; "
        f"sha256 {fingerprint or 'not recorded'}); "
        f"templates: {', '.join(dataset.get('templates', [])) or 'none'}",
        f"machine: {machine.get('cpu', '?')}, load {machine.get('load_average_1min', '?')}, "
        f"torch {machine.get('torch', '?')}",
    ]


def _markdown(sources: list[Source], rows: list[dict[str, Any]], images: dict[str, bytes], front: set) -> str:
    lines = ["# edgesr report", ""]
    for source in sources:
        lines += [f"- {line}" for line in _source_lines(source)]
    lines += ["", "## Runs", "", "Runs on the Pareto front (latency against PSNR) are marked *.", ""]
    lines.append("| " + " | ".join(title for title, _ in TABLE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        cells = _row_cells(row)
        if (row["source"], row["name"]) in front:
            cells[1] += " *"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in images:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+5) { text-align: left; }
tr.front td { font-weight: 600; background: #f6fbf6; }
img { max-width: 100%; margin: 1em 0; display: block; }
.meta { color: #555; font-size: 13px; }
"""


def _html(sources: list[Source], rows: list[dict[str, Any]], images: dict[str, bytes], front: set) -> str:
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>edgesr report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>edgesr report</h1>",
    ]
    for source in sources:
        parts.append(
            '<p class="meta">' + "<br>".join(escape(line) for line in _source_lines(source)) + "</p>"
        )
    parts.append("<h2>Runs</h2><p>Bold rows are on the Pareto front (no other run is faster and better).</p>")
    parts.append(
        "<table><thead><tr>"
        + "".join(f"<th>{escape(t)}</th>" for t, _ in TABLE_COLUMNS)
        + "</tr></thead><tbody>"
    )
    for row in rows:
        css = ' class="front"' if (row["source"], row["name"]) in front else ""
        parts.append(f"<tr{css}>" + "".join(f"<td>{escape(c)}</td>" for c in _row_cells(row)) + "</tr>")
    parts.append("</tbody></table>")
    for name, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f'<img alt="{escape(name)}" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["Source", "latency_psnr_plot", "load_sources", "pareto_front", "render", "run_rows", "stage_plot"]
