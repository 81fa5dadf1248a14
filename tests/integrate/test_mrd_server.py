"""The MRD streaming server over real sockets: images as the file path gives them, faults answered."""

from __future__ import annotations

import socket
import struct
import threading

import ismrmrd
import numpy as np
import pytest
import torch
from ismrmrd.serialization import ProtocolDeserializer

import edgesr
from edgesr.integrate.mrd_server import (
    ACQUISITION,
    CLOSE,
    CONFIG_TEXT,
    HEADER,
    MrdServer,
    MrdSettings,
    stream,
)
from edgesr.models import create_model
from tests.conftest import save_model, siemens_like_mrd, write_mrd_file


def _phantom(height: int = 32, width: int = 24) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return (((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1) * (1.0 + 0.5 * (yy > 0.2))).astype(np.float32) * 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mrd") / "modl"
    checkpoint = save_model(folder, create_model("modl_tiny"), "modl_tiny", {})
    enhancer = edgesr.Enhancer.from_checkpoint(checkpoint, device="cpu")
    running = MrdServer({"edgesr-modl": enhancer}, MrdSettings(port=0, max_text_bytes=1 << 20))
    running.start()
    yield running
    running.stop()


def _raw_session(port: int, payload: bytes) -> list:
    """Sends bytes as they are, then reads what the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        answers = []
        try:
            for item in ProtocolDeserializer(reader).deserialize():
                answers.append(item)
        except (EOFError, OSError, ValueError):
            pass
    return answers


def _config(name: str) -> bytes:
    return struct.pack("<H", 1) + name.encode().ljust(1024, b"\0")


def _text(message_id: int, text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<HI", message_id, len(data)) + data


def test_a_siemens_like_stream_comes_back_as_the_file_path_reconstructs_it(server, tmp_path):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8, slices=2)
    images, texts = stream(
        "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=acquisitions
    )
    assert texts == [] and len(images) == 2
    recon = server.configs["edgesr-modl"]
    for index, image in enumerate(sorted(images, key=lambda im: im.slice)):
        assert tuple(image.matrix_size) == (32, 24, 1)  # reconSpace: the 2x readout removed
        assert tuple(image.field_of_view) == pytest.approx((220.0, 220.0, 5.0))
        assert tuple(image.position) == pytest.approx((0.0, 0.0, 5.0 * index))
        assert (image.image_type, image.slice) == (ismrmrd.IMTYPE_MAGNITUDE, index)
        meta = ismrmrd.Meta.deserialize(image.attribute_string)
        assert meta["EdgesrWeightsSha256"] == recon.provenance.weights_sha256
        assert meta["EdgesrPrewhitened"] == "1"
        # A stream is reconstructed slice by slice: the same as a file holding that slice alone (a
        # file of several slices is normalised over its volume, ~1 % apart).
        one = [
            a for a in acquisitions if a.idx.slice == index or a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        ]
        expected = recon.reconstruct(write_mrd_file(tmp_path / f"slice{index}.h5", xml, one))
        np.testing.assert_allclose(image.data[0, 0].T, expected.image[0], rtol=1e-5, atol=1e-4)


def test_config_text_json_names_the_recon(server):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8)
    payload = _text(CONFIG_TEXT, '{"config": "edgesr-modl", "parameters": {}}') + _text(HEADER, xml)
    for acq in acquisitions:
        chunks: list[bytes] = []
        acq.serialize_into(chunks.append)
        payload += struct.pack("<H", ACQUISITION) + b"".join(chunks)
    answers = _raw_session(server.port, payload + struct.pack("<H", CLOSE))
    assert [type(a).__name__ for a in answers] == ["Image"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown config", "unknown config 'gadgetron-default'"),
        ("unknown message", "unknown message ID 4242"),
        ("length past cap", "past this server's limit"),
        ("malformed XML", "the ISMRMRD header cannot be read"),
        ("acquisition first", "ACQUISITION before CONFIG and HEADER"),
        ("too few calibration lines", "estimating coil maps"),
        ("line outside the matrix", "lies outside the encoded matrix"),
    ],
)
def test_faults_get_an_error_and_the_server_keeps_serving(server, case, expected):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=0 if "calibration" in case else 8)
    if case == "line outside the matrix":
        acquisitions[3].idx.kspace_encode_step_1 = 900
    body = b""
    for acq in acquisitions:
        chunks: list[bytes] = []
        acq.serialize_into(chunks.append)
        body += struct.pack("<H", ACQUISITION) + b"".join(chunks)
    payload = {
        "unknown config": _config("gadgetron-default"),
        "unknown message": _config("edgesr-modl") + struct.pack("<H", 4242),
        "length past cap": _config("edgesr-modl") + struct.pack("<HI", HEADER, 2**31),
        "malformed XML": _config("edgesr-modl") + _text(HEADER, "<ismrmrdHeader><encoding>"),
        "acquisition first": body,
    }.get(case, _config("edgesr-modl") + _text(HEADER, xml) + body + struct.pack("<H", CLOSE))
    answers = _raw_session(server.port, payload)
    errors = [a for a in answers if isinstance(a, str) and a.startswith("ERROR:")]
    assert errors and expected in errors[0], answers
    # ... and the next session is served as usual.
    images, texts = stream("127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=[])
    assert texts == [] and images == []


def test_a_client_that_vanishes_mid_stream_does_not_stop_others(server):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8)
    chunks: list[bytes] = []
    acquisitions[1].serialize_into(chunks.append)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # half an acquisition, then gone
        sock.sendall(_config("edgesr-modl") + _text(HEADER, xml) + struct.pack("<H", ACQUISITION))
        sock.sendall(b"".join(chunks)[:100])
    results: list[int] = []

    def session() -> None:
        images, _ = stream(
            "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=acquisitions
        )
        results.append(len(images))

    threads = [threading.Thread(target=session) for _ in range(3)]  # concurrent sessions
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [1, 1, 1]


def test_the_command_serves_a_checkpoint_under_the_name_it_is_given_and_stops_on_sigterm(tmp_path):
    import subprocess
    import sys
    import time

    torch.manual_seed(0)
    checkpoint = save_model(tmp_path / "modl", create_model("modl_tiny"), "modl_tiny", {})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "edgesr",
        "serve",
        "mrd",
        f"configs=[brain:{checkpoint}]",
        f"port={port}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("the server did not start") from None
                time.sleep(0.2)
        xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8)
        images, texts = stream("127.0.0.1", port, config="brain", header=xml, acquisitions=acquisitions)
        assert (len(images), texts) == (1, [])
        # SIGTERM (systemd, docker stop) ends it cleanly: it stops listening and exits 0.
        process.terminate()
        said = process.communicate(timeout=60)[0].decode()
        assert process.returncode == 0 and "SIGTERM: stopping" in said, said
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_the_openrecon_context_carries_the_app_label_and_starts_the_tested_server(tmp_path):
    import base64
    import json
    import re

    from edgesr.cli import _parse
    from edgesr.commands.serve import ServeMrdConfig
    from edgesr.integrate.mrd_server import config_name
    from edgesr.integrate.openrecon import LABEL, write_context

    write_context(tmp_path, ["modl-r4", "deepcomplex-r4"])
    text = (tmp_path / "Dockerfile").read_text()
    label = re.search(rf'LABEL "{re.escape(LABEL)}"="([A-Za-z0-9+/=]+)"', text)
    assert label is not None
    metadata = json.loads(base64.b64decode(label.group(1)))
    assert metadata == json.loads((tmp_path / "openrecon.json").read_text())
    assert metadata["reconstruction"]["injector"] == "raw" and metadata["reconstruction"]["port"] == 9002
    (choice,) = metadata["parameters"]
    assert [v["id"] for v in choice["values"]] == ["modl-r4", "deepcomplex-r4"]
    # The console sends the UI's values as JSON; the server reads the recon from it.
    assert config_name(json.dumps({"parameters": {"config": "deepcomplex-r4"}})) == "deepcomplex-r4"
    command = json.loads(re.search(r"^CMD (.*)$", text, re.MULTILINE).group(1))
    assert command[:3] == ["edgesr", "serve", "mrd"]
    config = _parse(ServeMrdConfig, command[3:])
    assert (config.host, config.port, config.configs) == ("0.0.0.0", 9002, ("modl-r4", "deepcomplex-r4"))


def test_a_model_that_raises_is_reported_to_its_client_only(server):
    """A failure inside the model (not bad data) ends that session with ERROR; others go on."""
    recon = server.configs["edgesr-modl"]

    class Broken:
        spec = recon.spec
        provenance = recon.provenance

        def reconstruct(self, *args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    server.configs["broken"] = Broken()
    try:
        xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8)
        images, texts = stream(
            "127.0.0.1", server.port, config="broken", header=xml, acquisitions=acquisitions
        )
        assert images == [] and texts and "RuntimeError: CUDA error" in texts[0]
        images, texts = stream(
            "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=acquisitions
        )
        assert (len(images), texts) == (1, [])
    finally:
        del server.configs["broken"]


def test_the_servers_run_shipped_models_at_the_precision_asked_and_artifacts_at_their_own(
    monkeypatch, tmp_path
):
    """``precision=bf16`` reaches every shipped model or checkpoint a server loads (its provenance says
    so); an artifact keeps the precision it was verified at; the DICOM node refuses bf16 for an artifact."""
    from edgesr.cli import _parse
    from edgesr.commands import serve
    from edgesr.errors import ConfigError

    served: dict[str, edgesr.Enhancer] = {}

    class FakeServer:  # stands in for the MRD server: records what it would serve
        def __init__(self, enhancers, settings):
            served.update(enhancers)

        def serve_forever(self):
            return None

    monkeypatch.setattr("edgesr.integrate.mrd_server.MrdServer", FakeServer)
    config = _parse(serve.ServeMrdConfig, ["configs=[modl-r4-edge]", "precision=bf16", "device=cpu"])
    assert serve.run_serve_mrd(config) == 0
    assert served["modl-r4-edge"].provenance.precision == "bf16+fp32"
    with pytest.raises(ConfigError, match="precision"):
        _parse(serve.ServeMrdConfig, ["precision=int8"])
    with pytest.raises(ConfigError, match="an artifact runs at the precision it was exported"):
        _parse(serve.ServeDicomConfig, [f"root={tmp_path}", f"artifact={tmp_path}", "precision=bf16"])


def test_interleaved_echoes_come_back_as_one_image_each_numbered_apart(server):
    """Multi-echo lines arrive interleaved (echo 0, echo 1, next line...), the last echo's line flagged
    last in the slice: each echo is its own image, and every echo of a slice comes back with it."""
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8, slices=2)
    noise, lines = acquisitions[:1], acquisitions[1:]
    echoes = []
    for acquisition in lines:
        last = acquisition.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
        for echo in (0, 1):
            head = acquisition.getHead()
            head.idx.contrast = echo
            copy = ismrmrd.Acquisition(head, acquisition.data * (1.0 if echo == 0 else 0.5))
            if last and echo == 0:
                copy.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            echoes.append(copy)
    images, texts = stream(
        "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=noise + echoes
    )
    assert texts == [] and len(images) == 4
    assert [(image.slice, image.contrast) for image in images] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [image.image_index for image in images] == [1, 2, 3, 4]
    assert [image.image_series_index for image in images] == [1, 2, 1, 2]
    # The second echo was sent at half the signal: its own image, not the first one's lines.
    ratio = float(images[1].data.mean() / images[0].data.mean())
    assert 0.4 < ratio < 0.6


def test_averages_each_flagged_last_in_slice_are_averaged_into_one_image(server):
    """Averages that each end with the slice's last-line flag: one image, after the header's last."""
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acs=8)
    limits = "<average><minimum>0</minimum><maximum>1</maximum><center>0</center></average>"
    xml = xml.replace("</encodingLimits>", limits + "</encodingLimits>", 1)
    noise, lines = acquisitions[:1], acquisitions[1:]
    averages = []
    for average in (0, 1):
        for acquisition in lines:
            head = acquisition.getHead()
            head.idx.average = average
            averages.append(ismrmrd.Acquisition(head, acquisition.data * (1.0 if average == 0 else 0.5)))
    images, texts = stream(
        "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=noise + averages
    )
    assert texts == [] and len(images) == 1
    single, _ = stream("127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=acquisitions)
    ratio = float(images[0].data.mean() / single[0].data.mean())
    assert 0.7 < ratio < 0.8  # the mean of 1 and 0.5


def test_what_the_caller_should_know_comes_as_a_warning_text_before_the_image(server):
    xml, acquisitions = siemens_like_mrd(_phantom(), coils=4, acceleration=1, acs=0)  # every line
    images, texts = stream(
        "127.0.0.1", server.port, config="edgesr-modl", header=xml, acquisitions=acquisitions
    )
    assert len(images) == 1
    (text,) = texts
    assert text.startswith("WARNING: slice 0: the k-space is fully sampled")
