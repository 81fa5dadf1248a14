"""A DICOM node for the console or the PACS: C-STORE in, enhance each complete series, derived series out.

``edgesr serve dicom`` listens as a storage SCP (C-STORE and C-ECHO, pynetdicom), keeps every instance
it receives on disk before acknowledging it, runs the model on each series once the series is complete,
writes the derived series (:mod:`edgesr.integrate.dicom`) and forwards it by C-STORE to a destination,
or leaves it in the storage folder.

Nothing is lost, nothing is processed twice. The storage root holds the whole state, and every step
is a rename on one file system, so a ``kill -9`` at any point leaves a state the next start resumes::

    tmp/                  instances being written (never acknowledged; cleared at start)
    incoming/SERIES/      acknowledged instances (file fsync'ed and renamed before the ack)
    work/SERIES.N/        a complete series claimed for processing (N counts a series' batches)
    derived/SERIES.N/     its derived series (written whole, then renamed into place)
    done/SERIES.N/        the source instances, once their derived series exists
    failed/SERIES.N/      sources the model could not take, with edgesr-error.txt saying why
    forwarded/SERIES.N/   derived series the destination acknowledged

* A series is complete when no instance of it has arrived for ``quiet_seconds`` and no open
  association has sent part of it (or after ``stall_seconds`` of quiet, for callers that keep an
  association open forever).
* A series whose association was **aborted** is not complete (``incoming/SERIES/.edgesr-interrupted``
  says so, across restarts): it waits ``stall_seconds`` for the sender to send it again (instances
  stored before are acknowledged, not stored twice, so the resend completes the same series); if none
  comes, its instances go to ``failed/`` with ``edgesr-error.txt`` saying so, and a later resend of
  the whole series is processed whole.
* An instance whose SOPInstanceUID was stored before is acknowledged and not stored again, so a
  caller that re-sends after a lost acknowledgement gets exactly-once processing.
* Forwarding is retried with exponential back-off (1 s doubling to ``retry_max_seconds``) until the
  destination accepts it, across restarts; a forwarded series is re-sent only if the node died between
  the destination's acknowledgement and the rename, and the destination sees the same UIDs again.
* Bounds: ``max_associations`` concurrent associations (more are rejected by the association
  negotiation), ``max_pending`` stored instances not yet processed (more are answered "out of
  resources", 0xA700, so the sender retries later). Calling AE titles are allow-listed.
* Paths are built from UIDs only after checking them against the UID grammar (digits and dots, at most
  64 characters): nothing a peer sends can name a file outside the storage root.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesr._io import fsync_dir
from edgesr.errors import ConfigError
from edgesr.integrate._service import serve_until_stopped
from edgesr.integrate.api import Enhancer

log = logging.getLogger("edgesr.node")

UID_GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# C-STORE statuses (PS3.4 Annex B.2.3) and the forward statuses that count as stored.
SUCCESS, OUT_OF_RESOURCES, DATA_SET_MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
STATES = ("tmp", "incoming", "work", "derived", "done", "failed", "forwarded")


def valid_uid(value: str) -> bool:
    """A DICOM UID: components of digits without leading zeros, dot-separated, at most 64 characters."""
    return 0 < len(value) <= 64 and UID_GRAMMAR.match(value) is not None


@dataclass(frozen=True)
class Destination:
    """Where derived series go by C-STORE: ``host:port:AE_TITLE``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 65535:
            raise ConfigError(f"destination={text!r}: expected HOST:PORT:AE_TITLE (e.g. pacs:104:PACS)")
        _check_ae_title("destination AE title", parts[2])
        return cls(parts[0], int(parts[1]), parts[2])


def _check_ae_title(what: str, title: str) -> None:
    if not 1 <= len(title) <= 16 or "\\" in title or not title.isprintable() or title.strip() != title:
        raise ConfigError(f"{what} {title!r}: an AE title is 1-16 printable characters without backslash")


@dataclass(frozen=True)
class NodeSettings:
    """How the node listens, when a series is complete, and its bounds (see the module docstring)."""

    root: Path
    ae_title: str = "EDGESR"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed: tuple[str, ...] = ()  # calling AE titles; empty: any
    destination: Destination | None = None
    quiet_seconds: float = 10.0
    stall_seconds: float = 120.0
    max_associations: int = 10
    max_pending: int = 20000
    retry_max_seconds: float = 300.0
    series_number: int | None = None

    def __post_init__(self) -> None:
        _check_ae_title("ae_title", self.ae_title)
        for title in self.allowed:
            _check_ae_title("allowed AE title", title)
        if self.quiet_seconds <= 0 or self.stall_seconds < self.quiet_seconds:
            raise ConfigError("quiet_seconds must be positive and stall_seconds at least quiet_seconds")
        if self.max_associations < 1 or self.max_pending < 1:
            raise ConfigError("max_associations and max_pending must be at least 1")


@dataclass
class _Forward:
    attempts: int = 0
    next_try: float = 0.0


# How edgesr-error.txt starts for a series given up after an aborted association (not a model failure).
INTERRUPTED = "Interrupted"
# The file in incoming/SERIES/ that says its association was aborted (the DICOM reader skips dot files).
INTERRUPTED_MARK = ".edgesr-interrupted"


def _error_text(folder: Path) -> str:
    try:
        return (folder / "edgesr-error.txt").read_text(encoding="utf-8")
    except OSError:
        return ""


@dataclass
class _State:
    """What the node keeps in memory, rebuilt from the storage root at every start."""

    seen: set[str] = field(default_factory=set)  # SOPInstanceUIDs stored (any state)
    last_arrival: dict[str, float] = field(default_factory=dict)  # incoming series -> monotonic time
    receiving: dict[str, set[int]] = field(default_factory=dict)  # series -> open associations
    batches: dict[str, int] = field(default_factory=dict)  # series -> last batch number
    claimed: list[str] = field(default_factory=list)  # work/ keys waiting for the model
    pending: int = 0  # instances in incoming/ and work/
    forwards: dict[str, _Forward] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)  # incoming series whose association was aborted


class DicomNode:
    """The node: storage SCP, series worker and forwarder threads over one storage root."""

    def __init__(
        self,
        enhancer: Enhancer,
        settings: NodeSettings,
        *,
        units: str = "auto",
        sender: Callable[[Destination, str, list[Path]], None] | None = None,
    ) -> None:
        if enhancer.spec.sr is None:
            raise ConfigError("the DICOM node enhances images: give it an SR model, not a recon model")
        self._sr = enhancer.spec.sr
        self.enhancer = enhancer
        self.settings = settings
        self.units = units
        self._send = sender or send_series
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._state = _State()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self.root = settings.root
        for name in STATES:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    # --- Life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Recovers the storage root's state, then listens and starts the worker and forwarder."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self._recover()
        ae = AE(ae_title=self.settings.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_associations = self.settings.max_associations
        if self.settings.allowed:
            ae.require_calling_aet = list(self.settings.allowed)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ABORTED, self._on_abort),
        ]
        self._server = ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        for target, name in ((self._work_loop, "edgesr-series"), (self._forward_loop, "edgesr-forward")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "listening as %s on %s:%d; storage %s; %s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            self.root,
            f"callers {', '.join(self.settings.allowed)}" if self.settings.allowed else "any caller",
        )

    @property
    def port(self) -> int:
        """The port it listens on (the OS's choice when the settings say 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stops listening and lets the worker finish the series it is on (state stays consistent)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=60)

    def serve_forever(self) -> None:
        """Serves in the calling thread until Ctrl-C, SIGTERM or :meth:`stop`."""
        serve_until_stopped(self.start, self.stop, self._stop)

    def idle(self) -> bool:
        """Nothing waits: no series incoming or claimed, nothing left to forward (for tests and drains)."""
        with self._lock:
            busy = self._state.last_arrival or self._state.claimed or self._state.pending
        unforwarded = self.settings.destination is not None and any(self._keys("derived"))
        return not busy and not unforwarded

    # --- Receiving --------------------------------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        requested = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            ds = event.dataset
            series = str(ds.get("SeriesInstanceUID", "") or "")
            sop = str(ds.get("SOPInstanceUID", "") or "")
        except Exception as exc:  # a data set pydicom cannot parse
            log.warning("refused an instance that cannot be parsed (%s)", str(exc)[:120])
            return CANNOT_UNDERSTAND
        if not (valid_uid(series) and valid_uid(sop)):
            log.warning(
                "refused an instance with SeriesInstanceUID %.80r / SOPInstanceUID %.80r", series, sop
            )
            return CANNOT_UNDERSTAND
        if sop != requested:
            log.warning("refused %s: the C-STORE request names SOPInstanceUID %.80r", sop, requested)
            return DATA_SET_MISMATCH
        with self._lock:
            self._state.receiving.setdefault(series, set()).add(id(event.assoc))
            # pynetdicom reports an abort after the connection's close: the association remembers what
            # it sent, for _on_abort (an attribute of the association object: gone with it).
            sent = getattr(event.assoc, "_edgesr_series", None)
            if sent is None:
                sent = set()
                event.assoc._edgesr_series = sent
            sent.add(series)
            if series in self._state.interrupted:  # sent again: complete when quiet, as any other
                self._state.interrupted.discard(series)
                (self.root / "incoming" / series / INTERRUPTED_MARK).unlink(missing_ok=True)
            if sop in self._state.seen:
                return SUCCESS  # stored before: a re-send after a lost acknowledgement
            if self._state.pending >= self.settings.max_pending:
                log.warning("out of resources: %d instances wait; refused %s", self._state.pending, sop)
                return OUT_OF_RESOURCES
        try:
            encoded = event.encoded_dataset(include_meta=True)
            tmp = self.root / "tmp" / f"{sop}.{threading.get_ident()}.part"
            with open(tmp, "wb") as f:
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            log.error("cannot store %s (%s); refused, the sender will retry", sop, exc)
            return OUT_OF_RESOURCES
        with self._lock:
            if sop in self._state.seen:  # the same instance on two associations at once
                tmp.unlink(missing_ok=True)
                return SUCCESS
            folder = self.root / "incoming" / series
            created = not folder.exists()
            folder.mkdir(exist_ok=True)
            os.replace(tmp, folder / f"{sop}.dcm")
            fsync_dir(folder)
            if created:
                fsync_dir(folder.parent)
            self._state.seen.add(sop)
            self._state.pending += 1
            self._state.last_arrival[series] = time.monotonic()
        return SUCCESS

    def _on_abort(self, event: Any) -> None:
        with self._lock:
            # The series it sent that are still incoming (not claimed since: the close came first).
            sent: set[str] = getattr(event.assoc, "_edgesr_series", set())
            cut = [series for series in sent if series in self._state.last_arrival]
            self._state.interrupted.update(cut)
            for series in cut:  # on disk too: a node restarted while it waits still waits
                try:
                    (self.root / "incoming" / series / INTERRUPTED_MARK).touch()
                    fsync_dir(self.root / "incoming" / series)
                except OSError as exc:
                    log.warning("series %s: cannot mark it interrupted on disk (%s)", series, exc)
        for series in cut:
            log.warning(
                "series %s: its association was aborted; held for %.0f s for the sender to send it again",
                series,
                self.settings.stall_seconds,
            )

    def _on_close(self, event: Any) -> None:
        with self._lock:
            for associations in self._state.receiving.values():
                associations.discard(id(event.assoc))

    # --- Processing -------------------------------------------------------------------------------

    def _ready_series(self) -> list[str]:
        now = time.monotonic()
        ready = []
        with self._lock:
            for series, last in self._state.last_arrival.items():
                quiet = now - last
                receiving = bool(self._state.receiving.get(series))
                held = receiving or series in self._state.interrupted
                if (
                    quiet >= self.settings.quiet_seconds and not held
                ) or quiet >= self.settings.stall_seconds:
                    ready.append(series)
        return ready

    def _claim(self, series: str) -> str:
        """Moves a complete series from incoming/ to work/ under a new batch key (atomic)."""
        with self._lock:
            batch = self._state.batches.get(series, 0) + 1
            self._state.batches[series] = batch
            key = f"{series}.{batch}"
            (self.root / "incoming" / series / INTERRUPTED_MARK).unlink(missing_ok=True)
            os.replace(self.root / "incoming" / series, self.root / "work" / key)
            fsync_dir(self.root / "work")
            self._state.last_arrival.pop(series, None)
            self._state.receiving.pop(series, None)
            self._state.claimed.append(key)
        return key

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            for series in self._ready_series():
                with self._lock:
                    interrupted = series in self._state.interrupted
                    self._state.interrupted.discard(series)
                claimed = self._claim(series)
                if interrupted:
                    self._give_up_interrupted(claimed)
            with self._lock:
                key = self._state.claimed.pop(0) if self._state.claimed else None
            if key is None:
                self._stop.wait(0.1)
                continue
            self._process(key)

    def _give_up_interrupted(self, key: str) -> None:
        """A series cut by an aborted association and never sent again: kept in failed/, not enhanced
        (a derived series of part of it would look complete to whoever receives it). Its instances are
        forgotten as received, so that a later resend of the whole series is processed whole."""
        with self._lock:
            self._state.claimed.remove(key)
        work, failed = self.root / "work" / key, self.root / "failed" / key
        sops = [p.stem for p in work.glob("*.dcm")]
        os.replace(work, failed)
        message = (
            f"{INTERRUPTED}: the association that sent this series was aborted after {len(sops)} "
            f"instance(s), and no sender sent it again within {self.settings.stall_seconds:.0f} s; "
            "it was not enhanced. Send the whole series again.\n"
        )
        (failed / "edgesr-error.txt").write_text(message, encoding="utf-8")
        with self._lock:
            self._state.seen.difference_update(sops)
            self._state.pending -= len(sops)
        log.error("series %s: %s", key, message.strip())

    def _process(self, key: str) -> None:
        """Runs the model on work/KEY once: derived/KEY exists afterwards, or failed/KEY says why."""
        from edgesr.data.images import load_dicom_series
        from edgesr.integrate.dicom import write_derived_series
        from edgesr.pipeline import nearest_upsample

        work, derived = self.root / "work" / key, self.root / "derived" / key
        count = sum(1 for _ in work.iterdir())
        try:
            if not derived.exists() and not (self.root / "forwarded" / key).exists():
                started = time.monotonic()
                volume = load_dicom_series(work)
                result = self.enhancer.enhance(volume, units=self.units)
                for warning in result.warnings:
                    log.warning("series %s: %s", key, warning)
                sr = self._sr
                padding = None
                if volume.padding is not None:
                    padding = nearest_upsample(volume.padding, sr.scale, sr.degradation)
                write_derived_series(
                    volume,
                    result.image,
                    derived,
                    scale=sr.scale,
                    degradation=sr.degradation,
                    provenance=result.provenance,
                    padding=padding,
                    series_number=self.settings.series_number,
                    warnings=result.warnings,
                )
                # Slices, not files: an enhanced multi-frame file is one instance of many frames.
                slices, seconds = volume.data.shape[0], time.monotonic() - started
                files = f" from {count} file(s)" if count != slices else ""
                log.info("series %s: %d slice(s)%s enhanced in %.1f s", key, slices, files, seconds)
            os.replace(work, self.root / "done" / key)
        except Exception as exc:  # the model or the data: keep the sources, say why, go on serving
            failed = self.root / "failed" / key
            os.replace(work, failed)
            message = f"{type(exc).__name__}: {exc}\n"
            (failed / "edgesr-error.txt").write_text(message, encoding="utf-8")
            log.error("series %s failed and was kept in %s: %s", key, failed, str(exc)[:300])
        finally:
            with self._lock:
                self._state.pending -= count

    # --- Forwarding -------------------------------------------------------------------------------

    def _keys(self, state: str) -> Iterable[str]:
        return sorted(
            p.name for p in (self.root / state).iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def _forward_loop(self) -> None:
        destination = self.settings.destination
        if destination is None:
            return
        while not self._stop.is_set():
            sent_any = False
            for key in self._keys("derived"):
                forward = self._state.forwards.setdefault(key, _Forward())
                if time.monotonic() < forward.next_try:
                    continue
                files = sorted((self.root / "derived" / key).glob("*.dcm"))
                try:
                    self._send(destination, self.settings.ae_title, files)
                except Exception as exc:
                    forward.attempts += 1
                    delay = min(self.settings.retry_max_seconds, 2.0 ** (forward.attempts - 1))
                    forward.next_try = time.monotonic() + delay
                    log.warning(
                        "forwarding %s to %s:%d failed (attempt %d, next in %.0f s): %s",
                        key, destination.host, destination.port, forward.attempts, delay, str(exc)[:200],
                    )  # fmt: skip
                    continue
                os.replace(self.root / "derived" / key, self.root / "forwarded" / key)
                self._state.forwards.pop(key, None)
                sent_any = True
                log.info("forwarded %s (%d instances) to %s", key, len(files), destination.ae_title)
            if not sent_any:
                self._stop.wait(0.2)

    # --- Recovery ---------------------------------------------------------------------------------

    def _recover(self) -> None:
        """The state a previous run left, read from the storage root (see the module docstring)."""
        state = _State()
        for leftover in (self.root / "tmp").iterdir():  # never acknowledged
            _remove(leftover)
        for leftover in (self.root / "derived").glob(".*"):  # a derived series' staging folder
            _remove(leftover)
        for name in ("incoming", "work", "done", "failed", "forwarded", "derived"):
            for folder in (self.root / name).iterdir():
                if not folder.is_dir() or folder.name.startswith("."):
                    continue
                if name != "incoming":  # SERIES.N: the next batch of SERIES is N + 1
                    series, _, batch = folder.name.rpartition(".")
                    if batch.isdigit():
                        state.batches[series] = max(state.batches.get(series, 0), int(batch))
                if name in ("derived", "forwarded"):
                    continue
                sops = [p.stem for p in folder.glob("*.dcm")]
                if name == "failed" and _error_text(folder).startswith(INTERRUPTED):
                    continue  # never enhanced: a resend of the whole series is new
                state.seen.update(sops)
                if name == "incoming":
                    state.last_arrival[folder.name] = time.monotonic()  # quiet from now on
                    if (folder / INTERRUPTED_MARK).exists():
                        state.interrupted.add(folder.name)
                    state.pending += len(sops)
                elif name == "work":
                    state.claimed.append(folder.name)
                    state.pending += len(list(folder.iterdir()))
        with self._lock:
            self._state = state
        if state.pending or state.claimed:
            log.info("resuming: %d instance(s) waiting, %d series claimed", state.pending, len(state.claimed))


def send_series(destination: Destination, calling_ae: str, files: list[Path]) -> None:
    """C-STOREs ``files`` to ``destination`` on one association; raises unless every one is stored."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"association with {destination.ae_title} was rejected, aborted or never made")
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in STORED:
                raise ConnectionError(f"{path.name}: the destination answered status 0x{code & 0xFFFF:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = ["DicomNode", "Destination", "NodeSettings", "send_series", "valid_uid"]
