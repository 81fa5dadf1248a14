"""Grows a trained RDN into a deeper preset that computes exactly the same function, to fine-tune from.

    .venv/bin/python benchmarks/grow_rdn.py [--checkpoint edgesr/weights/rdn-mr-x2] [--to rdn_medium]
        [--out runs/rdn_medium-x2-grown/ckpt]
    .venv/bin/edgesr train model=rdn_medium init=runs/rdn_medium-x2-grown/ckpt ...

The experiment of benchmarks/RESULTS.md's issue-13 section "A deeper rdn-mr-x2": does depth help the
x2 teacher on scans from other scanners? Training the deeper network from scratch on 2 cores would
take hours to catch up with the shipped one; grown, it starts where the shipped one is. The new residual dense
blocks go after the old ones with a zero local fusion (each is the identity: ``x + 0``), and the global
fusion's columns for their outputs are zero, so the output is unchanged (checked here on a random
image); their convolutions keep the preset's random initialisation, so the gradient reaches them as
soon as the fusion weights move. Growth and features/growth-rate must match (only depth changes).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from edgesr.models import create_model
from edgesr.models._probe import receptive_radius
from edgesr.models.rdn import RDN
from edgesr.train.checkpoint import load_model, read_spec, save_checkpoint


def grow(small: RDN, deeper: RDN) -> None:
    """Copies ``small`` into ``deeper`` (in place) so that both compute the same function."""
    if len(deeper.blocks) < len(small.blocks):
        raise ValueError(f"cannot grow {len(small.blocks)} blocks into {len(deeper.blocks)}")
    weights = deeper.state_dict()
    old_blocks, features = len(small.blocks), small.shallow2.out_channels
    for key, value in small.state_dict().items():
        if weights[key].shape == value.shape:
            weights[key] = value.clone()
        elif key == "global_fusion.0.weight":  # [G0, D*G0, 1, 1]: the old blocks' columns, the rest zero
            weights[key] = torch.zeros_like(weights[key])
            weights[key][:, : old_blocks * features] = value
        else:
            raise ValueError(f"{key}: {tuple(value.shape)} does not fit {tuple(weights[key].shape)}")
    for index in range(old_blocks, len(deeper.blocks)):
        weights[f"blocks.{index}.fusion.weight"].zero_()
        weights[f"blocks.{index}.fusion.bias"].zero_()
    deeper.load_state_dict(weights)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="edgesr/weights/rdn-mr-x2")
    parser.add_argument("--to", default="rdn_medium", help="a deeper RDN preset of the same widths")
    parser.add_argument("--out", default="runs/rdn_medium-x2-grown/ckpt")
    args = parser.parse_args()

    small, meta = load_model(args.checkpoint)
    if not isinstance(small, RDN):
        raise SystemExit(f"{args.checkpoint}: not an RDN ({meta['model']})")
    options = meta["model_options"]
    torch.manual_seed(0)
    deeper = create_model(args.to, **options)
    if not isinstance(deeper, RDN):
        raise SystemExit(f"{args.to}: not an RDN preset")
    grow(small, deeper)

    small.eval()
    deeper.eval()
    with torch.no_grad():  # an odd-sized random image: the two must agree everywhere
        lr = torch.rand(1, small.in_channels, 33, 29)
        base = torch.nn.functional.interpolate(lr, scale_factor=small.scale)
        difference = (small(lr, base) - deeper(lr, base)).abs().max().item()
    print(f"largest difference between {meta['model']} and the grown {args.to}: {difference:.3g}")
    if difference > 1e-5:
        raise SystemExit("the grown network computes something else")

    spec = read_spec(meta, args.checkpoint)
    if spec.sr is not None:  # the deeper network sees further: tiling needs its own halo
        spec = dataclasses.replace(
            spec, sr=dataclasses.replace(spec.sr, receptive_radius=receptive_radius(deeper, small.scale))
        )
    command = f"python benchmarks/grow_rdn.py --checkpoint {args.checkpoint} --to {args.to} --out {args.out}"
    save_checkpoint(
        Path(args.out),
        deeper,
        model_name=args.to,
        model_options=options,
        step=0,
        config={"command": command},
        spec=spec,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
