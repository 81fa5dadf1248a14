"""The DICOM node with real associations on the loopback: store, enhance, forward, refuse, recover."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, Verification

import edgesr
from edgesr.integrate.dicom_node import STATES, Destination, DicomNode, NodeSettings
from tests.conftest import write_dicom_slice


def ct_series(folder: Path, slices: int, *, size: int = 19, modality: str = "CT") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(list(folder.iterdir())))
    uid = generate_uid()
    files = []
    for index in range(slices):
        path = folder / f"{uid[-12:]}-{index}.dcm"
        pixels = rng.integers(900, 1200, size=(size, size + 2)).astype(np.uint16)
        write_dicom_slice(
            path, pixels, position_z=2.0 * index, instance=index + 1, series_uid=uid,
            intercept=-1024.0, modality=modality,
        )  # fmt: skip
        files.append(path)
    return files


def send(port: int, files: list[Path], *, calling: str = "SCANNER") -> list[int]:
    """C-STOREs files on one association; the statuses (-1: no answer)."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESR")
    if not assoc.is_established:
        return [-1] * len(files)
    statuses = []
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        statuses.append(int(status.Status) if status else -1)
    assoc.release()
    return statuses


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


class Destination_SCP:
    """A PACS stand-in: stores what it receives in memory."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        self.port = int(self.server.server_address[1])

    def _store(self, event):
        self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def make_node(checkpoint: Path, root: Path, **settings) -> DicomNode:
    settings.setdefault("quiet_seconds", 0.3)
    node = DicomNode(
        edgesr.Enhancer.from_checkpoint(checkpoint, device="cpu"),
        NodeSettings(root=root, port=0, **settings),
    )
    node.start()
    return node


def test_a_series_is_stored_enhanced_and_forwarded(ct_checkpoint, tmp_path):
    pacs = Destination_SCP()
    node = make_node(
        ct_checkpoint, tmp_path / "store", destination=Destination("127.0.0.1", pacs.port, "PACS"),
        allowed=("SCANNER",),
    )  # fmt: skip
    try:
        echo = AE(ae_title="SCANNER")
        echo.add_requested_context(Verification)
        assoc = echo.associate("127.0.0.1", node.port, ae_title="EDGESR")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()

        files = ct_series(tmp_path / "in", 3)
        assert send(node.port, files) == [0, 0, 0]
        assert send(node.port, files[:1]) == [0]  # a re-send is acknowledged, not stored twice
        wait_for(lambda: len(pacs.received) == 3 and node.idle())
    finally:
        node.stop()
        pacs.stop()
    sent = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    referenced = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in pacs.received}
    assert referenced == sent
    assert {(ds.Rows, ds.Columns) for ds in pacs.received} == {(38, 42)}
    (key,) = [p.name for p in (tmp_path / "store" / "forwarded").iterdir()]
    assert len(list((tmp_path / "store" / "done" / key).iterdir())) == 3
    assert not any(any((tmp_path / "store" / s).iterdir()) for s in ("incoming", "work", "derived", "tmp"))


def test_an_enhanced_multi_frame_ct_comes_back_as_one_derived_instance(ct_checkpoint, tmp_path, caplog):
    """One instance of two frames (pydicom-data's real enhanced CT): one derived multi-frame instance
    forwarded, and the log counts the slices enhanced, not the files received."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file("eCT_Supplemental.dcm", download=False)  # never fetched
    if found is None:
        pytest.skip("eCT_Supplemental.dcm: pydicom-data is not installed (.ci/setup installs it)")
    pacs = Destination_SCP()
    node = make_node(
        ct_checkpoint, tmp_path / "store", destination=Destination("127.0.0.1", pacs.port, "PACS")
    )
    caplog.set_level("INFO", logger="edgesr")
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(pydicom.dcmread(found, stop_before_pixels=True).SOPClassUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGESR")
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(found)).Status == 0x0000
        assoc.release()
        wait_for(lambda: len(pacs.received) == 1 and node.idle())
    finally:
        node.stop()
        pacs.stop()
    (derived,) = pacs.received
    assert derived.NumberOfFrames == 2 and (derived.Rows, derived.Columns) == (1024, 1024)
    assert "2 slice(s) from 1 file(s) enhanced" in caplog.text


def test_forwarding_is_retried_until_the_destination_answers(ct_checkpoint, tmp_path):
    with socket.socket() as probe:  # a port where nothing listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = make_node(
        ct_checkpoint, tmp_path / "store", destination=Destination("127.0.0.1", port, "PACS"),
        retry_max_seconds=0.5,
    )  # fmt: skip
    pacs = None
    try:
        assert send(node.port, ct_series(tmp_path / "in", 2)) == [0, 0]
        wait_for(lambda: any((tmp_path / "store" / "derived").iterdir()))
        time.sleep(1.5)  # a few failed attempts
        assert not any((tmp_path / "store" / "forwarded").iterdir())
        pacs = Destination_SCP(port)
        wait_for(lambda: len(pacs.received) == 2 and node.idle())
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the hostile UIDs are the point
def test_hostile_and_unwanted_input_is_refused_and_the_node_keeps_serving(ct_checkpoint, tmp_path):
    root = tmp_path / "store"
    node = make_node(ct_checkpoint, root, allowed=("SCANNER",), max_pending=3)
    try:
        stranger = AE(ae_title="STRANGER")
        stranger.requested_contexts = StoragePresentationContexts
        assert not stranger.associate("127.0.0.1", node.port, ae_title="EDGESR").is_established

        good = ct_series(tmp_path / "in", 2)
        hostile = []
        for index, (series, sop) in enumerate(
            [("1.2.3/../../../evil", None), (None, "../../x"), (None, "1.2.03")]
        ):
            ds = pydicom.dcmread(good[0])
            if series:
                ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = sop or generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = tmp_path / f"hostile{index}.dcm"
            ds.save_as(path, enforce_file_format=True)
            hostile.append(path)
        assert send(node.port, hostile) == [0xC000, 0xC000, 0xC000]
        assert not (tmp_path / "evil").exists() and not (tmp_path / "x.dcm").exists()

        # An MR series given to a CT model fails on its own and is kept with the reason.
        assert send(node.port, ct_series(tmp_path / "mr", 2, modality="MR")) == [0, 0]
        wait_for(lambda: any((root / "failed").iterdir()) and node.idle())
        (failed,) = (root / "failed").iterdir()
        assert "given to a CT model" in (failed / "edgesr-error.txt").read_text()

        # Past max_pending the node answers "out of resources"; the sender retries later.
        node._stop.set()  # pause the worker so that instances pile up  # noqa: SLF001
        time.sleep(0.3)
        many = ct_series(tmp_path / "many", 4)
        assert send(node.port, many) == [0, 0, 0, 0xA700]
    finally:
        node.stop()
    assert not [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name == "x.dcm"]
    assert sorted(p.name for p in root.iterdir()) == sorted(STATES)

    # Restarted on the same root, the node picks up what was acknowledged and processes it once.
    node = make_node(ct_checkpoint, root)
    try:
        wait_for(node.idle)
    finally:
        node.stop()
    done = [p for p in (root / "done").iterdir()]
    assert sorted(len(list(p.iterdir())) for p in done) == [3]
    assert len(list((root / "derived").iterdir())) == 1


def test_associations_past_the_bound_are_rejected(ct_checkpoint, tmp_path):
    node = make_node(ct_checkpoint, tmp_path / "store", max_associations=1)
    try:
        first = AE(ae_title="SCANNER")
        first.add_requested_context(Verification)
        held = first.associate("127.0.0.1", node.port, ae_title="EDGESR")
        assert held.is_established
        second = AE(ae_title="SCANNER")
        second.add_requested_context(Verification)
        assert not second.associate("127.0.0.1", node.port, ae_title="EDGESR").is_established
        held.release()
        wait_for(lambda: second.associate("127.0.0.1", node.port, ae_title="EDGESR").is_established, 10)
    finally:
        node.stop()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (Debian) not installed")
def test_dcmtk_echoscu_and_storescu_talk_to_the_node(ct_checkpoint, tmp_path):
    """A second, independent implementation of the protocol (OFFIS dcmtk) as the scanner."""
    node = make_node(ct_checkpoint, tmp_path / "store")
    try:
        echo = subprocess.run(
            ["echoscu", "-aec", "EDGESR", "127.0.0.1", str(node.port)], capture_output=True, check=False
        )
        assert echo.returncode == 0, echo.stderr
        folder = tmp_path / "in"
        ct_series(folder, 3)
        store = subprocess.run(
            ["storescu", "-aec", "EDGESR", "+sd", "127.0.0.1", str(node.port), str(folder)],
            capture_output=True, check=False,
        )  # fmt: skip
        assert store.returncode == 0, store.stderr
        wait_for(lambda: any((tmp_path / "store" / "derived").iterdir()) and node.idle())
    finally:
        node.stop()
    (derived,) = (tmp_path / "store" / "derived").iterdir()
    assert len(list(derived.glob("*.dcm"))) == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_load_with_kill_9_restarts_processes_every_acknowledged_instance_once(ct_checkpoint, tmp_path):
    """10 concurrent associations x 100 instances; the node is killed -9 three times mid-stream."""
    root, port = tmp_path / "store", _free_port()
    command = [
        sys.executable, "-m", "edgesr", "serve", "dicom", f"checkpoint={ct_checkpoint}", f"root={root}",
        f"port={port}", "quiet=1.5", "device=cpu", "max_associations=12",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "node.log", "ab")  # noqa: SIM115 (kept open across restarts)
    server = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    series = [ct_series(tmp_path / f"in{i}", 100, size=9) for i in range(10)]

    def scanner(files: list[Path]) -> None:
        datasets = [pydicom.dcmread(f) for f in files]
        left = list(datasets)
        while left:
            ae = AE(ae_title="SCANNER")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", port, ae_title="EDGESR")
            if not assoc.is_established:
                time.sleep(0.3)
                continue
            for ds in list(left):
                try:
                    status = assoc.send_c_store(ds)
                except Exception:  # the node died mid-transfer
                    break
                if status and int(status.Status) == 0:
                    with lock:
                        acknowledged.add(str(ds.SOPInstanceUID))
                    left.remove(ds)
                elif not assoc.is_established:
                    break
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=scanner, args=(files,)) for files in series]
    try:
        for thread in threads:
            thread.start()
        at_kill = []
        for _ in range(3):
            before = len(acknowledged)  # kill only once the (re)started node has acknowledged more
            wait_for(lambda: len(acknowledged) > before or len(acknowledged) == 1000, 120)  # noqa: B023
            time.sleep(1.0)
            at_kill.append(len(acknowledged))
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        for thread in threads:
            thread.join(timeout=600)
        assert len(acknowledged) == 1000
        assert at_kill[-1] < 1000, at_kill  # all three kills mid-stream, not after it

        def finished() -> bool:
            pending = [p for s in ("incoming", "work") for p in (root / s).iterdir()]
            return not pending and sum(len(list(p.iterdir())) for p in (root / "done").iterdir()) >= 1000

        wait_for(finished, 300)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
        log.close()
    referenced: list[str] = []
    for folder in (root / "derived").iterdir():
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            referenced.append(str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID))
    assert len(referenced) == len(set(referenced)) == 1000
    assert set(referenced) == acknowledged
    assert not any((root / "failed").iterdir())


def _send_then_abort(port: int, files: list[Path]) -> None:
    """C-STOREs ``files`` on one association, then aborts it (a console that crashed mid-series)."""
    ae = AE(ae_title="SCANNER")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGESR")
    assert assoc.is_established
    for path in files:
        assoc.send_c_store(pydicom.dcmread(path))
    assoc.abort()


def test_an_aborted_series_waits_for_its_resend_and_is_never_enhanced_in_part(ct_checkpoint, tmp_path):
    files = ct_series(tmp_path / "ct", 4)
    node = make_node(ct_checkpoint, tmp_path / "node", stall_seconds=4.0)
    try:
        _send_then_abort(node.port, files[:2])
        time.sleep(1.0)  # past quiet_seconds: a series whose association ended normally would run now
        assert not any((tmp_path / "node" / "derived").iterdir())
        assert send(node.port, files) == [0] * 4  # the resend: two stored before, acknowledged again
        wait_for(node.idle)
        (derived,) = (tmp_path / "node" / "derived").iterdir()
        assert len(list(derived.glob("*.dcm"))) == 4  # one derived series of the whole
        # Aborted and never sent again: kept in failed/, not enhanced; a later resend is new.
        other = ct_series(tmp_path / "other", 3)
        _send_then_abort(node.port, other[:1])
        wait_for(lambda: any((tmp_path / "node" / "failed").iterdir()), seconds=30)
        (failed,) = (tmp_path / "node" / "failed").iterdir()
        assert (failed / "edgesr-error.txt").read_text().startswith("Interrupted: the association")
        assert send(node.port, other) == [0] * 3
        wait_for(lambda: len(list((tmp_path / "node" / "derived").iterdir())) == 2, seconds=30)
    finally:
        node.stop()


def test_a_node_restarted_while_an_aborted_series_waits_still_waits_for_the_resend(ct_checkpoint, tmp_path):
    files = ct_series(tmp_path / "ct", 3)
    node = make_node(ct_checkpoint, tmp_path / "node", stall_seconds=30.0)
    try:
        _send_then_abort(node.port, files[:2])
        wait_for(lambda: any((tmp_path / "node" / "incoming").glob("*/.edgesr-interrupted")), seconds=10)
    finally:
        node.stop()
    node = make_node(ct_checkpoint, tmp_path / "node", stall_seconds=30.0)
    try:
        time.sleep(1.0)  # past quiet_seconds: without the mark, the two instances would be enhanced now
        assert not any((tmp_path / "node" / "derived").iterdir())
        assert send(node.port, files) == [0] * 3
        wait_for(node.idle)
        (derived,) = (tmp_path / "node" / "derived").iterdir()
        assert len(list(derived.glob("*.dcm"))) == 3
        assert not list((tmp_path / "node").rglob(".edgesr-interrupted"))
    finally:
        node.stop()
