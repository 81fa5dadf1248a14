"""The MRD path measured: a real brain slice sent as a Siemens scanner sends it, through `edgesr serve mrd`.

    .venv/bin/python benchmarks/mrd_server.py [--model modl-r4] [--slice 90] [--root DIR]

A Colin27 T1 slice of the prepared data set (its fingerprint is printed) becomes an MRD stream by
`edgesr.data.mrd.simulate_acquisitions`: 8 coils with correlated receiver noise and a noise scan, 2x
readout oversampling, 24 calibration lines and every 4th line. The stream goes through a running
`MrdServer` on the loopback and, written as an ISMRMRD file, through `Enhancer.reconstruct` (what
`edgesr enhance` runs). Printed: the image difference between the two paths, the seconds per slice,
and PSNR (magnitude, scale fitted) of the model and of the zero-filled coil combination against the
fully sampled, prewhitened coil combination of the same stream (prewhitening shades the image by the
whitened coil sensitivities, so the unshaded slice is not the right reference).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss(kspace: np.ndarray) -> np.ndarray:
    coils = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    return np.sqrt((np.abs(coils) ** 2).sum(0))


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    scale = float((image * reference).sum() / (image * image).sum())
    error = np.mean((scale * image - reference) ** 2)
    return float(10 * np.log10(reference.max() ** 2 / error))


def main() -> None:
    import ismrmrd

    import edgesr
    from edgesr.data.dataset import open_or_prepare
    from edgesr.data.mrd import simulate_acquisitions, write_mrd_file
    from edgesr.integrate.mrd_server import MrdServer, MrdSettings, stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="modl-r4")
    parser.add_argument("--slice", type=int, default=90)
    parser.add_argument("--root", default="")
    args = parser.parse_args()

    dataset = open_or_prepare(args.root)
    volume = dataset.load_volume("colin27-t1")
    image = volume[:, :, args.slice].astype(np.float32)
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2] / float(image.max()) * 1000
    print(f"data set fingerprint {dataset.fingerprint['id']}")
    header, acquisitions = simulate_acquisitions(image, coils=8, acceleration=4, acs=24, oversampling=2)
    full_header, full = simulate_acquisitions(
        image, coils=8, acceleration=1, acs=0, oversampling=2, noise_level=0.0
    )
    noise = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]

    enhancer = edgesr.Enhancer.from_shipped(args.model, device="cpu")
    server = MrdServer({args.model: enhancer}, MrdSettings(port=0))
    server.start()
    try:
        started = time.perf_counter()
        images, texts = stream(
            "127.0.0.1", server.port, config=args.model, header=header, acquisitions=acquisitions
        )
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    if texts or len(images) != 1:
        raise SystemExit(f"the server answered {texts} with {len(images)} image(s)")
    served = images[0].data[0, 0].T

    with tempfile.TemporaryDirectory() as folder:
        undersampled = write_mrd_file(Path(folder) / "raw.h5", header, acquisitions)
        from_file = enhancer.reconstruct(undersampled)
        reference_file = write_mrd_file(Path(folder) / "full.h5", full_header, noise + full[1:])
        reference = _rss(edgesr.load_kspace(reference_file).kspace[0])
        raw = edgesr.load_kspace(undersampled)
    zero_filled = _rss(raw.kspace[0] * raw.mask)
    difference = float(np.abs(served - from_file.image[0]).max() / from_file.image.max())
    print(f"{args.model}: {image.shape[0]}x{image.shape[1]} slice, 8 coils, 2x readout, R=4 + 24 ACS lines")
    print(f"  server vs ISMRMRD file: max difference {difference:.2e} of the image maximum")
    print(f"  server: {seconds:.2f} s for the session (one slice, loopback)")
    print(f"  PSNR vs fully sampled (prewhitened): model {_psnr(served, reference):.2f} dB, "
          f"zero-filled {_psnr(zero_filled, reference):.2f} dB")  # fmt: skip


if __name__ == "__main__":
    main()
