"""The foreground life of a network service (the DICOM node, the MRD server): run until told to stop.

``edgesr serve`` runs under a terminal (Ctrl-C), systemd or a container runtime (SIGTERM, then SIGKILL
after a grace period). Both end the same way: stop listening, let the work in hand finish, exit 0. The
node's state survives SIGKILL too (see :mod:`edgesr.integrate.dicom_node`); SIGTERM just avoids
redoing the series a worker was on.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("edgesr.serve")


def serve_until_stopped(
    start: Callable[[], None], stop: Callable[[], None], stopped: threading.Event
) -> None:
    """Calls ``start``, waits until ``stopped`` is set, Ctrl-C or SIGTERM, then calls ``stop``."""
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread

        def on_sigterm(signum: int, frame: object) -> None:
            log.info("SIGTERM: stopping")
            stopped.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    start()
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
