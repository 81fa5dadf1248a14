"""`edgesr report`: compress and bench results in one table, the Pareto front computed (not assumed),
plots embedded in a self-contained HTML page, and the page checked in a real headless browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgesr.bench.pages import load_sources, pareto_front, render, run_rows
from edgesr.cli import main
from edgesr.errors import DataError

DATASET = {
    "split": "test",
    "sources": ["colin27-t1"],
    "input_sha256": {"colin27-t1": "a" * 64},
    "templates": [],
}
MACHINE = {"cpu": "test CPU", "load_average_1min": 0.1, "torch": "2.13.0"}


def _run(name: str, runtime: str, p50: float, psnr: float, **extra) -> dict:
    latency = {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50}
    return {"name": name, "model": "student", "runtime": runtime, "precision": "fp32",
            "executed_precision": "fp32", "latency_ms": latency, "peak_memory_mb": 50.0, "psnr": psnr,
            "ssim": 0.9, **extra}  # fmt: skip


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    compress = tmp_path / "compress"
    compress.mkdir()
    stage = {"params": 100_000, "macs": 2e9, "psnr": 30.0, "ssim": 0.9}
    (compress / "report.json").write_text(json.dumps({
        "recipe": {"description": "a recipe"}, "dataset": DATASET, "machine": MACHINE,
        "teacher": {"name": "teacher", "model": "rdn", **stage, "params": 400_000},
        "stages": [{"name": "1-prune", "model": "rdn", **stage}],
        "runs": [_run("teacher/torch/fp32", "torch", 100.0, 30.5),
                 _run("1-prune/torch/fp32", "torch", 40.0, 30.0),
                 _run("1-prune/openvino/default", "openvino", 8.0, 30.0),
                 _run("1-prune/openvino/fp32", "openvino", 16.0, 30.0),  # dominated: slower, not better
                 {"name": "1-prune/onnxruntime/int8", "runtime": "onnxruntime", "error": "failed"}],
    }))  # fmt: skip
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({
        "device": "cpu-onnxruntime", "dataset": DATASET, "machine": MACHINE,
        "runs": [_run("s/onnxruntime/int8", "onnxruntime", 5.0, 29.0, throughput_ips=300.0, size_mb=0.4)],
    }))  # fmt: skip
    return [compress, bench]


def test_every_measured_run_is_one_row_and_the_front_is_the_undominated_runs(runs):
    rows = run_rows(load_sources(runs))
    assert len(rows) == 5  # the run that could not be measured is left to its own report
    front = [r["name"] for r in pareto_front(rows)]
    assert front == ["s/onnxruntime/int8", "1-prune/openvino/default", "teacher/torch/fp32"]


def test_the_html_page_is_self_contained_and_the_markdown_matches(runs, tmp_path):
    written = render(load_sources(runs), tmp_path / "out")
    page = written["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2  # latency-PSNR and the stage chart
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from anywhere
    assert page.count("<tr") == 6 and page.count('class="front"') == 3
    markdown = written["md"].read_text()
    assert "| bench | s/onnxruntime/int8 * |" in markdown and "aaaaaaaaaaaa" in markdown  # the fingerprint
    assert (tmp_path / "out" / "latency_psnr.png").stat().st_size > 1000


def test_a_folder_without_results_or_with_corrupt_json_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no report.json"):
        load_sources([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bench.json").write_text("{not json")
    assert main(["report", f"runs={tmp_path / 'bad'}"]) == 2
    assert "bench.json: corrupt JSON" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (bash .ci/setup --dev installs it)")
def test_the_page_renders_in_a_real_browser_with_every_image_loaded(
    runs, tmp_path, tiny_dataset, tiny_checkpoint
):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
    out = tmp_path / "out"
    # The bench result names its model (and a teacher): the page gets the image grid too.
    bench = json.loads((runs[1] / "bench.json").read_text())
    bench["subject"] = {"folder": str(tiny_checkpoint), "teacher": str(tiny_checkpoint), "name": "tiny"}
    (runs[1] / "bench.json").write_text(json.dumps(bench))
    argv = ["report", f"runs={runs[0]},{runs[1]}", f"out={out}", f"data_root={tiny_dataset.path.parent}"]
    assert main(argv) == 0
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri())
            loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(out / "screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert loaded == [True, True, True] and errors == []  # latency/PSNR, the stages and the image grid
    assert (out / "images_bench.png").is_file()
    artifacts = Path("test-artifacts")  # kept for people to look at (gitignored; CI keeps the clone's copy)
    artifacts.mkdir(exist_ok=True)
    shutil.copy(out / "screenshot.png", artifacts / "report-screenshot.png")
