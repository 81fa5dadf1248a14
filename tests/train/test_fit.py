"""``fit`` driven directly, as the compression stages will: own objective, exact resumption, aux modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from edgesr.evaluate import validate
from edgesr.models import create_model
from edgesr.spec import sr_spec
from edgesr.train.checkpoint import load_for_inference, read_metadata
from edgesr.train.config import OptimSection
from edgesr.train.data import SRBatch, SRBatches
from edgesr.train.distributed import DistEnv
from edgesr.train.fit import CheckpointInfo, FitSettings, Objective, fit
from edgesr.train.optim import adamw_warmup_cosine

CPU = DistEnv(rank=0, world_size=1, device=torch.device("cpu"))
STEPS = 6
OPTIONS = {"scale": 2, "upsampler": "zero-fill"}
# Any valid contract will do here: the test checks that checkpoints carry the one they are given.
SPEC = sr_spec(modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill", receptive_radius=8)


def _students_teacher() -> nn.Module:
    """A frozen rdn_tiny that differs from its own global skip (an untrained RDN's last conv is zero)."""
    teacher = create_model("rdn_tiny", **OPTIONS)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return teacher.eval().requires_grad_(False)


def _distillation(teacher: nn.Module) -> Objective:
    """L1 to a frozen teacher's output on the same input: the shape of the distillation stage's loss."""

    def objective(student: nn.Module, batch: SRBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        # Input noise from the global torch RNG: only a restored RNG state repeats it on resumption.
        lr = batch.lr + 0.01 * torch.randn_like(batch.lr)
        with torch.no_grad():
            target = teacher(lr, batch.base)
        loss = F.l1_loss(student(lr, batch.base), target)
        return loss, {"distill": loss.item()}

    return objective


class _CriticObjective:
    """A GAN-like objective: it steps its own critic, with its own optimiser, before the student's loss."""

    def __init__(self) -> None:
        self.critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=1e-2)

    def __call__(self, model: nn.Module, batch: SRBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch.lr, batch.base)
        critic_loss = (self.critic(batch.hr) - 1).pow(2).mean() + self.critic(pred.detach()).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.optimizer.step()
        adversarial = (self.critic(pred) - 1).pow(2).mean()
        return F.l1_loss(pred, batch.hr) + 0.1 * adversarial, {"critic": critic_loss.item()}


def _fit(dataset: Any, out: Path, student: nn.Module, objective: Objective, **options: Any) -> dict[str, Any]:
    optimizer, scheduler = adamw_warmup_cosine(student.parameters(), OptimSection(steps=STEPS, warmup=2))
    batches = SRBatches(
        dataset, modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill", patch=8,
        batch_size=4, seed=3,
    )  # fmt: skip
    return fit(
        student,
        objective,
        batches,
        optimizer=optimizer,
        scheduler=scheduler,
        settings=FitSettings(steps=STEPS, eval_every=3, log_every=1, clip=1.0, description="distil rdn_tiny"),
        out=out,
        checkpoint=CheckpointInfo(
            model_name="rdn_tiny", model_options=OPTIONS, spec=SPEC, config={"stage": "distil"}
        ),
        env=CPU,
        **options,
    )


def _assert_same_state(a: Path, b: Path) -> None:
    """Weights, optimiser tensors and the RNG state of two checkpoints are equal bit for bit."""
    for file in ("model.safetensors", "state.safetensors"):
        ta, tb = load_file(str(a / file)), load_file(str(b / file))
        assert ta.keys() == tb.keys()
        for key in ta:
            torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=f"{a.name}/{file}: {key}")


def test_a_resumed_distillation_run_matches_an_uninterrupted_one(tiny_dataset, tmp_path):
    def run(out: Path, **options: Any) -> dict[str, Any]:
        torch.manual_seed(0)
        teacher, student = _students_teacher(), create_model("rdn_tiny", **OPTIONS)

        def validator(model: nn.Module) -> dict[str, float]:
            return validate(model, tiny_dataset, SPEC, device=CPU.device, max_slices=1)

        return _fit(tiny_dataset, out, student, _distillation(teacher), validate=validator, **options)

    full = run(tmp_path / "full")
    assert run(tmp_path / "split", stop_at=4)["step"] == 4
    resumed = run(tmp_path / "split", resume=True)
    assert full["step"] == resumed["step"] == STEPS
    assert resumed["val_psnr"] == full["val_psnr"] and resumed["best_val_psnr"] == full["best_val_psnr"]
    _assert_same_state(tmp_path / "full" / "last", tmp_path / "split" / "last")
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "distill" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in log if "val_psnr" in r] == [3, 6]
    # Time counts across the interruption: the resumed part continues the first part's clock.
    seconds = [r["seconds"] for r in log if "distill" in r]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert read_metadata(tmp_path / "split" / "last")["metrics"]["train_seconds"] >= seconds[3]
    # The student learnt something (a test of equality between two runs that stand still proves nothing).
    trained = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    torch.manual_seed(0)
    _students_teacher()
    initial = create_model("rdn_tiny", **OPTIONS).state_dict()
    assert any(not torch.equal(trained[key], initial[key]) for key in trained)
    # Checkpoints carry what the caller described: anything can load and run the student.
    model, spec, meta = load_for_inference(tmp_path / "split" / "best")
    assert spec.describe() == SPEC.describe() and meta["config"] == {"stage": "distil"}
    assert meta["model"] == "rdn_tiny" and meta["machine"]["processes"] == 1


def test_an_objectives_auxiliary_module_is_saved_and_restored(tiny_dataset, tmp_path):
    def run(out: Path, *, restore_critic: bool = True, **options: Any) -> dict[str, Any]:
        torch.manual_seed(0)
        student, objective = create_model("rdn_tiny", **OPTIONS), _CriticObjective()
        extra = {"critic": (objective.critic, objective.optimizer)} if restore_critic else None
        return _fit(tiny_dataset, out, student, objective, extra_state=extra, **options)

    run(tmp_path / "full")
    run(tmp_path / "split", stop_at=4)
    assert read_metadata(tmp_path / "split" / "critic")["step"] == 4
    run(tmp_path / "split", resume=True)
    for folder in ("last", "critic"):
        _assert_same_state(tmp_path / "full" / folder, tmp_path / "split" / folder)
    assert not (tmp_path / "full" / "best").exists()  # no validation: last/ only
    # The same resumption with a fresh critic ends elsewhere, so the equality above has teeth.
    run(tmp_path / "forgetful", stop_at=4)
    run(tmp_path / "forgetful", resume=True, restore_critic=False)
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "forgetful" / "last" / "model.safetensors"))
    assert any(not torch.equal(a[key], b[key]) for key in a)


def test_fit_settings_are_keyword_only_and_checked():
    with pytest.raises(TypeError):
        FitSettings(6, 3, 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="eval_every must be at least 1"):
        FitSettings(steps=6, eval_every=0, log_every=1)
