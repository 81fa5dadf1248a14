from __future__ import annotations

import numpy as np
import pytest

import edgesr.data.prepare as prepare_module
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import PrepareConfig, prepare_dataset, usable_slices
from edgesr.data.sources import SOURCES, Source, SourceVolume, get_source
from edgesr.data.splits import SplitPolicy, split_slices
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
    manifest_path = root / "v1" / "manifest.json"
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


def test_prepare_redoes_an_interrupted_run(tmp_path, monkeypatch):
    volume = np.ones((30, 8, 8), dtype=np.float32)
    monkeypatch.setattr(prepare_module, "SOURCES", _fake_sources(tmp_path, [("fake", "CT", volume)]))
    root = tmp_path / "cache"
    prepare_dataset(PrepareConfig(root=str(root)))
    (
        root / "v1" / "volumes" / "fake.npy"
    ).unlink()  # as if the run had died after the manifest... or a user deleted it
    prepare_dataset(PrepareConfig(root=str(root)))
    assert (root / "v1" / "volumes" / "fake.npy").is_file()


def test_prepare_without_any_source_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "SOURCES", ())
    with pytest.raises(SourceUnavailableError, match=r"\.ci/setup"):
        prepare_dataset(PrepareConfig(root=str(tmp_path)))


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "manifest.json").write_text("{ not json")
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
    assert len(usable_slices(loaded.data)) > 60
    if source.modality == "CT":
        # HU + 1024: air near 0, soft tissue near 1024 + 40.
        assert np.median(loaded.data[loaded.data > 500]) == pytest.approx(1064, abs=150)
