"""INT8 quantization: the scope resolved on the exported graph, a standard QDQ ONNX for ONNX Runtime, an
NNCF INT8 model for OpenVINO, the gated stage with its remedies, and the report's per-runtime runs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgesr.cli import main
from edgesr.compress.distill import DistillSettings
from edgesr.compress.qat import kept_modules, quantize_torch
from edgesr.compress.quantize import (
    QatPlan,
    QuantizeSettings,
    Scope,
    calibration_inputs,
    quantize,
    quantize_onnxruntime,
    quantize_openvino,
)
from edgesr.compress.recipe import load_recipe
from edgesr.errors import ConfigError
from edgesr.evaluate import score_predictor
from edgesr.export.onnx import export_onnx
from edgesr.export.onnxruntime import OnnxRuntimePredictor
from edgesr.export.onnxruntime import executed_precision as onnxruntime_precision
from edgesr.export.openvino import OpenVinoPredictor
from edgesr.models import create_model
from edgesr.pipeline import TorchPredictor
from edgesr.train.checkpoint import load_for_inference
from tests.conftest import needs_real_data, save_model, spec_for

# Run by tests/compress/test_quantize.py in a pytest process of its own (see there).


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny x2 RDN with a non-trivial output layer, its spec and its float ONNX file."""
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2).eval()
    torch.nn.init.normal_(model.to_image.weight, std=0.05)
    spec = spec_for(model, "rdn_tiny")
    path = tmp_path_factory.mktemp("q") / "tiny.onnx"
    example = {"lr": torch.rand(1, 1, 19, 17), "base": torch.rand(1, 1, 38, 34)}
    export_onnx(model, spec, example, path, fold=False)  # INT8 quantizes the graph as trained, not folded
    return model, spec, path


def _smooth_inputs(seed: int, h: int = 21, w: int = 18) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    lr = torch.nn.functional.avg_pool2d(torch.rand(1, 1, h + 4, w + 4, generator=generator), 5, 1)
    base = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bilinear")
    return {"lr": lr.numpy(), "base": base.numpy()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / torch.mean((a - b) ** 2)))


def test_the_scope_keeps_the_ends_the_upsampler_and_named_modules(exported):
    _, _, path = exported
    graph = onnx.load(str(path))
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    first, second, pre_shuffle, last = convs[0], convs[1], convs[-2], convs[-1]
    assert Scope(ends=1, upsampler=False).resolve(graph) == [first, last]
    assert Scope(ends=1, upsampler=True).resolve(graph) == [first, pre_shuffle, last]
    assert set(Scope(ends=2, upsampler=False).resolve(graph)) >= {first, second, pre_shuffle, last}
    assert Scope(ends=0, upsampler=False).resolve(graph) == []
    in_block = Scope(ends=0, upsampler=False, modules=("blocks.0",)).resolve(graph)
    assert in_block and first not in in_block and last not in in_block
    assert Scope(ends=0, upsampler=False, patterns=(r"^to_image$",)).resolve(graph) == [last]
    # A module name that holds no convolution (a typo) would keep nothing in float: an error instead.
    with pytest.raises(ConfigError, match="keep_fp_modules: no convolution lies in 'blocks.9'"):
        Scope(ends=0, upsampler=False, modules=("blocks.9",)).resolve(graph)


def test_the_qdq_onnx_holds_only_standard_ops_and_runs_in_onnxruntime(exported, tmp_path):
    model, _, path = exported
    calibration = [_smooth_inputs(seed) for seed in range(6)]
    out = quantize_onnxruntime(path, tmp_path / "int8.onnx", calibration, keep_fp=[])
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph, full_check=True)
    float_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops <= float_ops | {"QuantizeLinear", "DequantizeLinear"}
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}  # no custom (com.microsoft) ops
    weights = {i.name: i for i in graph.graph.initializer}
    assert any(w.data_type == onnx.TensorProto.INT8 for w in weights.values())  # INT8 weights stored
    inputs = _smooth_inputs(99)
    expected = model(torch.from_numpy(inputs["lr"]), torch.from_numpy(inputs["base"]))
    got = OnnxRuntimePredictor(out, threads=1)({k: torch.from_numpy(v) for k, v in inputs.items()})
    assert got.shape == expected.shape and _psnr(got, expected.detach()) > 30


def test_openvino_int8_runs_int8_convolutions(exported):
    model, _, path = exported
    calibration = [_smooth_inputs(seed) for seed in range(6)]
    quantized = quantize_openvino(path, calibration, keep_fp=[])
    predictor = OpenVinoPredictor(quantized, threads=1, precision="f32")
    assert predictor.executed_precision.startswith("int8")
    assert OpenVinoPredictor(path, threads=1, precision="f32").executed_precision == "fp32"
    inputs = _smooth_inputs(7)
    expected = model(torch.from_numpy(inputs["lr"]), torch.from_numpy(inputs["base"])).detach()
    got = predictor({k: torch.from_numpy(v) for k, v in inputs.items()})
    assert got.shape == expected.shape and _psnr(got, expected) > 30


def test_calibration_records_what_the_pipeline_feeds(exported, tiny_dataset):
    model, spec, _ = exported
    items = calibration_inputs(spec, TorchPredictor(model, spec), tiny_dataset, slices=3)
    assert len(items) >= 3 and all(set(item) == {"lr", "base"} for item in items)
    first = items[0]
    assert first["base"].shape[-2:] == (2 * first["lr"].shape[-2], 2 * first["lr"].shape[-1])
    with pytest.raises(ConfigError, match="at least one slice"):
        calibration_inputs(spec, TorchPredictor(model, spec), tiny_dataset, slices=0)


def test_an_unreachable_gate_tries_every_remedy_and_says_none_met_it(exported, tiny_dataset, tmp_path):
    model, spec, path = exported
    settings = QuantizeSettings(
        calibration_slices=2, max_psnr_drop_db=0.0, max_ssim_drop=0.0, val_slices=1,
        remedies=("keep_fp", "more_calibration", "bias_correction"),
    )  # fmt: skip
    summary = quantize(
        path, TorchPredictor(model, spec), spec=spec, dataset=tiny_dataset, settings=settings, out=tmp_path
    )
    openvino, onnxruntime = summary["runtimes"]["openvino"], summary["runtimes"]["onnxruntime"]
    # ONNX Runtime's quantizer has no bias correction: that remedy is skipped there, not faked.
    assert [a["remedy"] for a in openvino["attempts"]] == [
        "ptq",
        "keep_fp",
        "more_calibration",
        "bias_correction",
    ]
    assert [a["remedy"] for a in onnxruntime["attempts"]] == ["ptq", "keep_fp", "more_calibration"]
    assert not openvino["met_gate"] and not onnxruntime["met_gate"]
    widths = [len(a["keep_fp"]) for a in openvino["attempts"]]
    assert widths[1] > widths[0]  # keep_fp kept more convolutions in float
    assert [a["calibration_slices"] for a in openvino["attempts"]][1:3] == [2, 8]
    # The kept artifact is the best attempt, and it is what the file holds.
    best = max(onnxruntime["attempts"], key=lambda a: a["psnr"])
    assert onnxruntime["attempts"][onnxruntime["chosen"]] == best
    rescored = score_predictor(
        spec,
        OnnxRuntimePredictor(tmp_path / onnxruntime["artifact"]),
        tiny_dataset,
        split="val",
        max_slices=1,
    )
    assert rescored["psnr"] == pytest.approx(best["psnr"], abs=1e-3)
    assert json.loads((tmp_path / "quantization.json").read_text()) == summary
    assert not (tmp_path / "attempts").exists()


def test_kept_onnx_convolutions_map_to_their_torch_modules_and_stay_unquantized(exported):
    model, spec, path = exported
    graph = onnx.load(str(path))
    kept = Scope(ends=1, upsampler=True).resolve(graph)
    modules = kept_modules(model, graph, kept)
    assert "shallow1" in modules and "to_image" in modules and len(modules) == len(kept)
    calibration = [tuple(torch.from_numpy(_smooth_inputs(s)[n]) for n in spec.input_names) for s in range(3)]
    quantized = quantize_torch(model, calibration, keep_fp=modules)
    # NNCF hooks a weight quantizer onto each quantized convolution; the kept ones have none, and the
    # float model handed in is left untouched.
    hooked = {k for k in quantized.state_dict() if k.startswith("__nncf_hooks")}
    assert hooked and not any(k.startswith("__nncf_hooks") for k in model.state_dict())
    assert not any(f"{name}/conv2d" in key for key in hooked for name in ("shallow1", "to_image"))
    with pytest.raises(ConfigError, match="not convolutions"):
        quantize_torch(model, calibration, keep_fp={"no_such_layer"})


def test_qat_trains_once_and_each_runtime_file_is_checked_against_it(exported, tiny_dataset, tmp_path):
    model, spec, path = exported
    settings = QuantizeSettings(
        calibration_slices=2, max_psnr_drop_db=0.0, max_ssim_drop=0.0, val_slices=1, remedies=("qat",)
    )
    plan = QatPlan(
        model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"},
        DistillSettings(steps=2, warmup=1, batch_size=2, patch=16, eval_every=2, val_slices=1, amp=False),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="qat remedy needs"):
        quantize(path, TorchPredictor(model, spec), spec=spec, dataset=tiny_dataset, settings=settings,
                 out=tmp_path)  # fmt: skip
    summary = quantize(
        path, TorchPredictor(model, spec), spec=spec, dataset=tiny_dataset, settings=settings,
        out=tmp_path, qat=plan,
    )  # fmt: skip
    for runtime in ("openvino", "onnxruntime"):
        entry = summary["runtimes"][runtime]
        assert [a["remedy"] for a in entry["attempts"]] == ["ptq", "qat"] and entry["unavailable"] == []
        qat = entry["attempts"][1]
        assert qat["export_max_abs_error"] is not None and qat["export_max_abs_error"] < 0.05
        assert entry["attempts"][0]["export_max_abs_error"] is None  # PTQ files come from the ONNX
    # One fine-tuning (two steps), shared by both runtimes; its checkpoints keep NNCF's quantizers.
    log = (tmp_path / "qat" / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log if "loss" in line] == [2]
    qdq = onnx.load(tmp_path / summary["runtimes"]["onnxruntime"]["artifact"])
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and {n.domain for n in qdq.graph.node} <= {
        "",
        "ai.onnx",
    }
    assert onnxruntime_precision(tmp_path / summary["runtimes"]["onnxruntime"]["artifact"]).startswith("int8")
    openvino = OpenVinoPredictor(tmp_path / summary["runtimes"]["openvino"]["artifact"], precision="f32")
    assert openvino.executed_precision.startswith("int8")
    # The ONNX Runtime file has dynamic sizes: an odd-sized input runs.
    odd = {k: torch.from_numpy(v) for k, v in _smooth_inputs(3, 23, 15).items()}
    assert OnnxRuntimePredictor(tmp_path / summary["runtimes"]["onnxruntime"]["artifact"])(odd).shape == (
        1,
        1,
        46,
        30,
    )
    # Run again with resume: the finished fine-tuning is reused, not repeated.
    again = quantize(
        path, TorchPredictor(model, spec), spec=spec, dataset=tiny_dataset, settings=settings,
        out=tmp_path, qat=plan, resume=True,
    )  # fmt: skip
    assert (tmp_path / "qat" / "run" / "log.jsonl").read_text().splitlines() == log
    assert again["runtimes"]["openvino"]["attempts"][1]["psnr"] == pytest.approx(
        summary["runtimes"]["openvino"]["attempts"][1]["psnr"], abs=1e-3
    )
    _rebuilt_from_the_qat_checkpoint(model, spec, path, tiny_dataset, tmp_path, summary)


def _rebuilt_from_the_qat_checkpoint(model, spec, path, tiny_dataset, tmp_path, summary):
    """What export does with a card's shipped QAT weights: the fake-quantized model rebuilt from the float
    one and the scope, the checkpoint's tensors loaded, then each runtime's file (no training)."""
    from edgesr.compress import qat
    from edgesr.export.build import Int8Plan, _qat_file
    from edgesr.export.targets import load_target
    from edgesr.train.checkpoint import load_weights

    for entry in summary["runtimes"].values():
        chosen_qat = entry["attempts"][entry["chosen"]]["remedy"] == "qat"
        assert (entry.get("qat_checkpoint") == "qat/run/best") == chosen_qat
    keep_fp = summary["runtimes"]["onnxruntime"]["attempts"][1]["keep_fp"]
    calibration = calibration_inputs(spec, TorchPredictor(model, spec), tiny_dataset, slices=2)
    best = tmp_path / "qat" / "run" / "best"
    plan = Int8Plan(tuple(keep_fp), 2, False, "card (QAT weights)", qat_weights=best)
    items = [qat.torch_inputs(spec, item) for item in calibration]
    untrained = quantize_torch(model, items, keep_fp=kept_modules(model, onnx.load(str(path)), keep_fp))
    trained = quantize_torch(model, items, keep_fp=kept_modules(model, onnx.load(str(path)), keep_fp))
    load_weights(plan.qat_weights, trained)
    feeds = {k: torch.from_numpy(v) for k, v in _smooth_inputs(5).items()}
    with torch.no_grad():
        expected, before = trained(*feeds.values()), untrained(*feeds.values())
    assert (expected - before).abs().max() > 1e-4  # the checkpoint's tensors changed the network
    for target, predictor in (("cpu-onnxruntime", OnnxRuntimePredictor), ("cpu-openvino", OpenVinoPredictor)):
        folder = tmp_path / "rebuilt" / target
        folder.mkdir(parents=True)
        _qat_file(load_target(target), path, folder, calibration, plan, model=model, spec=spec)
        entry = folder / ("model.onnx" if target == "cpu-onnxruntime" else "model.xml")
        got = predictor(entry)(feeds)
        assert (got - expected).abs().max() < 0.05, target
    # TensorRT takes signed INT8 with zero point 0 only: NNCF's symmetric quantizers give that (behind the
    # TorchScript exporter's Identity nodes); ONNX Runtime's asymmetric PTQ file is refused by name.
    from edgesr.errors import EdgesrError

    qat.require_signed_qdq(tmp_path / "rebuilt" / "cpu-onnxruntime" / "model.onnx")
    asymmetric = quantize_onnxruntime(path, tmp_path / "asym.onnx", calibration, keep_fp=keep_fp)
    with pytest.raises(EdgesrError, match="TensorRT takes signed INT8"):
        qat.require_signed_qdq(asymmetric)


def test_a_recon_model_quantizes_its_convolutions_and_says_why_qat_has_no_onnx_file(tiny_dataset, tmp_path):
    # DeepcomplexMRI for ONNX Runtime (its edge recipe's runtime): the data consistency's FFTs (ONNX
    # DFT) stay float, the denoisers' convolutions go INT8, calibrated on simulated acquisitions.
    torch.manual_seed(0)
    model = create_model("deepcomplex_tiny", coils=4).eval()
    spec = spec_for(model, "deepcomplex_tiny")
    path = tmp_path / "recon.onnx"
    export_onnx(model, spec, {"masked_kspace": torch.rand(1, 8, 24, 20), "mask": torch.ones(1, 1, 1, 20),
                              "sens_maps": torch.rand(1, 8, 24, 20)}, path)  # fmt: skip
    # The tiny network is all ends: quantize every convolution (one ONNX Conv per complex conv).
    # A gate nothing meets (a random network can score higher in INT8), so that the remedy is tried.
    settings = QuantizeSettings(
        runtimes=("onnxruntime",), calibration_slices=2, max_psnr_drop_db=-1.0, max_ssim_drop=-1.0,
        val_slices=1, remedies=("qat",), scope=Scope(ends=0, upsampler=False),
    )  # fmt: skip
    plan = QatPlan(model, "deepcomplex_tiny", {"coils": 4}, DistillSettings(steps=1, crop=32, batch_size=1))
    summary = quantize(
        path, TorchPredictor(model, spec), spec=spec, dataset=tiny_dataset, settings=settings,
        out=tmp_path / "q", qat=plan,
    )  # fmt: skip
    entry = summary["runtimes"]["onnxruntime"]
    [ptq] = entry["attempts"]
    assert ptq["remedy"] == "ptq" and np.isfinite(ptq["psnr"])
    assert onnxruntime_precision(tmp_path / "q" / entry["artifact"]).startswith("int8")
    [missing] = entry["unavailable"]
    assert missing["remedy"] == "qat" and "FFT" in missing["reason"]
    assert not (tmp_path / "q" / "qat").exists()  # nothing was trained for a file that cannot exist


def _quantize_recipe(tmp_path, data_root, *, report: str = "", stage: str = "") -> Path:
    """A recipe quantizing a tiny RDN teacher (not the plain skip) on ``data_root``, gate wide open."""
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    torch.nn.init.normal_(model.to_image.weight, std=0.02)
    teacher = save_model(tmp_path / "teacher", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"})
    recipe = tmp_path / "q.yaml"
    recipe.write_text(
        f"teacher: {teacher}\ndata_root: {data_root}\neval_split: val\neval_slices: 1\n"
        f"latency_size: 32\nlatency_repeats: 2\nthreads: 1\nmax_psnr_drop_db: 100\nmax_ssim_drop: 1\n{report}"
        f"stages:\n  - kind: quantize\n    calibration_slices: 2\n    gate_slices: 1\n    patch: 8\n{stage}"
    )
    return recipe


def test_a_quantize_recipe_reports_every_runtime_and_resumes(tiny_dataset, tmp_path, capsys):
    recipe = _quantize_recipe(tmp_path, tiny_dataset.path.parent)
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == [
        "teacher/torch/fp32", "teacher/onnxruntime/fp32", "teacher/openvino/default",
        "1-quantize/openvino/int8", "1-quantize/onnxruntime/int8",
    ]  # fmt: skip
    by_name = {r["name"]: r for r in report["runs"]}
    assert by_name["teacher/onnxruntime/fp32"]["executed_precision"] == "fp32"
    assert by_name["1-quantize/openvino/int8"]["executed_precision"].startswith("int8")
    # ONNX Runtime fuses the QDQ convolutions into QLinearConv; the ones kept in float stay Conv.
    assert by_name["1-quantize/onnxruntime/int8"]["executed_precision"] == "int8+fp32"
    for run in report["runs"]:
        assert {"p50", "p90", "p99", "mean"} <= run["latency_ms"].keys() and run["peak_memory_mb"] >= 0
        assert {"psnr", "ssim", "psnr_vs_teacher_db", "speedup_vs_teacher_torch_fp32"} <= run.keys()
        assert run["precision"] in ("fp32", "bf16", "fp16", "int8") and run["size_mb"] > 0
    # OpenVINO asked for its default runs what it executes (BF16 on a CPU with BF16 units, else FP32).
    default = by_name["teacher/openvino/default"]
    assert default["requested_precision"] == "default"
    assert default["precision"] == ("bf16" if "bf16" in default["executed_precision"] else "fp32")
    assert by_name["teacher/onnxruntime/fp32"]["psnr"] == pytest.approx(
        by_name["teacher/torch/fp32"]["psnr"], abs=0.01
    )
    [stage] = report["stages"]
    assert stage["scored_in"].endswith("int8") and stage["macs"] > 0
    assert [p["run"] for p in report["trade_off"]] == names  # one (size, precision) point per run
    assert {p["macs_fraction"] for p in report["trade_off"]} == {1.0}  # quantizing keeps every MAC
    assert report["quantization"]["runtimes"].keys() == {"openvino", "onnxruntime"}
    assert (out / "1-quantize" / "openvino" / "model.xml").is_file()
    assert (out / "1-quantize" / "openvino" / "model.bin").is_file()
    assert (out / "1-quantize" / "onnxruntime" / "model.int8.onnx").is_file()
    markdown = (out / "report.md").read_text()
    assert "## INT8 attempts" in markdown and "1-quantize/openvino/int8" in markdown
    terminal = (
        capsys.readouterr()
    )  # the table on stdout (long names wrap in their cell), the verdict on stderr
    assert "1-quantize/" in terminal.out and "int8+" in terminal.out and "gate passed" in terminal.err
    card = tmp_path / "ship" / "tiny-edge"
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true", f"card={card}"]) == 0
    assert "finished earlier" in capsys.readouterr().err
    # The shipped student: the float model with its card, loadable like a teacher.
    student, student_spec, _ = load_for_inference(card)
    assert student_spec.sr is not None and student_spec.sr.scale == 2
    shipped = json.loads((card / "model_card.json").read_text())
    assert shipped["compression"]["stages"] == report["stages"] and shipped["evaluation"]["runs"]
    assert shipped["weights"]["sha256"] and {d["name"] for d in shipped["data"]} == {"fake-mr"}
    # The card folder is swapped in whole: nothing of the staging or the previous card is left beside it.
    assert sorted(p.name for p in card.parent.iterdir()) == ["tiny-edge"]
    assert sorted(p.name for p in card.iterdir()) == [
        "checkpoint.json",
        "model.safetensors",
        "model_card.json",
    ]
    # The INT8 file is rebuilt from the shipped float model by the recorded command, to the same figures.
    entry = shipped["quantization"]["onnxruntime"]
    argv = shlex.split(entry["rebuild_command"])[1:]
    argv = [a if not a.startswith("teacher=") else f"teacher={card}" for a in argv]
    argv = [a if not a.startswith("recipe=") else f"recipe={recipe}" for a in argv]
    argv = [a if not a.startswith("out=") else f"out={tmp_path / 'rebuilt'}" for a in argv]
    assert main(argv) == 0
    rebuilt = json.loads((tmp_path / "rebuilt" / "1-quantize" / "quantization.json").read_text())
    [attempt] = rebuilt["runtimes"]["onnxruntime"]["attempts"]
    assert attempt["keep_fp"] == entry["attempt"]["keep_fp"]
    assert attempt["psnr"] == pytest.approx(entry["attempt"]["psnr"], abs=1e-3)


def test_with_a_template_among_the_sources_both_gates_judge_the_real_scans(
    tiny_dataset_with_template, tmp_path, capsys
):
    """The recipe's gate and the quantize stage's gate leave the template out (gate_on: real_scans, the
    default) and say so; the figures over every slice stay beside them; gate_on=all judges every slice."""
    recipe = _quantize_recipe(
        tmp_path, tiny_dataset_with_template.path.parent, report="report_runtimes: [torch]\n",
        stage="    runtimes: [onnxruntime]\n    remedies: []\n",
    )  # fmt: skip
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["templates"] == ["fake-atlas"]
    gate = report["gate"]
    assert gate["scored_on"] == "real_scans" and gate["sources"] == ["fake-mr"] and gate["slices"] == 1
    assert set(gate["all_slices"]) == {"psnr_drop_db", "ssim_drop"}
    int8 = next(r for r in report["runs"] if r["precision"] == "int8")
    teacher_real = report["teacher"]["by_source"]["fake-mr"]
    int8_real = int8["by_source"]["fake-mr"]
    assert gate["psnr_drop_db"] == pytest.approx(teacher_real["psnr_db"] - int8_real["psnr_db"], abs=2e-3)
    quantization = report["quantization"]
    assert quantization["gate"]["scored_on"] == "real_scans"
    assert quantization["reference"]["gated"]["scored_on"] == "real_scans"
    markdown = (out / "report.md").read_text()
    assert "on the 1 slice of real scans (fake-mr); on every slice, templates included" in markdown
    assert "judged on the real scans" in markdown
    assert "on real scans (1 slice; every slice, templates included" in capsys.readouterr().err
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'every'}", "gate_on=all"]) == 0
    every = json.loads((tmp_path / "every" / "report.json").read_text())
    assert every["gate"]["scored_on"] == "all" and "all_slices" not in every["gate"]
    assert every["quantization"]["gate"]["scored_on"] == "all"


def test_a_quantize_stage_must_come_last(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - kind: quantize\n  - kind: distill\n    student: rdn_tiny\n")
    with pytest.raises(ConfigError, match="stages.0: a quantize stage must be the last"):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="stages.1.remedies"):
        load_recipe("quickstart", ["stages.1.remedies=[sparsify]"])
    with pytest.raises(ConfigError, match="stages.1.runtimes"):
        load_recipe("quickstart", ["stages.1.runtimes=[tflite]"])


@pytest.mark.slow
@pytest.mark.data
@needs_real_data
def test_a_quantized_teacher_stays_within_its_gate_on_real_slices(real_data_root, tmp_path):
    """The shipped MR x2 teacher in OpenVINO INT8: what the stage reports is what the file delivers."""
    from edgesr.data.dataset import PreparedDataset
    from edgesr.teachers import read_card, teacher_path
    from tests.conftest import card_sources

    model, spec, _ = load_for_inference(teacher_path("rdn-mr-x2"))
    # The sources the teacher's card was measured on: a source added since changes the calibration.
    dataset = PreparedDataset(real_data_root).restricted(card_sources(read_card(teacher_path("rdn-mr-x2"))))
    path = tmp_path / "teacher.onnx"
    example = {"lr": torch.rand(1, 1, 32, 32), "base": torch.rand(1, 1, 64, 64)}
    export_onnx(model, spec, example, path, fold=False)  # as the quantize stage exports it
    settings = QuantizeSettings(
        runtimes=("openvino",), calibration_slices=8, remedies=(), max_psnr_drop_db=0.5, max_ssim_drop=0.005,
        val_slices=2,
    )  # fmt: skip
    summary = quantize(
        path, TorchPredictor(model, spec), spec=spec, dataset=dataset, settings=settings, out=tmp_path
    )
    assert summary["runtimes"]["openvino"]["met_gate"], summary
    # On test slices it was not scored on: the INT8 file stays within the same gate.
    artifact = tmp_path / summary["runtimes"]["openvino"]["artifact"]
    int8 = score_predictor(spec, OpenVinoPredictor(artifact, threads=2), dataset, split="test", max_slices=2)
    reference = score_predictor(spec, TorchPredictor(model, spec), dataset, split="test", max_slices=2)
    assert reference["psnr"] - int8["psnr"] <= 0.5 and reference["ssim"] - int8["ssim"] <= 0.005


def test_qat_says_it_cannot_quantize_complex_convolutions():
    from edgesr.compress.qat import QatUnavailable

    model = create_model("deepcomplex_tiny", coils=4).eval()
    example = (torch.rand(1, 8, 12, 10), torch.ones(1, 1, 1, 10), torch.rand(1, 8, 12, 10))
    with pytest.raises(QatUnavailable, match="complex convolutions"):
        quantize_torch(model, [example], keep_fp=set())


def test_convolutions_inside_loop_bodies_are_refused_and_an_int8_export_writes_the_unrolls_out(tmp_path):
    """Neither quantizer enters an ONNX Loop body: MoDL's denoiser, which runs in its unroll loop, came
    out of them in float in a file labelled INT8. Such a graph is refused by name; the INT8 export
    writes the unrolls out (the CG steps, which hold no convolution, stay Loops), and gets quantized."""
    from edgesr.errors import EdgesrError
    from edgesr.export.onnx import convolutions_in_subgraphs, int8_unroll
    from edgesr.spec import recon_spec

    torch.manual_seed(0)
    model = create_model("modl_tiny").eval()
    spec = recon_spec(coils=0)
    example = {"masked_kspace": torch.rand(1, 8, 16, 12), "mask": torch.ones(1, 1, 1, 12),
               "sens_maps": torch.rand(1, 8, 16, 12)}  # fmt: skip
    looped = export_onnx(model, spec, example, tmp_path / "looped.onnx")
    assert convolutions_in_subgraphs(onnx.load(str(looped))) == 3  # the denoiser, inside the Loop
    calibration = [{k: v.numpy() for k, v in example.items()}]
    with pytest.raises(EdgesrError, match="inside ONNX Loop bodies"):
        quantize_onnxruntime(looped, tmp_path / "q.onnx", calibration, keep_fp=[])
    with pytest.raises(EdgesrError, match="inside ONNX Loop bodies"):
        quantize_openvino(looped, calibration, keep_fp=[])
    assert not (tmp_path / "q.onnx").exists()

    assert int8_unroll(model) == ("unrolls",)
    written_out = export_onnx(model, spec, example, tmp_path / "unrolled.onnx", unroll=int8_unroll(model))
    graph = onnx.load(str(written_out))
    assert convolutions_in_subgraphs(graph) == 0
    assert sum(node.op_type == "Conv" for node in graph.graph.node) == 3 * model.iterations
    assert sum(node.op_type == "Loop" for node in graph.graph.node) == model.iterations  # one CG loop each
    quantized = quantize_onnxruntime(written_out, tmp_path / "q.onnx", calibration, keep_fp=[])
    assert onnxruntime_precision(quantized).startswith("int8")
    with torch.no_grad():  # written out, the float graph is still the model
        expected = model(*example.values())
    torch.testing.assert_close(OnnxRuntimePredictor(written_out)(example), expected, atol=1e-4, rtol=0)


def _float_readers_of_dequantized_activations(path: Path) -> list[str]:
    """Non-Conv nodes that read the dequantized copy of an activation a float operation made (not a
    convolution's own INT8 output)."""
    nodes = list(onnx.load(str(path)).graph.node)
    producer = {out: n for n in nodes for out in n.output}
    quantized = {
        n.output[0] for n in nodes
        if n.op_type == "QuantizeLinear" and getattr(producer.get(n.input[0]), "op_type", "") != "Conv"
    }  # fmt: skip
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in quantized}
    return [n.op_type for n in nodes if n.op_type != "Conv" and dequantized & set(n.input)]


def test_a_recon_graph_quantizes_only_its_convolutions_inputs_not_its_image_path(tmp_path):
    """ONNX Runtime's quantizer gives every consumer of a quantized convolution's input the 8-bit copy:
    in MoDL the residual add and the data-consistency solve of each unroll then read the image in 8
    bits. ``float_paths`` hands them the float tensor back; the convolutions keep their QDQ pairs, and
    the result moves towards the float model."""
    from edgesr.export.onnx import int8_unroll
    from edgesr.spec import recon_spec

    torch.manual_seed(0)
    model = create_model("modl_tiny").eval()
    spec = recon_spec(coils=0)
    example = {"masked_kspace": torch.rand(1, 8, 16, 12), "mask": torch.ones(1, 1, 1, 12),
               "sens_maps": torch.rand(1, 8, 16, 12)}  # fmt: skip
    path = export_onnx(model, spec, example, tmp_path / "unrolled.onnx", unroll=int8_unroll(model))
    calibration = [{k: v.numpy() for k, v in example.items()}]
    shared = quantize_onnxruntime(path, tmp_path / "shared.onnx", calibration, keep_fp=[])
    rewired = quantize_onnxruntime(path, tmp_path / "float.onnx", calibration, keep_fp=[], float_paths=True)

    assert "Add" in _float_readers_of_dequantized_activations(shared)  # ORT's default: the residual add
    assert _float_readers_of_dequantized_activations(rewired) == []
    for file in (shared, rewired):  # the convolutions are quantized all the same
        graph = onnx.load(str(file)).graph
        assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= model.iterations
        assert onnxruntime_precision(file).startswith("int8")
    with torch.no_grad():
        expected = model(*example.values())
    error = {
        name: (OnnxRuntimePredictor(file)(example) - expected).abs().max().item()
        for name, file in (("shared", shared), ("float paths", rewired))
    }
    assert error["float paths"] < error["shared"], error


def test_a_prune_then_int8_chain_as_the_quickstart_runs(tiny_dataset, tmp_path):
    """The quick start's shape on a tiny teacher: a pruned, fine-tuned student, then its INT8 files;
    the quantize stage quantizes the pruned model (not the teacher), and both stages are reported."""
    recipe = _quantize_recipe(tmp_path, tiny_dataset.path.parent)
    options = ["kind: prune", "ratio: 0.5", "round_to: 1", "steps: 2", "batch_size: 2", "patch: 8",
               "eval_every: 2", "warmup: 1"]  # fmt: skip
    prune = "  - " + "\n    ".join(options) + "\n"
    text = recipe.read_text()
    recipe.write_text(text.replace("stages:\n", "stages:\n" + prune, 1))
    out = tmp_path / "chain"
    assert main(["compress", f"recipe={recipe}", f"out={out}", "stages.1.runtimes=[onnxruntime]"]) == 0
    report = json.loads((out / "report.json").read_text())
    pruned, quantized = report["stages"]
    assert (pruned["name"], quantized["name"]) == ("1-prune", "2-quantize")
    assert quantized["params"] == pruned["params"] < report["teacher"]["params"]
    [int8] = [r for r in report["runs"] if r["precision"] == "int8"]
    assert int8["name"] == "2-quantize/onnxruntime/int8" and int8["executed_precision"].startswith("int8")
    assert report["gate"]["final"].startswith("2-quantize")
