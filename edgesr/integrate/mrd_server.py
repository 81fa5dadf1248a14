"""An MRD (ISMRMRD v1) streaming server: raw data in over TCP, reconstructed images back.

It speaks the protocol that Gadgetron clients, Siemens OpenRecon and the ``python-ismrmrd-server``
tools speak, message for message (the ``ismrmrd`` package's types and serialisation)::

    client -> CONFIG_FILE (1, a name in 1024 bytes) or CONFIG_TEXT (2)   which reconstruction
    client -> HEADER (3, the ISMRMRD XML)                                  the protocol's geometry
    client -> ACQUISITION (1008) ... [WAVEFORM (1026), TEXT (5)]           noise, calibration, lines
    server -> IMAGE (1022) per slice, when its ACQ_LAST_IN_SLICE line arrives
    client -> CLOSE (4);  server -> remaining slices, CLOSE

Every message is read with its size checked before anything is allocated (text and XML against
``max_text_bytes``, an acquisition's samples against ``max_message_bytes``, what a session holds
against ``max_session_bytes``). A session that goes wrong (an unknown config or message ID, a length
past a cap, malformed XML, acquisitions out of order or outside the header's matrix, a model that
raises) gets a TEXT message starting ``ERROR:`` and a CLOSE when the client is still there; the
server goes on serving every other session. Clients that vanish mid-stream are logged and dropped.
What a caller should know about an image (fully sampled k-space, a slice of no signal) comes as a
TEXT message starting ``WARNING:`` before it.

Raw data go through :class:`edgesr.data.mrd.SliceAssembler` (noise prewhitening, readout
oversampling removed, the header's reconSpace), so the server and ``edgesr enhance`` on the same
ISMRMRD file give the same image. Images carry the acquisition's position and directions, the
reconSpace field of view, and meta attributes naming the model and its sha256.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesr.data.mrd import ImageKey, describe_key
from edgesr.errors import ConfigError, DataError
from edgesr.integrate._service import serve_until_stopped
from edgesr.integrate.api import Enhancer

log = logging.getLogger("edgesr.mrd")

CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE, WAVEFORM, NDARRAY = 1008, 1022, 1026, 1030
CONFIG_FILE_BYTES = 1024


class ProtocolError(Exception):
    """What the client is told (after ``ERROR: ``) before the session is closed."""


class ClientGone(Exception):
    """The client closed the connection mid-message."""


@dataclass(frozen=True)
class MrdSettings:
    host: str = "127.0.0.1"
    port: int = 9002
    max_sessions: int = 4
    max_text_bytes: int = 16 << 20  # XML headers are kilobytes
    max_message_bytes: int = 256 << 20  # one acquisition's samples
    max_session_bytes: int = 4 << 30  # k-space held for slices not yet complete
    timeout_seconds: float = 300.0  # a silent client is dropped
    image_dtype: str = "float32"  # or uint16 (scaled to 0..4095, the scale in the meta)

    def __post_init__(self) -> None:
        if self.image_dtype not in ("float32", "uint16"):
            raise ConfigError(f"image_dtype={self.image_dtype!r}: choose float32 or uint16")
        if self.max_sessions < 1:
            raise ConfigError("max_sessions must be at least 1")


class _Connection:
    """Exact reads with caps, and message writes, over one socket."""

    def __init__(self, sock: socket.socket, settings: MrdSettings) -> None:
        self.sock = sock
        self.settings = settings
        self.reader = sock.makefile("rb")
        self._write_lock = threading.Lock()

    def read_exactly(self, size: int, *, cap: int | None = None, what: str = "message") -> bytes:
        limit = self.settings.max_message_bytes if cap is None else cap
        if size < 0 or size > limit:
            raise ProtocolError(f"{what} of {size} bytes is past this server's limit of {limit}")
        data = self.reader.read(size)
        if data is None or len(data) < size:
            raise ClientGone(f"the client closed the connection inside a {what}")
        return bytes(data)

    def read_id(self) -> int | None:
        data = self.reader.read(2)
        if not data:
            return None  # closed between messages
        if len(data) < 2:
            raise ClientGone("the client closed the connection inside a message ID")
        return int(struct.unpack("<H", data)[0])

    def read_text(self, what: str) -> str:
        (length,) = struct.unpack("<I", self.read_exactly(4, what=f"{what} length"))
        raw = self.read_exactly(length, cap=self.settings.max_text_bytes, what=what)
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8 text") from None

    def close(self) -> None:
        """Ends the connection for the client too: the socket's file object keeps it open otherwise."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.reader.close()
        self.sock.close()

    def send(self, message_id: int, payload: bytes = b"") -> None:
        with self._write_lock:
            self.sock.sendall(struct.pack("<H", message_id) + payload)

    def send_text(self, text: str) -> None:
        data = text.encode("utf-8")
        self.send(TEXT, struct.pack("<I", len(data)) + data)


class MrdServer:
    """Serves MRD sessions, one thread each, with the recons named in ``configs`` (the allow-list)."""

    def __init__(self, configs: Mapping[str, Enhancer], settings: MrdSettings | None = None) -> None:
        if not configs:
            raise ConfigError("the MRD server needs at least one recon model")
        for name, enhancer in configs.items():
            if enhancer.spec.recon is None:
                raise ConfigError(f"config {name!r} is an SR model; the MRD server reconstructs raw data")
        self.configs = dict(configs)
        self.settings = settings or MrdSettings()
        self._sessions = threading.BoundedSemaphore(self.settings.max_sessions)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.served = 0

    @property
    def port(self) -> int:
        if self._listener is None:
            return self.settings.port
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        listener = socket.create_server((self.settings.host, self.settings.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name="edgesr-mrd", daemon=True
        )
        self._thread.start()
        log.info(
            "MRD server on %s:%d; configs: %s", self.settings.host, self.port, ", ".join(sorted(self.configs))
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()

    def serve_forever(self) -> None:
        """Serves in the calling thread until Ctrl-C, SIGTERM or :meth:`stop`."""
        serve_until_stopped(self.start, self.stop, self._stop)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            sock.settimeout(self.settings.timeout_seconds)
            threading.Thread(target=self._session, args=(sock, peer), daemon=True).start()

    def _session(self, sock: socket.socket, peer: Any) -> None:
        connection = _Connection(sock, self.settings)
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._sessions.acquire(blocking=False):
            _refuse(connection, f"this server runs at most {self.settings.max_sessions} sessions at once")
            connection.close()
            return
        try:
            Session(self, connection, where).run()
            self.served += 1
        except ClientGone as exc:
            log.warning("%s: %s; session dropped", where, exc)
        except ProtocolError as exc:
            log.warning("%s: %s", where, exc)
            _refuse(connection, str(exc))
        except (OSError, TimeoutError) as exc:
            log.warning("%s: connection lost (%s)", where, exc)
        except Exception as exc:  # a model or data failure: the client hears it, the server goes on
            log.exception("%s: session failed", where)
            _refuse(connection, f"{type(exc).__name__}: {exc}")
        finally:
            self._sessions.release()
            connection.close()


def _refuse(connection: _Connection, message: str) -> None:
    """``ERROR: message`` and CLOSE, if the client still listens."""
    try:
        connection.send_text(f"ERROR: {message}")
        connection.send(CLOSE)
    except OSError:
        pass


def config_name(text: str) -> str:
    """The recon a CONFIG_TEXT names: the text itself, or ``config`` in a JSON object (OpenRecon sends
    JSON with its parameters)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            raise ProtocolError("CONFIG_TEXT is not valid JSON") from None
        if isinstance(parsed, dict):
            name = parsed.get("config") or (parsed.get("parameters") or {}).get("config")
            if isinstance(name, str):
                return name
        raise ProtocolError('CONFIG_TEXT JSON names no "config"')
    return stripped


class Session:
    """One client's stream: config, header, acquisitions, images back."""

    def __init__(self, server: MrdServer, connection: _Connection, where: str) -> None:
        self.server = server
        self.connection = connection
        self.where = where
        self.enhancer: Enhancer | None = None
        self.config = ""
        self.assembler: Any = None
        self.images = 0

    def run(self) -> None:
        import ismrmrd

        settings = self.server.settings
        while True:
            message_id = self.connection.read_id()
            if message_id is None:
                raise ClientGone("the client closed the connection without CLOSE")
            if message_id == CONFIG_FILE:
                raw = self.connection.read_exactly(CONFIG_FILE_BYTES, what="CONFIG_FILE")
                self._choose(raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip())
            elif message_id == CONFIG_TEXT:
                self._choose(config_name(self.connection.read_text("CONFIG_TEXT")))
            elif message_id == HEADER:
                if self.enhancer is None:
                    raise ProtocolError("HEADER before CONFIG: name a recon first")
                xml = self.connection.read_text("XML header")
                from edgesr.data.mrd import SliceAssembler

                try:
                    self.assembler = SliceAssembler(
                        xml, source=f"MRD stream from {self.where}", max_bytes=settings.max_session_bytes
                    )
                except DataError as exc:
                    raise ProtocolError(str(exc)) from None
            elif message_id == ACQUISITION:
                if self.assembler is None:
                    raise ProtocolError("ACQUISITION before CONFIG and HEADER")
                acquisition = ismrmrd.Acquisition.deserialize_from(self._capped_read("acquisition"))
                try:
                    finished = self.assembler.add(acquisition)
                except DataError as exc:
                    raise ProtocolError(str(exc)) from None
                for key in finished:
                    self._reconstruct(key)
            elif message_id == WAVEFORM:
                ismrmrd.Waveform.deserialize_from(self._capped_read("waveform"))  # ECG/resp: not used
            elif message_id == TEXT:
                log.info("%s says: %s", self.where, self.connection.read_text("TEXT")[:200])
            elif message_id == CLOSE:
                if self.assembler is not None:
                    for key in self.assembler.pending():  # images never flagged LAST_IN_SLICE
                        self._reconstruct(key)
                self.connection.send(CLOSE)
                log.info("%s: %d image(s) with %s; closed", self.where, self.images, self.config)
                return
            elif message_id in (IMAGE, NDARRAY):
                kind = "IMAGE" if message_id == IMAGE else "NDARRAY"
                raise ProtocolError(f"message ID {message_id} ({kind}) is sent by servers, not to them")
            else:
                raise ProtocolError(f"unknown message ID {message_id}")

    def _capped_read(self, what: str) -> Callable[[int], bytes]:
        return lambda size: self.connection.read_exactly(size, what=what)

    def _choose(self, name: str) -> None:
        if name not in self.server.configs:
            known = ", ".join(sorted(self.server.configs))
            raise ProtocolError(f"unknown config {name[:80]!r}; this server runs: {known}")
        self.enhancer, self.config = self.server.configs[name], name

    def _reconstruct(self, key: ImageKey) -> None:
        import ismrmrd

        if self.enhancer is None or self.assembler is None:
            raise ProtocolError("no recon chosen")
        kspace, mask, head = self.assembler.take(key)
        try:
            result = self.enhancer.reconstruct(kspace, mask=mask)
        except DataError as exc:
            raise ProtocolError(f"{describe_key(key)}: {exc}") from None
        for warning in result.warnings:  # e.g. fully sampled: the client's log should say so
            log.warning("%s, %s: %s", self.where, describe_key(key), warning)
            self.connection.send_text(f"WARNING: {describe_key(key)}: {warning}")
        image = np.ascontiguousarray(self.assembler.crop(result.image[0]))  # [H readout, W phase]
        meta = ismrmrd.Meta()
        scale = 1.0
        if self.server.settings.image_dtype == "uint16":
            peak = float(image.max()) or 1.0
            scale = 4095.0 / peak
            pixels = np.clip(np.rint(image * scale), 0, 4095).astype(np.uint16)
            meta["EdgesrIntensityScale"] = f"{scale:.9g}"
        else:
            pixels = image.astype(np.float32)
        fov = self.assembler.geometry.fov_mm  # what the image covers (the reconSpace, or less)
        # MRD images are [channels, z, y, x] with x along read_dir: our rows run along the readout.
        out = ismrmrd.Image.from_array(
            np.ascontiguousarray(pixels.T)[None],
            acquisition=head,
            image_type=ismrmrd.IMTYPE_MAGNITUDE,
            # Numbered in the order sent, from 1; one series per contrast (echo), as scanners number them.
            # The slice, contrast, repetition, set and phase come with the acquisition's header.
            image_index=self.images + 1,
            image_series_index=key[1] + 1,
            field_of_view=tuple(float(v) for v in fov),
        )
        provenance = result.provenance
        meta["DataRole"] = "Image"
        meta["ImageProcessingHistory"] = ["EDGESR", provenance.model.upper()[:32]]
        meta["EdgesrModel"] = provenance.model
        meta["EdgesrArchitecture"] = provenance.architecture
        meta["EdgesrWeightsSha256"] = provenance.weights_sha256
        meta["EdgesrVersion"] = provenance.edgesr_version
        meta["EdgesrPrewhitened"] = "1" if self.assembler.prewhitened else "0"
        meta["Keep_image_geometry"] = "1"
        out.attribute_string = meta.serialize()
        payload = _serialize(out)
        self.connection.send(IMAGE, payload)
        self.images += 1


def _serialize(image: Any) -> bytes:
    chunks: list[bytes] = []
    image.serialize_into(chunks.append)
    return b"".join(chunks)


# --- A client (for tests, and for users checking a server) ----------------------------------------


def stream(
    host: str,
    port: int,
    *,
    config: str,
    header: str,
    acquisitions: Iterable[Any],
    timeout: float = 300.0,
) -> tuple[list[Any], list[str]]:
    """Sends one MRD session (CONFIG_FILE, HEADER, acquisitions, CLOSE) and collects the answer.

    Returns:
        The images and the TEXT messages the server sent (errors start with ``ERROR:``, what the
        caller should know about an image with ``WARNING:``).
    """
    import ismrmrd
    from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

    with socket.create_connection((host, port), timeout=timeout) as sock:
        writer, reader = sock.makefile("wb"), sock.makefile("rb")
        images: list[Any] = []
        texts: list[str] = []

        def receive() -> None:
            try:
                for item in ProtocolDeserializer(reader).deserialize():
                    if isinstance(item, ismrmrd.Image):
                        images.append(item)
                    elif isinstance(item, str):
                        texts.append(item)
            except (EOFError, OSError, ValueError):
                pass

        listener = threading.Thread(target=receive, daemon=True)
        listener.start()
        try:
            serializer = ProtocolSerializer(writer)
            serializer.serialize(ConfigFile(config))
            writer.write(struct.pack("<H", HEADER))
            data = header.encode("utf-8")
            writer.write(struct.pack("<I", len(data)) + data)
            for acquisition in acquisitions:
                serializer.serialize(acquisition)
            serializer.close()  # CLOSE
            writer.flush()
        except OSError:
            pass  # the server closed early (an error): its TEXT says why
        listener.join(timeout)
    return images, texts


__all__ = ["MrdServer", "MrdSettings", "ProtocolError", "Session", "config_name", "stream"]
