"""Packaging ``edgesr serve mrd`` for Siemens OpenRecon: a Docker build context with the app's label.

OpenRecon runs a reconstruction as a Docker image that serves MRD on port 9002; the scanner reads what
the app is from the image label ``com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0``,
whose value is the base64 of a JSON document (``general``: name, version, vendor, regulatory
information; ``reconstruction``: the MRD protocol, the port, what it takes in (``injector``: raw data)
and gives back (``emitter``: images), the hardware it needs; ``parameters``: the console's UI, sent to
the server as JSON in CONFIG_TEXT). edgesr reads ``parameters.config`` from that JSON to choose the
recon (:func:`edgesr.integrate.mrd_server.config_name`).

    python -m edgesr.integrate.openrecon OUT_DIR [--configs modl-r4,deepcomplex-r4]

writes ``OUT_DIR/Dockerfile``, ``OUT_DIR/openrecon.json`` and ``OUT_DIR/wheels/README`` (what to put
there: the edgesr wheel and its dependencies, ``pip wheel . torch==2.13.0 -w OUT_DIR/wheels``, so that
the image builds offline). What edgesr verifies: the JSON's structure and the label's round trip, and
that the image's command starts the server this package tests. What it cannot verify here: building
the image (no Docker on the development machine) and installing it on a scanner (Siemens' OpenRecon
tooling and the scanner's acceptance checks are needed for that).
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

from edgesr import __version__
from edgesr._io import write_text_atomic

LABEL = "com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0"
PORT = 9002


def app_metadata(configs: list[str], *, version: str = __version__) -> dict[str, Any]:
    """The OpenRecon app description: raw data in (injector ``raw``), images out, one UI choice of recon."""
    if not configs:
        raise ValueError("configs must name at least one recon")
    return {
        "general": {
            "name": {"en": "edgesr reconstruction"},
            "version": version,
            "vendor": "edgesr",
            "information": {
                "en": "Deep-learning reconstruction of undersampled multi-coil Cartesian k-space "
                "(unrolled networks with data consistency); research use only."
            },
            "id": "edgesr",
            "regulatory_information": {
                "device_trade_name": "edgesr",
                "production_identifier": version,
                "manufacturer_address": "",
                "made_in": "",
                "manufacture_date": "",
                "material_number": f"edgesr_{version}",
                "gtin": "",
                "udi": "",
                "safety_advices": "Research use only; not a medical device.",
                "special_operating_instructions": "",
                "additional_relevant_information": "",
            },
        },
        "reconstruction": {
            "transfer_protocol": {"protocol": "ISMRMRD", "version": "1.4.1"},
            "port": PORT,
            "emitter": "image",
            "injector": "raw",
            "can_process_adjustment_data": False,
            "can_use_gpu": False,
            "min_count_required_gpus": 0,
            "min_required_gpu_memory": 0,
            "min_required_memory": 4096,
            "min_count_required_cpu_cores": 2,
            "content_qualification_type": "RESEARCH",
        },
        "parameters": [
            {
                "id": "config",
                "label": {"en": "Reconstruction"},
                "type": "choice",
                "values": [{"id": name, "name": {"en": name}} for name in configs],
                "default": configs[0],
                "information": {"en": "The edgesr model that reconstructs the raw data"},
            }
        ],
    }


def label_value(metadata: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(metadata, sort_keys=True).encode("utf-8")).decode("ascii")


def dockerfile(metadata: dict[str, Any], configs: list[str]) -> str:
    command = json.dumps(
        ["edgesr", "serve", "mrd", "host=0.0.0.0", f"port={PORT}", f"configs=[{','.join(configs)}]"]
    )
    return f"""# edgesr as a Siemens OpenRecon app: `edgesr serve mrd` on port {PORT} (written by
# `python -m edgesr.integrate.openrecon`). Build offline from the wheels folder:
#   pip wheel /path/to/edgesr torch==2.13.0 -w wheels
#   docker build -t edgesr-openrecon:{metadata["general"]["version"]} .
FROM python:3.11-slim
COPY wheels/ /wheels/
RUN pip install --no-index --find-links=/wheels torch==2.13.0 edgesr && rm -rf /wheels
EXPOSE {PORT}
LABEL "{LABEL}"="{label_value(metadata)}"
CMD {command}
"""


def write_context(folder: str | Path, configs: list[str]) -> list[Path]:
    """Writes the Docker build context (see the module docstring); returns the files written."""
    folder = Path(folder)
    metadata = app_metadata(configs)
    files = {
        folder / "Dockerfile": dockerfile(metadata, configs),
        folder / "openrecon.json": json.dumps(metadata, indent=2, sort_keys=True) + "\n",
        folder / "wheels" / "README": "Put the edgesr wheel and its dependencies here:\n"
        "  pip wheel /path/to/edgesr torch==2.13.0 -w wheels\n",
    }
    for path, text in files.items():
        write_text_atomic(path, text)
    return list(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a Docker build context for an OpenRecon app")
    parser.add_argument("out")
    parser.add_argument("--configs", default="modl-r4,deepcomplex-r4")
    args = parser.parse_args(argv)
    for path in write_context(args.out, [c for c in args.configs.split(",") if c]):
        print(path)


if __name__ == "__main__":
    main()
