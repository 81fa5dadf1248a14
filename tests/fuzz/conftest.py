"""Shared pieces of the property-based and mutation suite over edgesr's readers (issue 10).

The property every generated or mutated input must satisfy: the call ends either in an
:class:`~edgesr.errors.EdgesrError` whose message names the file, or in a correct result (finite,
right shape, right values where the input fixes them); never another exception, a hang, a changed
input file or (for the CLI) a partial output.

Profiles (environment variables, read once at import):

* default, ``EDGESR_FUZZ`` unset: the CI subset, 25 derandomized examples per property.
* ``EDGESR_FUZZ=thorough``: ``EDGESR_FUZZ_EXAMPLES`` (default 2000) random examples per property; the
  tests are then marked ``slow``.
* ``EDGESR_FUZZ_LOG=FILE``: collect mode. Every example appends one JSON line (its outcome, and for a
  failure the input kind, mutation, exception and the edgesr file:line it arose at) and failures do not
  stop the run, so one thorough run counts every example and finds every distinct failure;
  ``python -m tests.fuzz.report FILE`` summarises the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import struct
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st

import edgesr
from edgesr.errors import EdgesrError

PROFILE = os.environ.get("EDGESR_FUZZ", "ci")
THOROUGH = PROFILE == "thorough"
LOG = os.environ.get("EDGESR_FUZZ_LOG") or None
HANG_SECONDS = float(os.environ.get("EDGESR_FUZZ_HANG_S", "30"))
EDGESR_DIR = Path(edgesr.__file__).resolve().parent
REPO_DIR = EDGESR_DIR.parent

# deadline=None: examples write files and some run a network, so their time varies with the machine's
# load; a per-call deadline would make CI flaky. Hangs are caught by ``time_limit`` instead (a hard
# SIGALRM limit per call). database=None: no .hypothesis folder in the work tree; derandomize makes CI
# reproducible. HealthCheck.too_slow is suppressed because drawing a mutation plan for a file that was
# just written (hashing, copying a 2.5 MB teacher) is counted as generation time by hypothesis.
settings.register_profile(
    "edgesr-fuzz-ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "edgesr-fuzz-thorough",
    max_examples=int(os.environ.get("EDGESR_FUZZ_EXAMPLES", "2000")),
    derandomize=False,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings.get_profile("edgesr-fuzz-thorough" if THOROUGH else "edgesr-fuzz-ci")
# The CLI properties run a network per example (~0.1 s): a quarter of the examples in the thorough run.
FUZZ_CLI = settings(FUZZ, max_examples=max(25, FUZZ.max_examples // 4)) if THOROUGH else FUZZ


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if THOROUGH:
        here = Path(__file__).parent
        for item in items:
            if Path(str(item.fspath)).is_relative_to(here):
                item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The probes are a few pixels: one thread. Two OpenMP threads on a 2-core machine that is busy with
    anything else spin-wait and make each tiny convolution ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- outcomes ---------------------------------------------------------------------------------------


class Hang(BaseException):
    """A call ran past HANG_SECONDS (a BaseException, so that no reader's ``except Exception`` eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fingerprint(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder (names included), to prove an input unchanged."""
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    out: dict[str, str] = {}
    for file in files:
        key = str(file.relative_to(path)) if path.is_dir() else file.name
        out[key] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "<dir>"
    return out


@dataclass
class Case:
    """One generated or mutated input and what a correct result must look like.

    Attributes:
        kind: the input format (``dicom``, ``nifti``...).
        mutation: how it was made or broken, for the report.
        path: the file or folder handed to the reader.
        shape: the exact shape a successful read must have (None: any valid shape).
        values: the exact values a successful read must have (float32 tolerance).
        must_fail: why any successful read would be silently wrong (the input contradicts itself).
        valid: why the input is valid, so that refusing it is wrong (None: refusing is allowed).
        finite: whether the input holds only finite values (an error must then not blame NaN/Inf).
        names: extra names an error message may use for the file (e.g. the files of a DICOM folder).
    """

    kind: str
    mutation: str
    path: Path
    shape: tuple[int, ...] | None = None
    values: np.ndarray | None = None
    must_fail: str | None = None
    valid: str | None = None
    finite: bool = True
    names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind}: {self.mutation}"


def edgesr_location(exc: BaseException) -> str:
    """The innermost edgesr frame of ``exc``'s traceback, as ``edgesr/x.py:LINE (function)``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(EDGESR_DIR))]
    if not frames:
        return "outside edgesr"
    frame = frames[-1]
    return f"{Path(frame.filename).relative_to(REPO_DIR)}:{frame.lineno} ({frame.name})"


def message_problems(message: str, case: Case, *, extra_names: Sequence[str] = ()) -> list[str]:
    """What is wrong with an error message: it must name the file and tell the truth, in one line."""
    problems = []
    names = [str(case.path), case.path.name, *case.names, *extra_names]
    if not any(n and n in message for n in names):
        problems.append("error message does not name the file")
    if case.finite and re.search(r"\b(NaN|Inf)\b", message):
        problems.append("error blames NaN/Inf but the input is finite")
    if len(message) > 600:
        problems.append(f"error message is {len(message)} characters long")
    if "Traceback" in message:
        problems.append("error message holds a traceback")
    return problems


def record(
    prop: str,
    case: Case,
    problems: list[str],
    exc: BaseException | None,
    where: str = "",
    *,
    refused: bool | None = None,
) -> None:
    """Logs the example (collect mode) and fails the test on any problem (unless collecting).

    ``refused``: whether the call ended in a user error (default: whether ``exc`` is set)."""
    refused = exc is not None if refused is None else refused
    outcome = "fail" if problems else ("error" if refused else "ok")
    entry: dict[str, Any] = {
        "property": prop,
        "outcome": outcome,
        "kind": case.kind,
        "mutation": case.mutation,
    }
    if problems:
        entry.update(
            problems=problems,
            exception=type(exc).__name__ if exc is not None else None,
            message=str(exc)[:400] if exc is not None else None,
            location=edgesr_location(exc) if exc is not None else where,
        )
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
        return
    if problems:
        detail = f"{type(exc).__name__}: {str(exc)[:400]} at {entry['location']}" if exc else where
        raise AssertionError(f"{case.describe()}: {'; '.join(problems)} [{detail}]") from exc


def check_call(
    prop: str,
    case: Case,
    call: Callable[[Path], Any],
    validate: Callable[[Any, Case], list[str]],
    where: str,
) -> None:
    """Runs ``call(case.path)`` and checks the property (see the module docstring)."""
    note(case.describe())
    before = fingerprint(case.path)
    problems: list[str] = []
    caught: BaseException | None = None
    try:
        with time_limit():
            result = call(case.path)
    except EdgesrError as exc:
        caught = exc
        problems += message_problems(str(exc), case)
        if case.valid:
            problems.append(f"refused a valid input: {case.valid}")
    except Hang as exc:
        caught = exc
        problems.append("hang")
    except Exception as exc:
        caught = exc
        problems.append(f"uncaught {type(exc).__name__}")
    else:
        if case.must_fail:
            problems.append(f"accepted silently: {case.must_fail}")
        problems += validate(result, case)
    if fingerprint(case.path) != before:
        problems.append("the input was changed")
    record(prop, case, problems, caught, where)


def array_problems(data: np.ndarray, case: Case) -> list[str]:
    """A loaded image or k-space: finite, non-empty, the expected shape and values."""
    problems = []
    if data.size == 0:
        problems.append(f"empty result of shape {data.shape}")
    elif not np.isfinite(data).all():
        problems.append("result holds NaN/Inf")
    if case.shape is not None and tuple(data.shape) != tuple(case.shape):
        problems.append(f"result shape {tuple(data.shape)}, expected {tuple(case.shape)}")
    elif case.values is not None and data.size:
        wide = np.complex128 if np.iscomplexobj(case.values) or np.iscomplexobj(data) else np.float64
        expected = np.asarray(case.values, dtype=wide).reshape(data.shape)
        scale = max(1.0, float(np.abs(expected).max()))
        if not np.allclose(data.astype(wide), expected, rtol=1e-5, atol=1e-5 * scale):
            problems.append("result values differ from the file's")
    return problems


# --- strategies shared by several readers -----------------------------------------------------------

SMALL = st.integers(min_value=2, max_value=9)


def cut_points(size: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=max(0, size - 1))


@st.composite
def byte_mutation(draw: st.DrawFn, blob: bytes, *, header: int | None = None) -> tuple[str, bytes]:
    """Truncation at a random byte, random byte flips (anywhere or in the first ``header`` bytes),
    junk appended, an empty file or random bytes of the same length."""
    choice = draw(st.sampled_from(["truncate", "flip", "flip-header", "append", "empty", "random"]))
    if choice == "truncate":
        cut = draw(cut_points(len(blob)))
        return f"truncated at byte {cut} of {len(blob)}", blob[:cut]
    if choice in ("flip", "flip-header"):
        limit = min(len(blob), header or len(blob)) if choice == "flip-header" else len(blob)
        data = bytearray(blob)
        flips = draw(st.lists(st.tuples(cut_points(limit), st.integers(1, 255)), min_size=1, max_size=4))
        for offset, xor in flips:
            data[offset] ^= xor
        return f"{len(flips)} byte(s) flipped at {sorted(o for o, _ in flips)}", bytes(data)
    if choice == "append":
        junk = draw(st.binary(min_size=1, max_size=64))
        return f"{len(junk)} junk bytes appended", blob + junk
    if choice == "empty":
        return "empty file", b""
    return "random bytes", draw(st.binary(min_size=0, max_size=max(1, min(len(blob), 512))))


def changes_values(what: str) -> bool:
    """Whether a byte mutation may have turned finite stored values into NaN/Inf."""
    return "flipped" in what or what == "random bytes"


# --- DICOM ------------------------------------------------------------------------------------------

DICOM_DTYPES = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}
DICOM_DTYPES |= {(32, 0): np.uint32, (32, 1): np.int32}
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"


def dicom_dataset(
    stored: np.ndarray,
    *,
    modality: str = "MR",
    bits: int = 16,
    signed: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    spacing: tuple[float, float] = (0.7, 0.8),
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    padding: int | None = None,
    series_uid: str = SERIES_UID,
    instance: int = 1,
) -> Any:
    """A valid single- or multi-frame MR/CT dataset of ``stored`` pixels ``[R, C]`` or ``[F, R, C]``."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        pydicom.uid.CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage
    )
    # A UID of fixed length: the files' sizes, hence the byte offsets hypothesis draws, stay reproducible.
    meta.MediaStorageSOPInstanceUID = f"{series_uid}.{instance}.{stored.size}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("fuzz.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding is not None:
        ds.PixelPaddingValue = padding
    ds.PixelData = np.ascontiguousarray(stored.astype(DICOM_DTYPES[bits, int(signed)])).tobytes()
    return ds


def save_dicom(ds: Any, path: Path) -> bytes:
    """Writes ``ds`` (value validation off, so mutated values reach the file) and returns the bytes."""
    import pydicom.config

    buffer = io.BytesIO()
    with pydicom.config.disable_value_validation():
        ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def stored_pixels(draw: st.DrawFn, shape: tuple[int, ...], bits: int, signed: bool) -> np.ndarray:
    info = np.iinfo(DICOM_DTYPES[bits, int(signed)])
    low, high = max(int(info.min), -3000), min(int(info.max), 4000)
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(low, high + 1, size=shape).astype(np.int64)


def rescale_values(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return stored.astype(np.float64) * slope + intercept


# Tag mutations: (keyword, VR) and the values to try. Values are written verbatim (validation off).
DS_GARBAGE: list[Any] = ["abc", "", "1\\2", "nan", "inf", "-inf", "1e400", "0", "-1", "1e30", "\\", " "]
US_GARBAGE: list[Any] = [0, 1, 2, 3, 7, 64, 65535, [8, 8], [1, 2, 3]]
GEOMETRY_TAGS = {"PixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6}
US_TAGS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
)
DS_TAGS = ("RescaleSlope", "RescaleIntercept", "SliceThickness")
STR_TAGS = {
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", "MONOCHROME1", "", "garbage"],
    "Modality": ["", "CT", "XX", "MR\\CT"],
    "NumberOfFrames": ["0", "-1", "2", "abc", "1.5", "99999"],
    "InstanceNumber": ["abc", "-1", "2.5", ""],
    "SeriesInstanceUID": ["", "not-a-uid", "1.2.3"],
}
DELETABLE = (
    *US_TAGS,
    *DS_TAGS,
    *GEOMETRY_TAGS,
    "PhotometricInterpretation",
    "PixelData",
    "PixelPaddingValue",
    "Modality",
    "SeriesInstanceUID",
    "InstanceNumber",
)


@st.composite
def tag_mutation(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(action, keyword, value): delete a tag, or set it to a wrong VM, a garbage string or odd number."""
    action = draw(st.sampled_from(["delete", "geometry", "us", "ds", "str", "pixeldata", "padding"]))
    if action == "delete":
        return "delete", draw(st.sampled_from(DELETABLE)), None
    if action == "geometry":
        keyword = draw(st.sampled_from(sorted(GEOMETRY_TAGS)))
        value = draw(
            st.one_of(
                st.lists(st.sampled_from([0.0, -1.0, 0.5, 1.0, 1e30, -0.0]), min_size=0, max_size=7),
                st.sampled_from(DS_GARBAGE),
                st.lists(st.sampled_from(DS_GARBAGE), min_size=1, max_size=7),
            )
        )
        return "set", keyword, value
    if action == "us":
        return "set", draw(st.sampled_from(US_TAGS)), draw(st.sampled_from(US_GARBAGE))
    if action == "ds":
        return "set", draw(st.sampled_from(DS_TAGS)), draw(st.sampled_from(DS_GARBAGE))
    if action == "str":
        keyword = draw(st.sampled_from(sorted(STR_TAGS)))
        return "set", keyword, draw(st.sampled_from(STR_TAGS[keyword]))
    if action == "padding":
        return "set", "PixelPaddingValue", draw(st.sampled_from([0, 1, 65535, -2000, 63536, [1, 2]]))
    size = draw(st.sampled_from(["empty", "odd", "short", "long"]))
    return "pixeldata", size, None


def apply_tag_mutation(ds: Any, mutation: tuple[str, str, Any]) -> None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement, RawDataElement

    action, keyword, value = mutation
    if action == "delete":
        if keyword in ds:
            delattr(ds, keyword)
    elif action == "set":
        tag = tag_for_keyword(keyword)
        vr = dictionary_VR(tag)
        if keyword == "PixelPaddingValue":
            vr = "SS" if int(ds.get("PixelRepresentation", 0)) == 1 else "US"
        if isinstance(value, list) and vr in ("US", "SS"):
            value = [int(v) & 0xFFFF if vr == "US" else int(v) for v in value]
        elif isinstance(value, int) and vr == "US":
            value &= 0xFFFF
        elif isinstance(value, int) and vr == "SS":
            value = (value + 2**15) % 2**16 - 2**15
        elif isinstance(value, list):
            value = "\\".join(str(v) for v in value)
        try:
            ds[tag] = DataElement(tag, vr, value)
        except ValueError:  # pydicom parses DS/IS values when they are set: store the raw bytes
            raw = str(value).encode("latin-1")
            raw += b" " * (len(raw) % 2)
            ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    elif action == "pixeldata":
        # An earlier mutation of the same case may have deleted the pixel data: start from none then.
        data = bytes(ds.PixelData) if "PixelData" in ds else b""
        ds.PixelData = {
            "empty": b"",
            "odd": data[:-1],
            "short": data[: len(data) // 2],
            "long": data + data[: max(2, len(data) // 3)],
        }[keyword]


def dicom_length_mismatch(ds: Any) -> str | None:
    """Why the dataset's geometry cannot describe its pixel data (None when it can)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        length = len(ds.PixelData)
        length += length % 2  # pydicom pads odd-length values to even when it writes them
    except Exception:  # a garbage tag: the reader must refuse it on its own
        return None
    expected = rows * cols * frames * samples * bits // 8
    if length not in (expected, expected + expected % 2):
        return f"{rows}x{cols}x{frames} frames of {bits} bits need {expected} bytes; the file holds {length}"
    return None


# --- NIfTI ------------------------------------------------------------------------------------------

RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
NIFTI_DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64"]
NIFTI_DTYPES += ["complex64", "complex128", "rgb"]


def all_finite(data: np.ndarray) -> bool:
    return data.dtype.kind not in "fc" or bool(np.isfinite(data).all())


def fill_values(draw: st.DrawFn, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, str]:
    """Random values of ``dtype``, sometimes with NaN/Inf/1e300 planted; returns (array, what was planted)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        wide = draw(st.booleans())
        low, high = (
            (int(info.min), int(info.max)) if wide else (max(int(info.min), -100), min(int(info.max), 1000))
        )
        return rng.integers(low, high, size=shape, endpoint=True, dtype=dtype), ""
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool), ""
    data = (rng.standard_normal(shape) * 100 + 200).astype(dtype)
    if dtype.kind == "c":
        data = data + 1j * rng.standard_normal(shape).astype(dtype)
    planted = draw(st.sampled_from(["", "", "nan", "inf", "-inf", "1e300", "-1e300", "1e38", "-0"]))
    if planted and data.size:
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "-0": -0.0}.get(planted) or float(planted)
        with np.errstate(over="ignore"):
            data.flat[draw(cut_points(data.size))] = value
    return data, planted


@st.composite
def nifti_case(draw: st.DrawFn, folder: Path) -> Case:
    import nibabel as nib

    ndim = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    if draw(st.booleans()):  # mostly usable sizes, so that the value checks get exercised
        shape = tuple(max(2, s) for s in shape)
    name = draw(st.sampled_from(NIFTI_DTYPES))
    dtype = RGB if name == "rgb" else np.dtype(name)
    if dtype == RGB:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        data = rng.integers(0, 256, size=(*shape, 3)).astype(np.uint8).view(RGB).reshape(shape)
        planted = ""
    else:
        data, planted = fill_values(draw, shape, dtype)
    suffix = draw(st.sampled_from([".nii", ".nii.gz"]))
    path = folder / f"image{suffix}"
    try:
        image = nib.Nifti1Image(data, np.diag([0.9, 1.1, 2.0, 1.0]))
        image.header.set_data_dtype(dtype)
        nib.save(image, str(path))
    except Exception as exc:  # nibabel cannot write this combination (e.g. 0-size RGB): write bytes instead
        path.write_bytes(b"")
        return Case("nifti", f"unwritable by nibabel ({type(exc).__name__}); empty file", path)
    mutation = f"shape {shape} {name}{' with ' + planted if planted else ''} ({suffix})"
    finite = all_finite(data) if dtype != RGB else True
    values, expected = None, None
    squeezed = data.reshape(shape[:3]) if ndim == 4 and shape[3] == 1 else data
    if dtype.kind in "iuf" and squeezed.ndim in (2, 3):
        expected = np.moveaxis(squeezed, 2, 0) if squeezed.ndim == 3 else squeezed[None]
        values = expected.astype(np.float64)
    case = Case("nifti", mutation, path, shape=None if expected is None else expected.shape, finite=finite)
    case.values = values
    if planted in ("1e300", "-1e300") and dtype == np.float64:
        case.must_fail = "a value beyond float32's range would become Inf"
    if draw(st.integers(0, 3)) == 0:
        what, blob = draw(byte_mutation(path.read_bytes(), header=352))
        path.write_bytes(blob)
        case.mutation += f"; {what}"
        case.shape = case.values = None
        case.finite = case.finite and not changes_values(what)
    return case


# --- raster -----------------------------------------------------------------------------------------


@st.composite
def raster_case(draw: st.DrawFn, folder: Path) -> Case:
    """PNG or TIFF in a PIL mode, or a (multi-page, possibly mixed-size) TIFF written with tifffile."""
    import tifffile
    from PIL import Image

    h, w = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    how = draw(st.sampled_from(["pil", "pil", "tifffile", "pages"]))
    if how == "pil":
        mode = draw(st.sampled_from(["L", "I;16", "RGB", "RGBA", "P", "1", "F", "I", "LA"]))
        suffix = draw(st.sampled_from([".png", ".tif", ".tiff"]))
        path = folder / f"image{suffix}"
        gray = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        if mode == "I;16":
            gray = rng.integers(0, 65536, size=(h, w)).astype(np.uint16)
        elif mode in ("F", "I"):
            gray = (rng.standard_normal((h, w)) * 1000).astype(np.float32 if mode == "F" else np.int32)
        try:
            image = Image.fromarray(gray, mode="I;16") if mode == "I;16" else Image.fromarray(gray)
            if image.mode != mode:
                image = image.convert(mode)
            image.save(path)
        except Exception as exc:
            path.write_bytes(b"")
            return Case(
                "raster", f"{mode} {h}x{w} {suffix}: unwritable ({type(exc).__name__}); empty file", path
            )
        values = np.asarray(Image.open(path)) if path.stat().st_size else None
        case = Case("raster", f"PIL mode {mode} {h}x{w} {suffix}", path)
        if mode in ("L", "I;16", "F", "I") and values is not None and values.ndim == 2:
            case.shape, case.values = (1, h, w), values[None].astype(np.float64)
    else:
        path = folder / draw(st.sampled_from(["image.tif", "image.tiff"]))
        dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "int16", "float32", "float64", "bool"])))
        pages = draw(st.integers(1, 4))
        sizes = [(h, w)] * pages
        if how == "pages":
            sizes = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in range(pages)]
        arrays = [fill_values(draw, size, dtype)[0] for size in sizes]
        try:
            with tifffile.TiffWriter(path) as tif:
                for array in arrays:
                    tif.write(array, photometric="minisblack", contiguous=False)
        except (RuntimeError, ValueError) as exc:  # tifffile cannot write 0-size pages
            path.write_bytes(b"")
            return Case("raster", f"tifffile {sizes} {dtype}: unwritable ({type(exc).__name__}); empty", path)
        mixed = len(set(sizes)) > 1
        case = Case("raster", f"tifffile {pages} page(s) {sizes} {dtype}", path)
        case.finite = all(all_finite(a) for a in arrays)
        if mixed:
            case.must_fail = "pages of different sizes cannot form one volume"
        elif dtype.kind in "iuf":
            stacked = np.stack(arrays)
            case.shape, case.values = stacked.shape, stacked.astype(np.float64)
    if draw(st.integers(0, 3)) == 0 and path.stat().st_size:
        what, blob = draw(byte_mutation(path.read_bytes(), header=64))
        path.write_bytes(blob)
        case.mutation += f"; {what}"
        case.shape = case.values = None
        case.must_fail = None
        case.finite = case.finite and not changes_values(what)
    return case


# --- NPY --------------------------------------------------------------------------------------------

NPY_DTYPES = ["bool", "uint8", "int16", "uint16", "int32", "int64", "uint64", "float16", "float32", "float64"]
NPY_DTYPES += ["complex64", "object", "<U3", "S3", "datetime64[s]", "structured"]


@st.composite
def npy_case(draw: st.DrawFn, folder: Path) -> Case:
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    if draw(st.booleans()):
        shape = tuple(max(2, s) for s in shape)
    name = draw(st.sampled_from(NPY_DTYPES))
    path = folder / "image.npy"
    planted = ""
    if name == "object":
        data = np.empty(shape, dtype=object)
        data.fill(1.0)
    elif name == "structured":
        data = np.zeros(shape, dtype=[("a", "f4"), ("b", "i2")])
    elif name in ("<U3", "S3"):
        data = np.full(shape, "1.5", dtype=name)
    elif name == "datetime64[s]":
        data = np.zeros(shape, dtype=name)
    else:
        data, planted = fill_values(draw, shape, np.dtype(name))
    if draw(st.booleans()) and data.ndim >= 2:
        data = np.asfortranarray(data)
    np.save(path, data, allow_pickle=True)
    case = Case("npy", f"shape {shape} {name}{' with ' + planted if planted else ''}", path)
    case.finite = all_finite(data) if data.dtype.kind in "biufc" else True
    if name == "object":
        case.must_fail = "an object array is a pickle"
    if data.dtype.kind in "iuf" and data.ndim in (2, 3):
        expected = data if data.ndim == 3 else data[None]
        case.shape, case.values = expected.shape, expected.astype(np.float64)
    if planted in ("1e300", "-1e300") and name == "float64":
        case.must_fail = "a value beyond float32's range would become Inf"
    if draw(st.integers(0, 3)) == 0:
        what, blob = draw(byte_mutation(path.read_bytes(), header=128))
        path.write_bytes(blob)
        case.mutation += f"; {what}"
        case.shape = case.values = None
        case.must_fail = None if name != "object" else case.must_fail
        case.finite = case.finite and not changes_values(what)
    return case


# --- HDF5 k-space -----------------------------------------------------------------------------------


def random_kspace(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


KSPACE_MUTATIONS = [
    "none",
    "no kspace",
    "extra datasets",
    "kspace group",
    "real",
    "int",
    "complex128",
    "3-D single coil",
    "2-D",
    "5-D",
    "0 coils",
    "0 slices",
    "0 columns",
    "nan",
    "inf",
    "scale 1e30",
    "scale 1e-30",
    "zeros",
    "mask wrong length",
    "mask 0/255",
    "mask all zeros",
    "mask without centre",
    "mask 2-D",
    "mask bool",
    "mask 0.5",
    "mask strings",
    "mask nan",
    "mask group",
    "rss group",
    "rss strings",
    "header not utf-8",
    "header int",
    "bytes",
]


# Mutations after which the k-space and mask read back exactly as written.
KSPACE_KNOWN = {"none", "extra datasets", "3-D single coil", "complex128", "scale 1e30", "scale 1e-30"}
KSPACE_KNOWN |= {"mask 0/255", "mask bool", "rss group", "rss strings", "header not utf-8", "header int"}


@dataclass
class KSpaceCase(Case):
    """A k-space case; ``mask`` is the sampling mask a correct read returns (None: not fixed), and
    ``unusable`` says why a reconstruction must refuse the data (None: usable)."""

    mask: np.ndarray | None = None
    unusable: str | None = None


@st.composite
def fastmri_case(draw: st.DrawFn, folder: Path) -> KSpaceCase:
    import h5py

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    mutation = draw(st.sampled_from(KSPACE_MUTATIONS))
    kspace = random_kspace(rng, (s, c, h, w))
    mask = np.zeros(w, dtype=np.float32)
    mask[:: draw(st.integers(1, 3))] = 1
    mask[w // 2 - 1 : w // 2 + 2] = 1
    with_mask = draw(st.booleans()) or mutation.startswith("mask")
    if with_mask:
        kspace = kspace * mask
    path = folder / draw(st.sampled_from(["raw.h5", "raw.hdf5", "raw"]))
    case = KSpaceCase("fastmri", mutation + ("" if with_mask else " (mask from data)"), path)
    case.shape, case.values = (s, c, h, w), kspace
    expected_mask = mask if with_mask else (np.abs(kspace).reshape(-1, w).max(axis=0) > 0).astype(np.float32)
    with h5py.File(path, "w") as f:
        data: Any = kspace
        if mutation == "real":
            data = kspace.real
        elif mutation == "int":
            data = (kspace.real * 100).astype(np.int16)
        elif mutation == "complex128":
            data = kspace.astype(np.complex128)
        elif mutation == "3-D single coil":
            data = kspace[:, 0]
            case.shape, case.values = (s, 1, h, w), kspace[:, :1]
        elif mutation == "2-D":
            data = kspace[0, 0]
        elif mutation == "5-D":
            data = kspace[None]
        elif mutation == "0 coils":
            data = kspace[:, :0]
        elif mutation == "0 slices":
            data = kspace[:0]
        elif mutation == "0 columns":
            data, mask = kspace[..., :0], mask[:0]
            expected_mask = mask
        elif mutation in ("nan", "inf"):
            data = kspace.copy()
            data.flat[draw(cut_points(data.size))] = np.nan if mutation == "nan" else np.inf
            case.finite = False
        elif mutation in ("scale 1e30", "scale 1e-30"):
            data = kspace * np.float32(1e30 if mutation == "scale 1e30" else 1e-30)
            case.values = data
            case.valid = "finite float32 k-space on another scale"
        elif mutation == "zeros":
            data = np.zeros_like(kspace)
            expected_mask = expected_mask if with_mask else np.zeros(w, np.float32)
            case.unusable = "k-space of zeros holds no signal"
        if mutation == "kspace group":
            f.create_group("kspace").create_dataset("kspace", data=kspace)
        elif mutation != "no kspace":
            f.create_dataset("kspace", data=data)
        if mutation == "extra datasets":
            f.create_dataset("other", data=np.arange(3))
            f.create_group("group")
        if with_mask:
            m: Any = mask
            if mutation == "mask wrong length":
                m = np.ones(w + draw(st.sampled_from([-2, -1, 1, 5])), np.float32)
            elif mutation == "mask 0/255":
                m = (mask * 255).astype(np.uint8)
            elif mutation == "mask all zeros":
                m = np.zeros(w, np.float32)
                case.unusable = "a mask that samples nothing"
            elif mutation == "mask without centre":
                m = mask.copy()
                m[w // 2 - 1 : w // 2 + 2] = 0
                case.unusable = "a mask without the k-space centre (no ACS lines for coil maps)"
            elif mutation == "mask 2-D":
                m = np.tile(mask, (h, 1))
            elif mutation == "mask bool":
                m = mask.astype(bool)
            elif mutation == "mask 0.5":
                m = mask * 0.5
            elif mutation == "mask strings":
                m = np.array([b"1"] * w)
            elif mutation == "mask nan":
                m = mask.copy()
                m[0] = np.nan
                case.finite = False
            if mutation == "mask group":
                f.create_group("mask")
            else:
                f.create_dataset("mask", data=m)
        if mutation == "rss group":
            f.create_group("reconstruction_rss")
        elif mutation == "rss strings":
            f.create_dataset("reconstruction_rss", data=np.array([b"abc"]))
        else:
            f.create_dataset("reconstruction_rss", data=np.abs(kspace[:, 0]).astype(np.float32))
        if mutation == "header not utf-8":
            f.attrs["ismrmrd_header"] = np.void(b"\xff\xfe<ismrmrdHeader/>")
        elif mutation == "header int":
            f.attrs["ismrmrd_header"] = 3
        else:
            f.attrs["ismrmrd_header"] = "<ismrmrdHeader/>"
    if mutation in KSPACE_KNOWN:
        case.mask = expected_mask
    else:
        case.shape = case.values = None
    if mutation == "bytes":
        what, blob = draw(byte_mutation(path.read_bytes(), header=2048))
        path.write_bytes(blob)
        case.mutation += f": {what}"
        case.finite = not changes_values(what)
    return case


def ismrmrd_header(readout: int, n_pe: int, slices: int, center: int) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{readout}</x><y>{n_pe}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{readout}</x><y>{n_pe}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{n_pe - 1}</maximum><center>{center}</center>
      </kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>{slices - 1}</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>"""


ISMRMRD_MUTATIONS = [
    "none",
    "no header",
    "garbage header",
    "header matrix 0",
    "header slices 0",
    "header centre out of range",
    "acquisition coils differ",
    "line out of range",
    "slice out of range",
    "only noise",
    "no acquisitions",
    "nan sample",
    "bytes",
]


@st.composite
def ismrmrd_case(draw: st.DrawFn, folder: Path) -> KSpaceCase:
    import ismrmrd

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 10)), draw(st.integers(4, 10))
    mutation = draw(st.sampled_from(ISMRMRD_MUTATIONS))
    kspace = random_kspace(rng, (s, c, h, w))
    path = folder / "raw.h5"
    case = KSpaceCase("ismrmrd", mutation, path)
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        n_pe, slices, center = w, s, w // 2
        if mutation == "header matrix 0":
            n_pe = 0
        elif mutation == "header slices 0":
            slices = 0
        elif mutation == "header centre out of range":
            center = w + 7
        if mutation == "garbage header":
            dataset.write_xml_header("<ismrmrdHeader><encoding>nonsense")
        elif mutation != "no header":
            dataset.write_xml_header(ismrmrd_header(h, n_pe, slices, center))
        noise = ismrmrd.Acquisition.from_array(np.ones((c, h), dtype=np.complex64))
        noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        if mutation != "no acquisitions":
            dataset.append_acquisition(noise)
        if mutation not in ("only noise", "no acquisitions"):
            for si in range(s):
                for line in range(w):
                    data = kspace[si, :, :, line]
                    if mutation == "acquisition coils differ" and si == s - 1 and line == w - 1:
                        data = np.ones((c + 1, h), dtype=np.complex64)
                    if mutation == "nan sample" and si == 0 and line == 0:
                        data = data.copy()
                        data[0, 0] = np.nan
                    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data))
                    acq.idx.kspace_encode_step_1 = line + (w + 3 if mutation == "line out of range" else 0)
                    acq.idx.slice = si + (s + 1 if mutation == "slice out of range" else 0)
                    dataset.append_acquisition(acq)
    finally:
        dataset.close()
    if mutation == "none":
        case.shape, case.values = kspace.shape, kspace
    case.mask = np.ones(w, np.float32) if mutation == "none" else None
    case.finite = mutation != "nan sample"
    if mutation == "bytes":
        what, blob = draw(byte_mutation(path.read_bytes(), header=2048))
        path.write_bytes(blob)
        case.mutation += f": {what}"
        case.finite = not changes_values(what)
    return case


def kspace_problems(result: Any, case: Case) -> list[str]:
    problems = array_problems(result.kspace, case)
    if result.kspace.dtype != np.complex64 or result.kspace.ndim != 4:
        problems.append(
            f"k-space {result.kspace.dtype} {result.kspace.shape}, expected complex64 [S, C, H, W]"
        )
    mask = np.asarray(result.mask)
    if mask.shape != result.kspace.shape[-1:]:
        problems.append(f"mask of shape {mask.shape} for {result.kspace.shape[-1]} columns")
    elif mask.size and not np.isin(mask, (0.0, 1.0)).all():
        problems.append(f"mask holds values other than 0/1 ({sorted(set(np.unique(mask).tolist()))[:4]})")
    elif isinstance(case, KSpaceCase) and case.mask is not None and not np.array_equal(mask, case.mask):
        problems.append("mask differs from the file's sampling pattern")
    return problems


# --- checkpoints ------------------------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=8)
)
RANDOM_JSON = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CHECKPOINT_KEYS = ("format", "model", "model_options", "spec", "layer_shapes", "step", "metrics", "config")
ODD_VALUES: list[Any] = [None, 0, -1, 2.5, "", "x", [], {}, [1, 2], {"a": 1}, True, "rdn_tiny", "modl_small"]
ODD_VALUES += ["srgan_small", "rdn", {"scale": 3}, {"scale": "two"}, {"bogus": 1}, {"scale": 0}]


def json_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON object (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths += json_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            paths += json_paths(value, (*prefix, index))
    return paths


@st.composite
def checkpoint_json_mutation(draw: st.DrawFn, meta: dict[str, Any]) -> tuple[str, bytes]:
    """A mutated checkpoint.json: another JSON type, not UTF-8, truncated, a key deleted or retyped."""
    kind = draw(st.sampled_from(["replace", "bytes", "delete", "retype", "retype", "retype"]))
    if kind == "replace":
        value = draw(st.one_of(st.sampled_from([[], [meta], {}, None, 3, "x"]), RANDOM_JSON))
        return f"checkpoint.json replaced by {json.dumps(value)[:60]}", json.dumps(value).encode()
    if kind == "bytes":
        text = json.dumps(meta, indent=2).encode()
        choice = draw(st.sampled_from(["latin-1", "utf-16", "truncate", "bom"]))
        if choice == "latin-1":
            return "checkpoint.json not UTF-8 (latin-1 bytes)", text.replace(
                b'"rdn_small"', b'"rdn_sm\xe4ll"'
            )
        if choice == "utf-16":
            return "checkpoint.json in UTF-16", json.dumps(meta).encode("utf-16")
        if choice == "bom":
            return "checkpoint.json with a UTF-8 BOM", b"\xef\xbb\xbf" + text
        cut = draw(cut_points(len(text)))
        return f"checkpoint.json truncated at byte {cut}", text[:cut]
    paths = [p for p in json_paths(meta) if p[0] in CHECKPOINT_KEYS and p[0] != "config"] or [("model",)]
    paths = [p for p in paths if p[0] != "metrics"] or paths
    where = draw(st.sampled_from(paths[:400]))
    mutated = json.loads(json.dumps(meta))
    parent = mutated
    for key in where[:-1]:
        parent = parent[key]
    if kind == "delete":
        if isinstance(parent, list):
            parent.pop(where[-1])
        else:
            del parent[where[-1]]
        return f"checkpoint.json without {'.'.join(map(str, where))}", json.dumps(mutated).encode()
    value = draw(st.one_of(st.sampled_from(ODD_VALUES), RANDOM_JSON))
    parent[where[-1]] = value
    return f"checkpoint.json {'.'.join(map(str, where))} = {json.dumps(value)[:60]}", json.dumps(
        mutated
    ).encode()


@st.composite
def weights_mutation(draw: st.DrawFn, blob: bytes) -> tuple[str, bytes | None]:
    """model.safetensors missing, empty, truncated, random, a torch pickle, or its header damaged."""
    kind = draw(
        st.sampled_from(["missing", "empty", "truncate", "random", "pickle", "header", "header-length"])
    )
    if kind == "missing":
        return "model.safetensors missing", None
    if kind == "empty":
        return "model.safetensors empty", b""
    if kind == "truncate":
        cut = draw(cut_points(len(blob)))
        return f"model.safetensors truncated at byte {cut}", blob[:cut]
    if kind == "random":
        return "model.safetensors random bytes", draw(st.binary(min_size=1, max_size=256))
    if kind == "pickle":
        import torch

        buffer = io.BytesIO()
        torch.save({"weight": torch.zeros(2)}, buffer)
        return "model.safetensors is a torch pickle", buffer.getvalue()
    header_length = struct.unpack("<Q", blob[:8])[0]
    if kind == "header-length":
        value = draw(st.sampled_from([0, 1, header_length - 1, header_length + 1, len(blob), 2**63]))
        return f"model.safetensors header length {value}", struct.pack("<Q", value) + blob[8:]
    data = bytearray(blob)
    offset = draw(st.integers(8, 8 + header_length - 1))
    data[offset] ^= draw(st.integers(1, 255))
    return f"model.safetensors header byte {offset} flipped", bytes(data)


# --- prepared data set ------------------------------------------------------------------------------


def write_dataset(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """A minimal valid prepared data set at ``root`` (one 4-slice MR volume); returns its manifest."""
    folder = root / "v2"
    (folder / "volumes").mkdir(parents=True)
    volume = rng.random((4, 6, 5)).astype(np.float32) + 0.1
    np.save(folder / "volumes" / "vol.npy", volume)
    manifest = {
        "format": "edgesr-dataset",
        "version": 1,
        "created_by": "edgesr fuzz",
        "fingerprint": {"version": 1},
        "split_policy": {"seed": 0},
        "volumes": [
            {
                "name": "vol",
                "modality": "MR",
                "description": "fuzz volume",
                "package": "none",
                "license": "CC0",
                "input_path": "/nowhere",
                "input_sha256": "0" * 64,
                "file": "volumes/vol.npy",
                "shape": list(volume.shape),
                "spacing_mm": [1.0, 1.0, 1.0],
                "max_intensity": float(volume.max()),
                "splits": {"train": [0, 1], "val": [2], "test": [3]},
            }
        ],
        "unavailable": [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@st.composite
def manifest_mutation(draw: st.DrawFn, manifest: dict[str, Any]) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["replace", "bytes", "delete", "retype", "retype", "index"]))
    if kind == "replace":
        value = draw(
            st.one_of(st.sampled_from([{}, [], None, {"volumes": []}, {"volumes": {}}]), RANDOM_JSON)
        )
        return f"manifest replaced by {json.dumps(value)[:60]}", json.dumps(value).encode()
    if kind == "bytes":
        text = json.dumps(manifest).encode()
        cut = draw(cut_points(len(text)))
        return draw(
            st.sampled_from([(f"manifest truncated at {cut}", text[:cut]), ("manifest latin-1", b"\xe4")])
        )
    mutated = json.loads(json.dumps(manifest))
    if kind == "index":
        split = draw(st.sampled_from(["train", "val", "test"]))
        value = draw(st.sampled_from([-1, 4, 99, -5, 1.5, "0", None]))
        mutated["volumes"][0]["splits"][split] = [value]
        return f"manifest splits.{split} = [{value!r}]", json.dumps(mutated).encode()
    where = draw(st.sampled_from(json_paths(mutated)))
    parent = mutated
    for key in where[:-1]:
        parent = parent[key]
    if kind == "delete":
        parent.pop(where[-1])
        return f"manifest without {'.'.join(map(str, where))}", json.dumps(mutated).encode()
    value = draw(
        st.one_of(st.sampled_from(ODD_VALUES + ["../../../etc/passwd", "/etc/hostname"]), RANDOM_JSON)
    )
    parent[where[-1]] = value
    return f"manifest {'.'.join(map(str, where))} = {json.dumps(value)[:60]}", json.dumps(mutated).encode()


# --- DICOM cases ------------------------------------------------------------------------------------


@st.composite
def dicom_file_case(draw: st.DrawFn, folder: Path) -> Case:
    """One DICOM file: valid MR/CT of 8/16/32 bits, signed or not, single- or multi-frame, then
    up to two tag mutations and sometimes a byte-level one."""
    bits, signed = draw(st.sampled_from([8, 16, 16, 32])), draw(st.booleans())
    frames = draw(st.sampled_from([None, None, None, 1, 2, 3]))
    rows, cols = draw(SMALL), draw(SMALL)
    shape = (rows, cols) if frames is None else (frames, rows, cols)
    stored = stored_pixels(draw, shape, bits, signed)
    modality = draw(st.sampled_from(["MR", "CT"]))
    slope = draw(st.sampled_from([1.0, 1.0, 0.5, 2.0, 1e-3]))
    intercept = draw(st.sampled_from([0.0, -1024.0, 100.5]))
    padding = int(stored.flat[0]) if draw(st.booleans()) else None
    ds = dicom_dataset(
        stored, modality=modality, bits=bits, signed=signed, slope=slope, intercept=intercept, padding=padding
    )
    mutations = draw(st.lists(tag_mutation(), max_size=2))
    for mutation in mutations:
        apply_tag_mutation(ds, mutation)
    path = folder / draw(st.sampled_from(["img.dcm", "IMG0001", "img.DCM"]))
    made = f"{modality} {bits}-bit {'signed' if signed else 'unsigned'} {shape}"
    made += f" slope {slope} intercept {intercept}"
    made += f"{' padding ' + str(padding) if padding is not None else ''}"
    try:
        blob = save_dicom(ds, path)
    except Exception as exc:
        path.write_bytes(b"")
        return Case(
            "dicom", f"{made}; {mutations}: pydicom cannot write it ({type(exc).__name__}); empty", path
        )
    case = Case("dicom", made + (f"; tags {mutations}" if mutations else ""), path)
    if not mutations:
        expected = rescale_values(stored if stored.ndim == 3 else stored[None], slope, intercept)
        case.shape, case.values = expected.shape, expected
    else:
        case.must_fail = dicom_length_mismatch(ds)
        overflow = ("nan", "inf", "-inf", "1e400")  # a rescale that makes the values themselves NaN/Inf
        case.finite = not any(m[1] in DS_TAGS and m[2] in overflow for m in mutations)
    if draw(st.integers(0, 3)) == 0:
        what, data = draw(byte_mutation(blob, header=400))
        path.write_bytes(data)
        case.mutation += f"; {what}"
        case.shape = case.values = None
        case.must_fail = "the pixel data was truncated" if what.startswith("truncated") else None
        case.finite = case.finite and not changes_values(what)
    return case


SERIES_MUTATIONS = [
    "none",
    "duplicate position",
    "different sizes",
    "truncated member",
    "second series",
    "one without ImagePositionPatient",
    "one without ImageOrientationPatient",
    "orientation flipped",
    "per-slice rescale",
    "non-DICOM files beside",
    "file without pixel data beside",
    "subfolder",
    "one multi-frame",
    "one 8-bit",
]


@st.composite
def dicom_series_case(draw: st.DrawFn, folder: Path) -> Case:
    """A folder of 2-4 single-frame slices written in shuffled file order, sometimes broken."""
    n, rows, cols = draw(st.integers(2, 4)), draw(SMALL), draw(SMALL)
    signed = draw(st.booleans())
    mutation = draw(st.sampled_from(SERIES_MUTATIONS))
    series = folder / "series"
    series.mkdir()
    order = draw(st.permutations(range(n)))
    orientation = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0) if mutation == "orientation flipped" else (1, 0, 0, 0, 1, 0)
    slopes = [1.0 + (0.5 * k if mutation == "per-slice rescale" else 0.0) for k in range(n)]
    slices, datasets = [], []
    for k in range(n):
        size = (rows + 1, cols) if mutation == "different sizes" and k == n - 1 else (rows, cols)
        stored = stored_pixels(draw, size, 16, signed)
        z = -10.0 + 2.5 * k
        if mutation == "duplicate position" and k == n - 1:
            z -= 2.5
        ds = dicom_dataset(
            stored,
            signed=signed,
            slope=slopes[k],
            position=(0.0, 0.0, z),
            orientation=tuple(float(v) for v in orientation),
            instance=k + 1,
            series_uid=SERIES_UID + (".2" if mutation == "second series" and k == n - 1 else ""),
        )
        if k == n // 2 and mutation == "one without ImagePositionPatient":
            del ds.ImagePositionPatient
        if k == n // 2 and mutation == "one without ImageOrientationPatient":
            del ds.ImageOrientationPatient
        if k == n // 2 and mutation == "one multi-frame":
            ds = dicom_dataset(
                np.stack([stored, stored]), signed=signed, position=(0.0, 0.0, z), instance=k + 1
            )
        if k == n // 2 and mutation == "one 8-bit":
            ds = dicom_dataset(np.clip(stored, 0, 255), bits=8, position=(0.0, 0.0, z), instance=k + 1)
            stored = np.clip(stored, 0, 255)
        slices.append(rescale_values(stored, slopes[k], 0.0))
        datasets.append(ds)
    for file_index, k in enumerate(order):
        save_dicom(datasets[k], series / f"img{file_index}.dcm")
    case = Case("dicom-series", f"{n} slices {rows}x{cols}: {mutation}", series)
    case.names = sorted(p.name for p in series.iterdir())
    if mutation == "truncated member":
        victim = series / f"img{draw(st.integers(0, n - 1))}.dcm"
        blob = victim.read_bytes()
        cut = draw(st.integers(0, len(blob) - 1))
        victim.write_bytes(blob[:cut])
        case.mutation += f" ({victim.name} cut at byte {cut} of {len(blob)})"
        case.must_fail = "a slice of the series is truncated: a result would lack it"
    elif mutation == "duplicate position":
        case.must_fail = "two slices at the same position"
    elif mutation == "different sizes":
        case.must_fail = "slices of different sizes"
    elif mutation in ("second series", "one multi-frame"):
        pass  # an error, or a read of one consistent series
    else:
        if mutation == "non-DICOM files beside":
            (series / "notes.txt").write_text("notes")
            (series / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        if mutation == "file without pixel data beside":
            ds = dicom_dataset(np.zeros((2, 2)), position=(0.0, 0.0, 99.0))
            del ds.PixelData
            save_dicom(ds, series / "zz_report.dcm")
        if mutation == "subfolder":
            (series / "sub").mkdir()
            save_dicom(datasets[0], series / "sub" / "copy.dcm")
        expected = np.stack(slices)
        if mutation == "orientation flipped":
            expected = expected[::-1]
        case.shape, case.values = expected.shape, expected
    return case


def image_problems(result: Any, case: Case) -> list[str]:
    """An ImageVolume: float32 [S, H, W] as the file holds it, usable spacing and a dtype that holds it."""
    data = result.data
    problems = []
    if data.dtype != np.float32 or data.ndim != 3:
        problems.append(f"data {data.dtype} {data.shape}, expected float32 [S, H, W]")
        return problems
    problems += array_problems(data, case)
    if min(data.shape, default=0) and min(data.shape[1:]) < 2:
        problems.append(f"image of shape {data.shape} is too small for any model")
    spacing = np.asarray(result.spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        problems.append(f"spacing {result.spacing} is not three positive finite numbers")
    if result.affine is not None and not np.isfinite(result.affine).all():
        problems.append("affine holds NaN/Inf")
    try:
        dtype = np.dtype(result.dtype)
    except TypeError:
        problems.append(f"dtype {result.dtype!r} is not a NumPy type")
    else:
        if dtype.kind in "iu" and data.size and np.isfinite(data).all():
            info = np.iinfo(dtype)
            if data.min() < info.min or data.max() > info.max:
                problems.append(f"values [{data.min():g}, {data.max():g}] do not fit its dtype {dtype}")
        elif dtype.kind not in "iuf":
            problems.append(f"dtype {dtype} cannot be written back")
    if result.padding is not None and result.padding.shape != data.shape:
        problems.append(f"padding mask {result.padding.shape} does not match the data {data.shape}")
    return problems


# --- CLI --------------------------------------------------------------------------------------------


@dataclass
class CliRun:
    code: int | None
    output: str
    exc: BaseException | None


def run_cli(argv: list[str]) -> CliRun:
    """``edgesr.cli.main(argv)`` with stdout and stderr captured; an exception escaping main would be a
    traceback for the user."""
    from edgesr.cli import main

    buffer = io.StringIO()
    os.environ.pop("EDGESR_DEBUG", None)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), time_limit():
            code = main(argv)
    except Hang as exc:
        return CliRun(None, buffer.getvalue(), exc)
    except BaseException as exc:  # SystemExit too: main returns its exit code, it never exits
        return CliRun(None, buffer.getvalue() + "\nTraceback (escaped main)", exc)
    return CliRun(code, buffer.getvalue(), None)


def leftovers(folder: Path, before: set[str]) -> list[str]:
    """Files that appeared in ``folder`` (recursively) and are not the expected output."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if str(p.relative_to(folder)) not in before
    )
