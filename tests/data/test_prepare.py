from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rich.console import Console

import edgesr.data.prepare as prepare_module
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import (
    PrepareConfig,
    dataset_fingerprint,
    fingerprint_differences,
    prepare_dataset,
    usable_slices,
)
from edgesr.data.sources import SOURCES, Source, SourceVolume, get_source
from edgesr.data.splits import EXTERNAL_SLICES_PER_VOLUME, SplitPolicy, split_slices
from edgesr.errors import DataError, SourceUnavailableError
from tests.conftest import needs_real_data


def test_splits_are_disjoint_and_separated_by_the_gap():
    indices = list(range(5, 170))
    policy = SplitPolicy(block=12, gap=2)
    splits = split_slices(indices, policy)
    owner = {i: name for name, members in splits.items() for i in members}
    assert sum(len(m) for m in splits.values()) == len(owner)  # disjoint
    for i, name in owner.items():
        for j in range(i - policy.gap, i + policy.gap + 1):
            assert owner.get(j, name) == name, (
                f"slice {j} ({owner.get(j)}) is within {policy.gap} of {i} ({name})"
            )
    assert all(splits[name] for name in ("train", "val", "test"))
    # Test blocks are spread over the volume, not bunched at one end.
    assert min(splits["test"]) < 60 and max(splits["test"]) > 100


def test_usable_slices_drop_empty_slices():
    volume = np.zeros((6, 20, 20), dtype=np.float32)
    volume[2:5, 4:16, 4:16] = 100.0
    assert usable_slices(volume) == [2, 3, 4]


def _fake_sources(tmp_path, modality_volumes):
    sources = []
    for name, modality, volume in modality_volumes:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(volume.tobytes())
        sources.append(
            Source(
                name,
                modality,
                "synthetic",
                "test",
                "CC0",
                locate=lambda p=path: p,
                load=lambda p, v=volume: SourceVolume(v, (1.0, 1.0, 1.0)),
            )
        )
    return tuple(sources)


def test_prepare_is_idempotent_and_rebuilds_on_force(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    volume = rng.random((60, 21, 19)).astype(np.float32) + 0.5
    monkeypatch.setattr(prepare_module, "SOURCES", _fake_sources(tmp_path, [("fake-mr", "MR", volume)]))
    root = tmp_path / "cache"
    first = prepare_dataset(PrepareConfig(root=str(root)))
    manifest_path = root / "v2" / "manifest.json"
    stamp = manifest_path.stat().st_mtime_ns
    second = prepare_dataset(PrepareConfig(root=str(root)))
    assert second == first and manifest_path.stat().st_mtime_ns == stamp
    prepare_dataset(PrepareConfig(root=str(root), force=True))
    assert manifest_path.stat().st_mtime_ns != stamp
    dataset = PreparedDataset(root)
    test_slices = list(dataset.slices("test"))
    assert test_slices and all(s.image.shape == (21, 19) for s in test_slices)
    np.testing.assert_array_equal(test_slices[0].image, volume[test_slices[0].slice_index])
    assert test_slices[0].volume_max == pytest.approx(float(volume.max()))


def test_a_cache_prepared_by_other_code_is_rebuilt_and_other_pixels_are_named(tmp_path, monkeypatch):
    # A cache whose inputs are the same files but which older code read or split differently must not
    # be trusted: that once left published figures on a data set a fresh machine could not rebuild.
    volume = np.random.default_rng(3).random((60, 21, 19)).astype(np.float32) + 0.5
    monkeypatch.setattr(prepare_module, "SOURCES", _fake_sources(tmp_path, [("fake-mr", "MR", volume)]))
    root = tmp_path / "cache"
    first = prepare_dataset(PrepareConfig(root=str(root)))
    manifest_path = root / "v2" / "manifest.json"
    stamp = manifest_path.stat().st_mtime_ns
    monkeypatch.setattr(prepare_module, "_rules_sha256", lambda: "0" * 64)
    rebuilt = prepare_dataset(PrepareConfig(root=str(root)))
    assert manifest_path.stat().st_mtime_ns != stamp
    assert rebuilt["id"] == first["id"]  # the same content: the same data set

    # The same input file read into other pixels (a changed loader) is another data set, and says so.
    flipped = _fake_sources(tmp_path, [("fake-mr", "MR", volume)])[0]
    flipped = dataclasses.replace(
        flipped, load=lambda p: SourceVolume(volume[:, ::-1].copy(), (1.0, 1.0, 1.0))
    )
    monkeypatch.setattr(prepare_module, "SOURCES", (flipped,))
    monkeypatch.setattr(prepare_module, "_rules_sha256", lambda: "1" * 64)
    other = prepare_dataset(PrepareConfig(root=str(root)))
    assert other["id"] != first["id"]
    assert fingerprint_differences(dataset_fingerprint(first), dataset_fingerprint(other)) == [
        "fake-mr: the same file read into other pixels (another loader)"
    ]
    # A card written before pixel checksums were recorded is not reported as another loader.
    legacy = dataset_fingerprint(first)
    for source in legacy["sources"]:
        source["data_sha256"] = "unknown"
    legacy["id"] = "legacy"
    assert fingerprint_differences(legacy, dataset_fingerprint(first)) == [
        "version or split policy (data set 2 -> 2)"
    ]


def test_prepare_redoes_an_interrupted_run(tmp_path, monkeypatch):
    volume = np.ones((30, 8, 8), dtype=np.float32)
    monkeypatch.setattr(prepare_module, "SOURCES", _fake_sources(tmp_path, [("fake", "CT", volume)]))
    root = tmp_path / "cache"
    prepare_dataset(PrepareConfig(root=str(root)))
    (file,) = (root / "v2" / "volumes").iterdir()
    file.unlink()  # as if the run had died after the manifest... or a user deleted it
    prepare_dataset(PrepareConfig(root=str(root)))
    assert file.is_file()


def test_prepare_without_any_source_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "SOURCES", ())
    with pytest.raises(SourceUnavailableError, match=r"\.ci/setup"):
        prepare_dataset(PrepareConfig(root=str(tmp_path)))


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text("{ not json")
    with pytest.raises(DataError, match="corrupt manifest"):
        PreparedDataset(tmp_path)


def test_unknown_source_name():
    with pytest.raises(DataError, match="known: colin27-t1"):
        get_source("colin28")


@pytest.mark.data
@needs_real_data
@pytest.mark.parametrize("name", [s.name for s in SOURCES])
def test_real_sources_load_as_non_negative_axial_volumes(name):
    source = get_source(name)
    loaded = source.load(source.locate())
    assert loaded.data.ndim == 3 and loaded.data.dtype == np.float32
    assert float(loaded.data.min()) >= 0 and float(loaded.data.max()) > 0
    # Training volumes are whole heads; an external source may be one slice (a DICOM image).
    assert len(usable_slices(loaded.data)) > (40 if source.role == "train" else 0)
    if source.modality == "CT":
        # HU + 1024: air near 0, soft tissue near 1024 + 40.
        assert np.median(loaded.data[loaded.data > 500]) == pytest.approx(1064, abs=150)


def test_external_sources_are_held_out_whole_and_the_fingerprint_follows_the_sources(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    trained = rng.random((70, 21, 19)).astype(np.float32) + 0.5
    held_out = rng.random((50, 17, 15)).astype(np.float32) + 0.5
    sources = _fake_sources(tmp_path, [("fake-mr", "MR", trained), ("other-mr", "MR", held_out)])
    sources = (sources[0], dataclasses.replace(sources[1], role="external"))
    monkeypatch.setattr(prepare_module, "SOURCES", sources)
    root = tmp_path / "cache"
    manifest = prepare_dataset(PrepareConfig(root=str(root)))
    dataset = PreparedDataset(root)
    external = [s.volume for s in dataset.slices("external")]
    assert set(external) == {"other-mr"} and len(external) == EXTERNAL_SLICES_PER_VOLUME
    for split in ("train", "val", "test"):
        assert {s.volume for s in dataset.slices(split)} == {"fake-mr"}
    # The same inputs give the same fingerprint; the id is in the manifest.
    assert dataset.fingerprint["id"] == manifest["id"] == dataset_fingerprint(manifest)["id"]
    assert [s["role"] for s in dataset.fingerprint["sources"]] == ["train", "external"]

    # One source fewer (its package uninstalled): a new fingerprint, and prepare says what changed.
    monkeypatch.setattr(prepare_module, "SOURCES", sources[:1])
    console = Console(record=True, width=300)
    changed = prepare_dataset(PrepareConfig(root=str(root)), console=console)
    assert changed["id"] != manifest["id"]
    said = console.export_text()
    assert "the data set changed" in said and "other-mr missing" in said
    assert fingerprint_differences(dataset.fingerprint, PreparedDataset(root).fingerprint) == [
        "other-mr missing (test not installed?)"
    ]


def test_a_restricted_data_set_keeps_only_the_named_volumes(tmp_path, monkeypatch):
    volume = np.random.default_rng(2).random((60, 12, 12)).astype(np.float32) + 0.5
    monkeypatch.setattr(
        prepare_module, "SOURCES", _fake_sources(tmp_path, [("a-mr", "MR", volume), ("b-ct", "CT", volume)])
    )
    prepare_dataset(PrepareConfig(root=str(tmp_path / "cache")))
    dataset = PreparedDataset(tmp_path / "cache")
    only = dataset.restricted(["b-ct"])
    assert [v["name"] for v in only.volumes()] == ["b-ct"] and len(dataset.volumes()) == 2
    assert only.fingerprint["id"] != dataset.fingerprint["id"]
    with pytest.raises(DataError, match="no volume 'c' in the data set"):
        dataset.restricted(["c"])


def test_a_source_role_is_checked():
    with pytest.raises(ValueError, match="role must be one of"):
        Source("x", "MR", "d", "p", "l", locate=lambda: None, load=lambda p: None, role="test")  # type: ignore[arg-type,return-value]
