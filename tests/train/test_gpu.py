"""Training on a CUDA device: bf16 autocast, worker-built batches, checkpoints that load on a CPU.

Skipped where torch sees no CUDA device (CI, the 2-core development machine).
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgesr.config import parse_overrides
from edgesr.train.checkpoint import load_model
from edgesr.train.config import TrainConfig
from edgesr.train.teacher import train
from tests.models.test_models import _recon_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; torch sees none"),
]

SETTINGS = {
    "rdn_tiny": ["data.patch=8"],
    "modl_tiny": ["data.crop=24", "data.coils=4"],
    "deepcomplex_tiny": ["data.crop=24", "data.coils=4", "loss.coil_weight=0.5"],
}


@pytest.mark.parametrize("model", list(SETTINGS))
def test_amp_training_on_cuda_gives_a_checkpoint_that_runs_on_cpu(tiny_dataset, tmp_path, model):
    cfg = parse_overrides(
        TrainConfig,
        [
            f"model={model}", f"out={tmp_path / 'run'}", f"data.root={tiny_dataset.path.parent}",
            "data.batch_size=2", "data.val_slices=1", "data.workers=2", "optim.steps=3", "eval_every=3",
            "device=cuda", "amp=true", *SETTINGS[model],
        ],
    )  # fmt: skip
    result = train(cfg)
    assert result["step"] == 3 and result["val_psnr"] > 10
    cpu_model, _ = load_model(tmp_path / "run" / "last")
    gpu_model = copy.deepcopy(cpu_model).cuda()
    if model == "rdn_tiny":
        lr = torch.rand(1, 1, 9, 7)
        inputs: tuple[torch.Tensor, ...] = (lr, torch.nn.functional.interpolate(lr, scale_factor=2))
    else:
        inputs = _recon_inputs(4, batch=1)
    with torch.no_grad():
        on_cpu = cpu_model.eval()(*inputs)
        on_gpu = gpu_model.eval()(*(t.cuda() for t in inputs)).cpu()
    # cuDNN convolutions may use TF32 (10-bit mantissa): agreement to a relative 1e-2, not bit-exact.
    assert float((on_gpu - on_cpu).norm() / on_cpu.norm()) < 1e-2
