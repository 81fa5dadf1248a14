"""``edgesr serve dicom`` and ``edgesr serve mrd``: the DICOM node (:mod:`edgesr.integrate.dicom_node`) and
the MRD streaming server (:mod:`edgesr.integrate.mrd_server`) as long-running services."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rich.logging import RichHandler

from edgesr.config import check_choice, check_exactly_one, check_range, opt
from edgesr.errors import ConfigError
from edgesr.spec import UNITS
from edgesr.teachers import list_shipped


@dataclass(frozen=True)
class ServeDicomConfig:
    root: str = opt("", "storage folder: received, claimed, derived and forwarded series live here")
    model: str = opt("", "a shipped SR model (see `edgesr serve dicom --help`), or use checkpoint=")
    checkpoint: str = opt("", "a checkpoint folder written by `edgesr train` or `edgesr compress`")
    artifact: str = opt("", "an artifact folder written by `edgesr export`")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(11112, "TCP port (0: any free port, printed at start)")
    ae_title: str = opt("EDGESR", "this node's AE title")
    allowed: tuple[str, ...] = opt((), "calling AE titles allowed to connect (empty: any)")
    destination: str = opt("", "HOST:PORT:AE_TITLE to C-STORE derived series to (empty: keep them)")
    quiet: float = opt(10.0, "seconds without a new instance (and no open association) that end a series")
    stall: float = opt(
        120.0,
        "seconds of quiet that end a series even while its association stays open; "
        "how long a series cut by an aborted association waits to be sent again",
    )
    max_associations: int = opt(10, "concurrent associations; more are rejected")
    max_pending: int = opt(20000, "stored instances not yet processed; more are refused (out of resources)")
    retry_max: float = opt(300.0, "longest wait between forwarding attempts, seconds")
    series_number: int | None = opt(None, "derived SeriesNumber (default: the source's + 1000)")
    units: str = opt("auto", "CT: hu, raw or auto (DICOM's modality LUT says)")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    precision: str = opt(
        "fp32",
        "model=/checkpoint=: fp32, or bf16 (torch autocast: convolutions in BF16, data consistency in "
        "FP32; faster on CPUs with BF16 units and on GPUs); an artifact runs at its own",
    )

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("root= is required (the storage folder)")
        check_exactly_one(
            {"model": self.model, "checkpoint": self.checkpoint, "artifact": self.artifact},
            hints={"model": f"shipped: {', '.join(list_shipped()) or 'none'}"},
        )
        check_range("port", self.port, low=0, high=65535)
        check_choice("units", self.units, UNITS)
        check_choice("precision", self.precision, ("fp32", "bf16"))
        if self.artifact and self.precision != "fp32":
            raise ConfigError(
                f"precision={self.precision} is for model= and checkpoint=; an artifact runs at the "
                "precision it was exported and verified for"
            )


def run_serve_dicom(cfg: ServeDicomConfig) -> int:
    from edgesr.integrate.api import Enhancer
    from edgesr.integrate.dicom_node import Destination, DicomNode, NodeSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    settings = NodeSettings(
        root=Path(cfg.root),
        ae_title=cfg.ae_title,
        host=cfg.host,
        port=cfg.port,
        allowed=tuple(cfg.allowed),
        destination=Destination.parse(cfg.destination) if cfg.destination else None,
        quiet_seconds=cfg.quiet,
        stall_seconds=max(cfg.stall, cfg.quiet),
        max_associations=cfg.max_associations,
        max_pending=cfg.max_pending,
        retry_max_seconds=cfg.retry_max,
        series_number=cfg.series_number,
    )
    enhancer = Enhancer.from_source(
        model=cfg.model,
        checkpoint=cfg.checkpoint,
        artifact=cfg.artifact,
        device=cfg.device,
        precision=cfg.precision,
    )
    node = DicomNode(enhancer, settings, units=cfg.units)
    node.serve_forever()
    return 0


@dataclass(frozen=True)
class ServeMrdConfig:
    configs: tuple[str, ...] = opt(
        ("modl-r4", "deepcomplex-r4"),
        "the recons clients may name (the allow-list): shipped recon models, or NAME:FOLDER for a "
        "checkpoint or an exported artifact folder",
    )
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(9002, "TCP port (9002: the MRD servers' usual; 0: any free port)")
    max_sessions: int = opt(4, "concurrent sessions; more are answered ERROR and closed")
    image_dtype: str = opt("float32", "float32, or uint16 scaled to 0..4095 (the scale in the image meta)")
    timeout: float = opt(300.0, "seconds of silence after which a client is dropped")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    precision: str = opt(
        "fp32",
        "shipped models and checkpoints: fp32, or bf16 (torch autocast: convolutions in BF16, data "
        "consistency in FP32; faster on CPUs with BF16 units); exported artifacts run at their own",
    )

    def __post_init__(self) -> None:
        if not self.configs:
            raise ConfigError("configs= names at least one recon")
        check_range("port", self.port, low=0, high=65535)
        check_range("max_sessions", self.max_sessions, low=1)
        check_choice("image_dtype", self.image_dtype, ("float32", "uint16"))
        check_choice("precision", self.precision, ("fp32", "bf16"))


def run_serve_mrd(cfg: ServeMrdConfig) -> int:
    from edgesr.integrate.api import Enhancer
    from edgesr.integrate.mrd_server import MrdServer, MrdSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    enhancers: dict[str, Enhancer] = {}
    for entry in cfg.configs:
        name, _, folder = entry.partition(":")
        # NAME: a shipped model; NAME:FOLDER an exported artifact (it has a manifest) or a checkpoint.
        kind = (
            "model"
            if not folder
            else "artifact"
            if (Path(folder) / "manifest.json").is_file()
            else "checkpoint"
        )
        precision = "fp32" if kind == "artifact" else cfg.precision  # an artifact runs at its own
        enhancers[name] = Enhancer.from_source(
            **{kind: folder or name}, device=cfg.device, precision=precision
        )
    settings = MrdSettings(
        host=cfg.host,
        port=cfg.port,
        max_sessions=cfg.max_sessions,
        image_dtype=cfg.image_dtype,
        timeout_seconds=cfg.timeout,
    )
    MrdServer(enhancers, settings).serve_forever()
    return 0
