"""The INT8 tests (``quantize_cases.py``), run in a pytest process of their own.

With OpenVINO and NNCF loaded into the main pytest process (their native thread pools, NNCF's
telemetry threads), the suite segfaulted late in its run, inside an unrelated test that waits on
subprocesses (three CI runs, same place; each module alone passes). A fresh interpreter keeps those
libraries out of the main process, the way users meet them: one ``edgesr compress`` per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("quantize_cases.py")


def test_the_int8_cases_pass_in_their_own_process():
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    assert " passed" in completed.stdout and "failed" not in completed.stdout
