"""Property-based tests of what arrives over the network (issue 14): mutated MRD streams and XML headers
to the MRD server; DICOM instances with broken or hostile tags, and associations that drop
mid-transfer, to the DICOM node.

The property: every example ends in a refusal (an ``ERROR:`` text, a C-STORE failure status, a closed
connection) or a correct result; the server then still serves; nothing acknowledged is lost and nothing
is written outside the storage root. Profiles and the collect mode (``EDGESR_FUZZ_LOG``, counted by
``python -m tests.fuzz.report``) are those of ``conftest.py``.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.control import note
from ismrmrd.serialization import ProtocolDeserializer
from pynetdicom import AE, StoragePresentationContexts

import edgesr
from edgesr.data.mrd import simulate_acquisitions
from edgesr.integrate.dicom_node import STATES, DicomNode, NodeSettings
from edgesr.integrate.mrd_server import ACQUISITION, CLOSE, HEADER, MrdServer, MrdSettings
from edgesr.models import create_model
from tests.conftest import save_model, write_dicom_slice
from tests.fuzz.conftest import FUZZ, Case, byte_mutation, record

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the hostile values


def _phantom(height: int = 16, width: int = 12) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return (((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1) * 300.0).astype(np.float32)


# --- MRD --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mrd_server(tmp_path_factory):
    torch.manual_seed(0)
    checkpoint = save_model(
        tmp_path_factory.mktemp("wire") / "modl", create_model("modl_tiny"), "modl_tiny", {}
    )
    enhancer = edgesr.Enhancer.from_checkpoint(checkpoint, device="cpu")
    settings = MrdSettings(port=0, max_text_bytes=1 << 16, max_message_bytes=1 << 20, timeout_seconds=5)
    server = MrdServer({"recon": enhancer}, settings)
    server.start()
    yield server
    server.stop()


def _message(message_id: int, body: bytes = b"") -> bytes:
    return struct.pack("<H", message_id) + body


def _text(message_id: int, text: bytes) -> bytes:
    return _message(message_id, struct.pack("<I", len(text)) + text)


def _acquisition(acq: Any) -> bytes:
    chunks: list[bytes] = []
    acq.serialize_into(chunks.append)
    return _message(ACQUISITION, b"".join(chunks))


def _converse(port: int, payload: bytes, timeout: float = 30.0) -> tuple[list[Any], bool]:
    """Sends the bytes, half-closes, reads until the server closes: (answers, whether it answered in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused and closed before reading everything
        answers: list[Any] = []
        try:
            for item in ProtocolDeserializer(sock.makefile("rb")).deserialize():
                answers.append(item)
        except TimeoutError:
            return answers, False
        except (EOFError, OSError, ValueError):
            pass
    return answers, True


MRD_MUTATIONS = [
    "none",
    "bytes",
    "unknown message id",
    "huge length",
    "garbage XML",
    "XML without encoding",
    "acquisition before header",
    "coils change mid-stream",
    "line outside the matrix",
    "NaN sample",
    "cut mid-message",
    "image sent to the server",
]


@st.composite
def mrd_case(draw: st.DrawFn) -> tuple[Case, bytes, int]:
    """A stream of CONFIG, HEADER, acquisitions and CLOSE, mutated; the images a correct session returns."""
    mutation = draw(st.sampled_from(MRD_MUTATIONS))
    xml, acquisitions = simulate_acquisitions(_phantom(), coils=2, acs=6, seed=draw(st.integers(0, 3)))
    config = _message(1, b"recon".ljust(1024, b"\0"))
    header = _text(HEADER, xml.encode())
    body = [_acquisition(a) for a in acquisitions]
    expected = 1
    if mutation == "unknown message id":
        body.insert(draw(st.integers(0, len(body))), _message(draw(st.integers(6, 1007))))
    elif mutation == "huge length":
        header = _message(HEADER, struct.pack("<I", draw(st.integers(1 << 17, 2**32 - 1))))
    elif mutation == "garbage XML":
        header = _text(HEADER, draw(st.binary(max_size=200)))
    elif mutation == "XML without encoding":
        header = _text(HEADER, b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"></ismrmrdHeader>')
    elif mutation == "acquisition before header":
        config, header = b"", b""
    elif mutation == "coils change mid-stream":
        index = draw(st.integers(2, len(acquisitions) - 1))
        odd = simulate_acquisitions(_phantom(), coils=3, acs=6)[1][index]
        body[index] = _acquisition(odd)
    elif mutation == "line outside the matrix":
        index = draw(st.integers(1, len(acquisitions) - 1))
        acquisitions[index].idx.kspace_encode_step_1 = draw(st.integers(12, 60000))
        body[index] = _acquisition(acquisitions[index])
    elif mutation == "NaN sample":
        index = draw(st.integers(1, len(acquisitions) - 1))
        acquisitions[index].data[0, 0] = np.nan
        body[index] = _acquisition(acquisitions[index])
    elif mutation == "image sent to the server":
        body.insert(1, _message(1022, bytes(200)))
    payload = config + header + b"".join(body) + _message(CLOSE)
    if mutation == "cut mid-message":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    if mutation == "bytes":
        what, payload = draw(byte_mutation(payload, header=1100))
        mutation += f": {what}"
    if mutation != "none":
        expected = -1  # any refusal or a correct image
    return Case("mrd-stream", mutation, Path("mrd-stream")), payload, expected


@FUZZ
@given(data=st.data())
def test_mrd_stream(mrd_server, data: st.DataObject) -> None:
    case, payload, expected = data.draw(mrd_case())
    note(case.describe())
    answers, in_time = _converse(mrd_server.port, payload)
    problems = []
    images = [a for a in answers if type(a).__name__ == "Image"]
    errors = [a for a in answers if isinstance(a, str) and a.startswith("ERROR:")]
    if not in_time:
        problems.append("no answer and no close in time (hang)")
    if expected >= 0 and (len(images), errors) != (expected, []):
        problems.append(f"a valid stream gave {len(images)} image(s) and {errors}")
    for image in images:
        if not np.isfinite(image.data).all():
            problems.append("an image holds NaN/Inf")
    # The server still serves: an unknown config is refused at once.
    alive, _ = _converse(mrd_server.port, _message(1, b"nothing".ljust(1024, b"\0")), timeout=10)
    if not any(isinstance(a, str) and "unknown config" in a for a in alive):
        problems.append("the server stopped serving")
    record(
        "mrd-stream",
        case,
        problems,
        None,
        "edgesr/integrate/mrd_server.py",
        refused=bool(errors) or not images,
    )


# --- DICOM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_node(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("wire-node")
    model = create_model("rdn_tiny", scale=2)
    checkpoint = save_model(
        folder / "ct", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"}, modality="CT"
    )
    node = DicomNode(
        edgesr.Enhancer.from_checkpoint(checkpoint, device="cpu"),
        NodeSettings(root=folder / "store", port=0, quiet_seconds=0.2, max_pending=10000),
    )
    node.start()
    yield node, folder
    node.stop()


DICOM_MUTATIONS = [
    "none",
    "path characters in SOPInstanceUID",
    "path characters in SeriesInstanceUID",
    "UID too long",
    "UID with leading zero",
    "empty UID",
    "huge description",
    "no pixel data",
    "rows disagree with the pixels",
    "bytes",
    "dropped mid-transfer",
]


@st.composite
def dicom_instance_case(draw: st.DrawFn, folder: Path) -> tuple[Case, Path]:
    mutation = draw(st.sampled_from(DICOM_MUTATIONS))
    # UIDs of one length drawn by hypothesis (a random UID's length varies, and so would the bytes that
    # the mutations draw positions in).
    series, sop = (f"1.2.826.0.1.3680043.8.498.9{draw(st.integers(0, 10**12)):036d}" for _ in range(2))
    path = folder / f"{sop[-12:]}.dcm"
    pixels = np.random.default_rng(draw(st.integers(0, 99))).integers(900, 1100, (9, 7)).astype(np.uint16)
    write_dicom_slice(path, pixels, position_z=0.0, instance=1, series_uid=series, intercept=-1024.0)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = sop
    hostile = draw(
        st.sampled_from(["../../../evil", "1.2/../../x", "..", "/etc/passwd", "1.2\\..\\x", "1.2\0.3"])
    )
    if mutation == "path characters in SOPInstanceUID":
        ds.SOPInstanceUID = hostile
    elif mutation == "path characters in SeriesInstanceUID":
        ds.SeriesInstanceUID = hostile
    elif mutation == "UID too long":
        ds.SOPInstanceUID = "1." + "2" * 70
    elif mutation == "UID with leading zero":
        ds.SeriesInstanceUID = "1.02.3"
    elif mutation == "empty UID":
        ds.SeriesInstanceUID = ""
    elif mutation == "huge description":
        ds.SeriesDescription = "x" * draw(st.integers(1 << 16, 1 << 21))
    elif mutation == "no pixel data":
        del ds.PixelData
    elif mutation == "rows disagree with the pixels":
        ds.Rows = draw(st.integers(1, 4000))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    if mutation == "bytes":
        what, blob = draw(byte_mutation(path.read_bytes(), header=400))
        path.write_bytes(blob)
        mutation += f": {what}"
    return Case("dicom-instance", mutation, path), path


def _outside_root(folder: Path, root: Path) -> list[Path]:
    """Files the node may not have written: anything but the storage root, the inputs and the checkpoint
    (the root itself is not walked: the node renames folders in it while this looks)."""
    allowed = {root, folder / "inputs", folder / "ct"}
    found: list[Path] = []
    for entry in folder.iterdir():
        if entry in allowed:
            continue
        found += [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    return found


@FUZZ
@given(data=st.data())
def test_dicom_instance(dicom_node, data: st.DataObject) -> None:
    node, folder = dicom_node
    inputs = folder / "inputs"
    inputs.mkdir(exist_ok=True)
    case, path = data.draw(dicom_instance_case(inputs))
    note(case.describe())
    problems: list[str] = []
    status: int | None = None
    ae = AE(ae_title="FUZZ")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESR")
    if not assoc.is_established:
        problems.append("the node refused the association")
    else:
        try:
            if case.mutation == "dropped mid-transfer":
                assoc.abort()  # before any instance: nothing is stored, nothing is half-written
            else:
                answer = assoc.send_c_store(path)  # the file as it is, not re-encoded
                status = int(answer.Status) if answer and "Status" in answer else None
        except Exception:
            status = None  # pynetdicom could not even read the file to send it: a refusal client-side
        if assoc.is_established:
            assoc.release()
    sop = ""
    try:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
    except Exception:
        pass
    root = node.root
    if case.mutation == "none" and status != 0:
        problems.append(f"a valid instance was answered {status}")
    if status == 0 and sop:
        stored = [
            p for state in ("incoming", "work", "done", "failed") for p in (root / state).glob(f"*/{sop}.dcm")
        ]
        if not stored:
            problems.append("acknowledged but not stored")
    if status == 0 and case.mutation.startswith(
        ("path characters", "UID too long", "UID with leading", "empty")
    ):
        problems.append("a hostile or invalid UID was acknowledged")
    outside = _outside_root(folder, root) + [p for p in root.parent.parent.iterdir() if "evil" in p.name]
    if outside:
        problems.append(f"files written outside the storage root: {outside[:3]}")
    if sorted(p.name for p in root.iterdir()) != sorted(STATES):
        problems.append(f"the storage root holds {sorted(p.name for p in root.iterdir())}")
    time.sleep(0.05)
    echo = AE(ae_title="FUZZ")
    echo.add_requested_context("1.2.840.10008.1.1")
    check = echo.associate("127.0.0.1", node.port, ae_title="EDGESR")
    if not (check.is_established and check.send_c_echo().Status == 0):
        problems.append("the node stopped serving")
    if check.is_established:
        check.release()
    record("dicom-instance", case, problems, None, "edgesr/integrate/dicom_node.py", refused=status != 0)
