from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgesr.config import parse_overrides
from edgesr.errors import ConfigError, DataError
from edgesr.train.checkpoint import load_model, read_metadata
from edgesr.train.config import TrainConfig
from edgesr.train.optim import warmup_cosine
from edgesr.train.teacher import train


def _sr_config(dataset, out: Path, *extra: str) -> TrainConfig:
    return parse_overrides(
        TrainConfig,
        [
            "model=rdn_tiny", f"out={out}", f"data.root={dataset.path.parent}", "data.patch=8",
            "data.batch_size=4", "data.val_slices=2", "optim.steps=6", "optim.warmup=2", "eval_every=3",
            "log_every=1", "device=cpu", *extra,
        ],
    )  # fmt: skip


def _recon_args(dataset, model: str, *extra: str) -> list[str]:
    """A tiny recon run on the CPU: 24-pixel crops, 4 coils, batches of 2, one val slice."""
    return [
        f"model={model}", f"data.root={dataset.path.parent}", "data.crop=24", "data.coils=4",
        "data.batch_size=2", "data.val_slices=1", "device=cpu", *extra,
    ]  # fmt: skip


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.25)
    assert warmup_cosine(4, warmup=4, total=20, min_ratio=0.1) == pytest.approx(1.0)
    assert warmup_cosine(20, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.1)


def test_resumed_run_matches_an_uninterrupted_one(tiny_dataset, tmp_path):
    full = train(_sr_config(tiny_dataset, tmp_path / "full"))
    assert full["step"] == 6
    stopped = train(_sr_config(tiny_dataset, tmp_path / "split"), stop_at=4)
    assert stopped["step"] == 4 and read_metadata(tmp_path / "split" / "last")["step"] == 4
    resumed = train(_sr_config(tiny_dataset, tmp_path / "split", "resume=true"))
    assert resumed["step"] == 6
    machine = read_metadata(tmp_path / "split" / "last")["machine"]
    assert machine["device"].startswith("CPU") and machine["processes"] == 1
    a, b = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "split" / "last")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    sa = load_file(str(tmp_path / "full" / "last" / "state.safetensors"))
    sb = load_file(str(tmp_path / "split" / "last" / "state.safetensors"))
    for key in sa:
        if key.startswith("optim."):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    assert resumed["val_psnr"] == full["val_psnr"]
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_reloads_and_run_folder_is_protected(tiny_dataset, tmp_path):
    train(_sr_config(tiny_dataset, tmp_path / "run", "optim.steps=3"))
    model, meta = load_model(tmp_path / "run" / "best")
    assert meta["model"] == "rdn_tiny" and meta["model_options"]["scale"] == 2
    assert (tmp_path / "run" / "config.resolved.yaml").is_file()
    assert "command" in meta["config"]
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_sr_config(tiny_dataset, tmp_path / "run", "optim.steps=3"))
    with pytest.raises(ConfigError, match="no run to resume"):
        train(_sr_config(tiny_dataset, tmp_path / "other", "resume=true"))


def test_resume_refuses_changed_settings_and_keeps_the_run(tiny_dataset, tmp_path):
    train(_sr_config(tiny_dataset, tmp_path / "run"), stop_at=3)
    before = _weights(tmp_path / "run" / "last")
    with pytest.raises(ConfigError, match=r"optim\.steps: 6 in the run, 9 now.*init="):
        train(_sr_config(tiny_dataset, tmp_path / "run", "resume=true", "optim.steps=9"))
    after = _weights(tmp_path / "run" / "last")
    for key in before:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)
    # Where it runs and how often it reports may change.
    resumed = train(_sr_config(tiny_dataset, tmp_path / "run", "resume=true", "log_every=2"))
    assert resumed["step"] == 6


def test_resume_accepts_a_run_recorded_before_an_option_existed(tiny_dataset, tmp_path):
    """Options added to edgesr after a run started count as their defaults, so old runs still resume."""
    train(_sr_config(tiny_dataset, tmp_path / "run"), stop_at=3)
    meta_path = tmp_path / "run" / "last" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["loss"]["pixel_weight"]
    meta_path.write_text(json.dumps(meta))
    assert train(_sr_config(tiny_dataset, tmp_path / "run", "resume=true"))["step"] == 6
    with pytest.raises(ConfigError, match="loss.pixel_weight: 1.0 in the run, 0.5 now"):
        train(_sr_config(tiny_dataset, tmp_path / "run", "resume=true", "loss.pixel_weight=0.5"))


def test_a_run_records_its_training_slices_and_resumes_only_on_them(tiny_dataset, tmp_path):
    """The checkpoint names the train/val slices it was trained on (for its card); a data set
    re-prepared with other training slices is refused on resume, naming what changed."""
    train(_sr_config(tiny_dataset, tmp_path / "run"), stop_at=3)
    recorded = read_metadata(tmp_path / "run" / "last")["config"]["training_data"]
    assert recorded["modality"] == "MR" and [s["name"] for s in recorded["sources"]] == ["fake-mr"]
    assert recorded["sources"][0]["slices"]["train"] > 0
    manifest_path = tiny_dataset.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["volumes"][0]["splits"]["train"] = manifest["volumes"][0]["splits"]["train"][2:]
    manifest_path.write_text(json.dumps(manifest))
    before = _weights(tmp_path / "run" / "last")
    with pytest.raises(DataError, match=r"train/val slices differ.*fake-mr: other splits.*init="):
        train(_sr_config(tiny_dataset, tmp_path / "run", "resume=true"))
    for key, value in _weights(tmp_path / "run" / "last").items():
        torch.testing.assert_close(before[key], value, rtol=0, atol=0)


def test_pixel_weight_zero_needs_another_content_loss(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="loss.pixel_weight=0 needs another content loss"):
        _sr_config(tiny_dataset, tmp_path / "run", "loss.pixel_weight=0")


@pytest.mark.parametrize("gan", ["standard", "wgan-gp"])
def test_srgan_adversarial_training_runs(tiny_dataset, tmp_path, gan):
    cfg = _sr_config(
        tiny_dataset, tmp_path / gan, "model=srgan_tiny", "data.scale=4", "data.patch=4",
        "loss.adversarial_weight=1e-3", f"loss.gan={gan}", "loss.perceptual_weight=0.1",
        "loss.feature_steps=2", "optim.steps=2", "eval_every=2",
    )  # fmt: skip
    result = train(cfg)
    assert result["step"] == 2 and (tmp_path / gan / "discriminator" / "model.safetensors").is_file()
    record = json.loads((tmp_path / gan / "log.jsonl").read_text().splitlines()[0])
    assert {"adversarial", "discriminator", "perceptual"} <= set(record)
    assert list((tiny_dataset.path / "features").glob("*.safetensors"))


@pytest.mark.parametrize(
    ("model", "extra"),
    [("modl_tiny", []), ("deepcomplex_tiny", []), ("deepcomplex_tiny", ["loss.coil_weight=0.5"])],
)
def test_recon_training_runs(tiny_dataset, tmp_path, model, extra):
    out = tmp_path / model
    args = _recon_args(tiny_dataset, model, f"out={out}", "optim.steps=2", "eval_every=2", "log_every=1")
    result = train(parse_overrides(TrainConfig, [*args, "loss.ssim_weight=0.1", *extra]))
    assert result["step"] == 2 and result["val_psnr"] > 10
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert ("coil" in record) == bool(extra)


def test_batch_workers_change_the_speed_not_the_result(tiny_dataset, tmp_path):
    """Batches are a pure function of (seed, step): building them in worker processes is invisible."""
    common = _recon_args(tiny_dataset, "deepcomplex_tiny", "optim.steps=3", "eval_every=3")
    train(parse_overrides(TrainConfig, [*common, f"out={tmp_path / 'inline'}"]))
    train(parse_overrides(TrainConfig, [*common, f"out={tmp_path / 'workers'}", "data.workers=2"]))
    a, b = _weights(tmp_path / "inline" / "last"), _weights(tmp_path / "workers" / "last")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_coil_weight_is_for_deepcomplex_only():
    with pytest.raises(ConfigError, match="loss.coil_weight applies to DeepcomplexMRI models only"):
        parse_overrides(TrainConfig, ["model=modl_tiny", "loss.coil_weight=1"])


def test_modl_fine_tunes_at_more_unrolls_from_a_checkpoint(tiny_dataset, tmp_path):
    """MoDL shares its denoiser across unrolls: a K=2 checkpoint starts a K=3 run (the paper's K=1 -> 10)."""
    common = _recon_args(tiny_dataset, "modl_tiny", "optim.steps=1", "eval_every=1")
    train(parse_overrides(TrainConfig, [*common, f"out={tmp_path / 'k2'}"]))
    init = f"init={tmp_path / 'k2' / 'last'}"
    cfg = parse_overrides(TrainConfig, [*common, f"out={tmp_path / 'k3'}", "unrolls=3", init, "optim.lr=0"])
    assert cfg.model_options() == {"iterations": 3}
    train(cfg)  # a zero learning rate keeps the weights it started from (batch-norm statistics move)
    model, meta = load_model(tmp_path / "k3" / "last")
    assert meta["model_options"] == {"iterations": 3} and model.iterations == 3
    initial = dict(load_model(tmp_path / "k2" / "last")[0].named_parameters())
    for key, value in model.named_parameters():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unrolls= applies to MoDL models only"):
        parse_overrides(TrainConfig, ["model=rdn_tiny", "unrolls=3"])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_dataset, tmp_path):
    common = [
        "model=rdn_tiny", f"data.root={tiny_dataset.path.parent}", "data.patch=8", "data.batch_size=4",
        "data.val_slices=1", "optim.steps=3", "eval_every=3", "device=cpu", "threads=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "edgesr", "train", *common, f"out={tmp_path / 'single'}"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    ddp = subprocess.run(
        [*launch, "-m", "edgesr", "train", *common, f"out={tmp_path / 'ddp'}"],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _weights(tmp_path / "single" / "last"), _weights(tmp_path / "ddp" / "last")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
