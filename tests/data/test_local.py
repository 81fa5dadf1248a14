"""A site's own scans as sources: `edgesr data prepare local=site.yaml`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

import edgesr.data.prepare as prepare_module
from edgesr.cards import card_data_differences
from edgesr.cli import main
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import PrepareConfig, dataset_fingerprint, fingerprint_differences, prepare_dataset
from edgesr.errors import ConfigError, DataError
from tests.conftest import write_dicom_slice
from tests.data.test_prepare import _fake_sources

ROOT = Path(__file__).resolve().parents[2]


def _head(slices: int, rows: int = 29, cols: int = 23, *, seed: int = 0) -> np.ndarray:
    """A bright ellipse on a dark background, a little different in every slice."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    rng = np.random.default_rng(seed)
    volume = [
        (((yy / 0.8) ** 2 + (xx / (0.6 + 0.002 * k)) ** 2) < 1) * (300 + 40 * np.sin(5 * yy + k / 7))
        + rng.random((rows, cols)) * 5
        for k in range(slices)
    ]
    return np.stack(volume).astype(np.float32)


def _nifti(path, volume_sri: np.ndarray) -> None:
    """Writes [S, H, W] as a NIfTI whose third voxel axis is the slice axis ([H, W, S] on disk)."""
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(volume_sri.transpose(1, 2, 0)), np.diag([0.9, 0.8, 3.0, 1])),
        path,
    )


def _ct_series(folder, hu: np.ndarray) -> None:
    folder.mkdir()
    uid = generate_uid()
    for i, image in enumerate(hu):
        stored = np.round(image + 1024).astype(np.int16)
        write_dicom_slice(
            folder / f"{i:03d}.dcm", stored, position_z=2.0 * i, instance=i + 1, series_uid=uid,
            intercept=-1024.0, signed=True, padding_value=-2000 + 1024,
        )  # fmt: skip


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site's folder: an 80-slice MR NIfTI, two more MR scans (a pattern), a CT DICOM series with
    scanner padding, and a YAML file that lists them (relative paths); no shipped source installed."""
    scans = tmp_path / "scans"
    scans.mkdir()
    _nifti(scans / "subject01.nii.gz", _head(80))
    (scans / "other").mkdir()
    for i in (1, 2):
        _nifti(scans / "other" / f"case{i}.nii", _head(9, 31, 27, seed=i) * 3)
    hu = np.full((4, 21, 19), -1000.0, dtype=np.float32)
    hu[:, 4:17, 3:16] = 40.0
    hu[:, :2, :] = -2000.0  # padding outside the scan circle
    _ct_series(scans / "ct", hu)
    _nifti(scans / "ct_hu.nii", hu)  # CT numbers in a NIfTI: air at -1000
    yaml = tmp_path / "site.yaml"
    yaml.write_text(
        "builtin: false\n"
        "sources:\n"
        "  - {name: knee-pd, path: scans/subject01.nii.gz, modality: MR, description: knee PD}\n"
        "  - {name: other-scanner, path: 'scans/other/*.nii', modality: MR, split: external}\n"
        "  - {name: ct-head, path: scans/ct, modality: CT, split: test}\n"
    )
    monkeypatch.setattr(prepare_module, "SOURCES", _fake_sources(tmp_path, [("fake-mr", "MR", _head(60))]))
    return tmp_path, yaml


def test_a_sites_scans_become_the_data_set_with_their_splits_and_units(site):
    tmp_path, yaml = site
    root = tmp_path / "cache"
    manifest = prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    volumes = {v["name"]: v for v in manifest["volumes"]}
    # builtin: false leaves the shipped sources out; a pattern's matches are named by what varies.
    assert sorted(volumes) == ["ct-head", "knee-pd", "other-scanner-case1", "other-scanner-case2"]
    knee = volumes["knee-pd"]
    assert knee["role"] == "train" and all(knee["splits"][s] for s in ("train", "val", "test"))
    assert knee["spacing_mm"] == pytest.approx([3.0, 0.9, 0.8]) and knee["description"] == "knee PD"
    assert volumes["other-scanner-case2"]["role"] == "external"
    assert volumes["other-scanner-case2"]["splits"]["external"] == list(range(9))
    ct = volumes["ct-head"]
    assert ct["splits"]["test"] == [0, 1, 2, 3] and not ct["splits"]["train"]
    dataset = PreparedDataset(root)
    pixels = dataset.load_volume("ct-head")
    # HU + 1024 clipped at 0, as every shipped CT: air 24 (-1000 HU), tissue 1064, padding air (0).
    assert pixels[0, 10, 10] == pytest.approx(1064.0) and pixels[0, 3, 1] == pytest.approx(24.0)
    assert np.all(pixels[:, :2, :] == 0.0)
    np.testing.assert_allclose(dataset.load_volume("knee-pd"), _head(80), rtol=1e-6)
    # Cards record the fingerprint: it names no path of the site (a folder may be a patient's name).
    fingerprint = json.dumps(dataset.fingerprint)
    assert str(tmp_path) not in fingerprint and "local: a site's scan" in fingerprint
    assert manifest["local_sources"]["sources"][0]["path"] == str(tmp_path / "scans/subject01.nii.gz")


def test_a_later_prepare_keeps_the_sites_scans_and_local_none_drops_them(site, capsys):
    tmp_path, yaml = site
    root = tmp_path / "cache"
    first = prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    manifest_path = root / "v2" / "manifest.json"
    stamp = manifest_path.stat().st_mtime_ns
    again = prepare_dataset(PrepareConfig(root=str(root)))  # e.g. after an upgrade, without local=
    assert again["id"] == first["id"] and manifest_path.stat().st_mtime_ns == stamp
    # A changed split is another data set: rebuilt, and the change named.
    yaml.write_text(yaml.read_text().replace("split: test", "split: val"))
    changed = prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    assert changed["id"] != first["id"]
    assert "ct-head: other splits" in capsys.readouterr().err.replace("\n", " ")
    dropped = prepare_dataset(PrepareConfig(root=str(root), local="none"))
    assert [v["name"] for v in dropped["volumes"]] == ["fake-mr"] and "local_sources" not in dropped
    # The site's pixels leave the cache with them.
    assert [p.name.split("-")[:2] for p in (root / "v2" / "volumes").iterdir()] == [["fake", "mr"]]


def test_builtin_true_keeps_the_shipped_sources_beside_the_sites(site):
    tmp_path, yaml = site
    yaml.write_text(yaml.read_text().replace("builtin: false", "builtin: true"))
    manifest = prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    assert "fake-mr" in {v["name"] for v in manifest["volumes"]}
    assert {v["package_version"] for v in manifest["volumes"] if v["name"] != "fake-mr"} == {"site file"}


@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        ("{name: a, path: scans/ct, modalty: CT}", ConfigError,
         r"unknown key 'sources\.0\.modalty' in .*site\.yaml; did you mean 'sources\.0\.modality'"),
        ("{name: fake-mr, path: scans/ct, modality: CT}", ConfigError, "the name of a shipped source"),
        ("{name: Knee, path: scans/ct}", ConfigError, r"lower-case.* in .*bad/site\.yaml"),
        ("{name: a, path: scans/none.nii}", DataError, r"source 'a': .*none\.nii: no such file"),
        ("{name: a, path: 'scans/*.png', modality: MR}", DataError, r"nothing matches .*\*\.png"),
        ("{name: a, path: scans/ct, modality: MR}", DataError,
         r"scans/ct: a DICOM series of modality CT, listed as MR"),
        ("{name: a, path: scans/subject01.nii.gz, volume: 2}", DataError, "asks for volume 2"),
        ("{name: a, path: scans/subject01.nii.gz, units: hu}", ConfigError, "units='hu' is for CT"),
        ("{name: a, path: scans/subject01.nii.gz, split: later}", ConfigError, "sources.0.split='later'"),
        ("{name: a, path: scans/ct_hu.nii, modality: CT, units: raw}", DataError,
         r"ct_hu\.nii: values down to -2000 with units: raw .*use units: hu"),
    ],
)  # fmt: skip
def test_a_bad_source_is_a_clear_error_and_the_data_set_is_left_as_it_was(site, entry, error, message):
    tmp_path, yaml = site
    root = tmp_path / "cache"
    before = prepare_dataset(PrepareConfig(root=str(root)))
    bad = tmp_path / "bad" / "site.yaml"
    bad.parent.mkdir()
    (bad.parent / "scans").symlink_to(tmp_path / "scans")
    bad.write_text(f"sources:\n  - {entry}\n")
    with pytest.raises(error, match=message):
        prepare_dataset(PrepareConfig(root=str(root), local=str(bad)))
    assert json.loads((root / "v2" / "manifest.json").read_text())["id"] == before["id"]


def test_a_run_that_fails_half_way_leaves_the_data_set_as_it_was(site):
    # The first scan changes and loads; the second fails: the data set must still be the old one,
    # pixels included (it once overwrote volumes/<name>.npy in place before the failure).
    tmp_path, yaml = site
    root = tmp_path / "cache"
    prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    _nifti(tmp_path / "scans" / "subject02.nii.gz", _head(80, seed=5) * 2)
    _nifti(tmp_path / "scans" / "phase.nii", np.sin(_head(12)) * 3.14)
    yaml.write_text(
        "builtin: false\nsources:\n  - {name: knee-pd, path: scans/subject02.nii.gz}\n"
        "  - {name: p, path: scans/phase.nii}\n"
    )
    with pytest.raises(DataError, match="not an MR magnitude"):
        prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    np.testing.assert_allclose(PreparedDataset(root).load_volume("knee-pd"), _head(80), rtol=1e-6)
    # What the failed run cached (subject02's pixels) goes with the next prepare, up to date as it is.
    assert len(list((root / "v2" / "volumes").iterdir())) == 5
    prepare_dataset(PrepareConfig(root=str(root)))
    assert len(list((root / "v2" / "volumes").iterdir())) == 4


def test_the_same_scan_twice_is_refused_and_a_pattern_names_its_matches_by_path(site):
    tmp_path, yaml = site
    yaml.write_text(
        "builtin: false\nsources:\n  - {name: knee, path: 'scans/*/*.nii', split: train}\n"
        "  - {name: knee-test, path: scans/other/case2.nii, split: test}\n"
    )
    with pytest.raises(
        DataError, match=r"same scan is listed more than once \(knee-other-case2 and knee-test"
    ):
        prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    # A scan added later keeps the others' names (it once renumbered them: knee-001 became another scan).
    yaml.write_text("builtin: false\nsources:\n  - {name: knee, path: 'scans/other/*.nii', split: test}\n")
    first = prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    _nifti(tmp_path / "scans" / "other" / "case0.nii", _head(9, 31, 27, seed=7))
    again = prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    assert [v["name"] for v in first["volumes"]] == ["knee-case1", "knee-case2"]
    assert [v["name"] for v in again["volumes"]] == ["knee-case0", "knee-case1", "knee-case2"]
    assert [v["input_sha256"] for v in again["volumes"][1:]] == [v["input_sha256"] for v in first["volumes"]]


def test_a_path_that_exists_is_not_a_pattern_and_an_empty_list_is_named(site):
    tmp_path, yaml = site
    odd = tmp_path / "scans" / "T1 [MPRAGE]"
    odd.mkdir()
    _nifti(odd / "t1.nii", _head(9))
    yaml.write_text(
        "builtin: false\nsources:\n  - {name: t1, path: 'scans/T1 [MPRAGE]/t1.nii', split: test}\n"
    )
    manifest = prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    assert [v["name"] for v in manifest["volumes"]] == ["t1"]
    yaml.write_text("builtin: false\nsources: []\n")
    with pytest.raises(ConfigError, match=r"lists no scans.* in .*site\.yaml"):
        prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    with pytest.raises(ConfigError, match="is a folder; name the YAML file"):
        prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(tmp_path)))


def test_a_site_only_data_set_says_why_the_shipped_sources_are_missing(site):
    tmp_path, yaml = site
    shipped = prepare_dataset(PrepareConfig(root=str(tmp_path / "a")))
    own = prepare_dataset(PrepareConfig(root=str(tmp_path / "b"), local=str(yaml)))
    changes = fingerprint_differences(dataset_fingerprint(shipped), dataset_fingerprint(own))
    assert "fake-mr missing (this data set holds a site's scans alone (builtin: false))" in changes
    # As `edgesr evaluate model=rdn-mr-x2 root=<site data>` compares the shipped card's data.
    card = json.loads((ROOT / "edgesr" / "weights" / "rdn-mr-x2" / "model_card.json").read_text())
    said = card_data_differences(card, PreparedDataset(tmp_path / "b"))
    assert said and all("builtin: false" in line for line in said if "missing" in line)


def test_a_phase_map_is_refused_and_small_overshoots_are_clipped(site):
    tmp_path, yaml = site
    volume = _head(12)
    volume[:, 0, 0] = -0.005 * volume.max()  # interpolation ringing: clipped to 0
    _nifti(tmp_path / "scans" / "ringing.nii", volume)
    yaml.write_text("builtin: false\nsources:\n  - {name: r, path: scans/ringing.nii, split: train}\n")
    prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    assert float(PreparedDataset(tmp_path / "cache").load_volume("r").min()) == 0.0
    _nifti(tmp_path / "scans" / "phase.nii", np.sin(_head(12)) * 3.14)
    yaml.write_text("sources:\n  - {name: p, path: scans/phase.nii}\n")
    with pytest.raises(DataError, match=r"phase\.nii: values down to .*not an MR magnitude"):
        prepare_dataset(PrepareConfig(root=str(tmp_path / "cache2"), local=str(yaml)))


def test_a_short_scan_split_auto_says_what_each_split_got(site, capsys):
    tmp_path, yaml = site
    _nifti(tmp_path / "scans" / "short.nii", _head(30))
    yaml.write_text("builtin: false\nsources:\n  - {name: s, path: scans/short.nii}\n")
    manifest = prepare_dataset(PrepareConfig(root=str(tmp_path / "cache"), local=str(yaml)))
    splits = manifest["volumes"][0]["splits"]
    said = " ".join(capsys.readouterr().err.split())
    counts = f"train {len(splits['train'])}, val 0, test {len(splits['test'])}"
    assert f"split: auto gave {counts}, 4 dropped as neighbours of another split" in said


def test_the_commands_train_and_score_on_a_sites_scans(site, capsys):
    """The README's workflow: prepare the site's data set, fine-tune on it, score its external scans."""
    tmp_path, yaml = site
    root = tmp_path / "site-data"
    assert main(["data", "prepare", f"root={root}", f"local={yaml}"]) == 0
    out = tmp_path / "run"
    argv = ["train", "model=rdn_tiny", "optim.steps=2", "eval_every=2", "data.patch=8", "data.batch_size=2"]
    assert main([*argv, f"data.root={root}", f"out={out}", "threads=1"]) == 0
    meta = json.loads((out / "last" / "checkpoint.json").read_text())
    assert {s["name"] for s in meta["config"]["training_data"]["sources"]} == {"knee-pd"}
    capsys.readouterr()
    assert main(["evaluate", f"checkpoint={out}/last", f"root={root}", "split=external", "format=json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["split"] == "external" and scored["results"]
    assert all(
        set(row["by_source"]) == {"other-scanner-case1", "other-scanner-case2"} for row in scored["results"]
    )


def test_a_missing_split_is_named_with_its_fix_before_anything_runs(site, monkeypatch):
    tmp_path, yaml = site
    monkeypatch.setenv("EDGESR_DEBUG", "1")  # the error raised, not printed
    yaml.write_text(
        "builtin: false\nsources:\n  - {name: knee, path: scans/subject01.nii.gz, split: train}\n"
        "  - {name: knee-val, path: scans/other/case1.nii, split: val}\n"
        "  - {name: ct, path: scans/ct, modality: CT, split: test}\n"
    )
    root = tmp_path / "site-data"
    prepare_dataset(PrepareConfig(root=str(root), local=str(yaml)))
    out = tmp_path / "compress"
    # The gate's split is checked before the stages train (it used to fail after them).
    with pytest.raises(DataError, match=r"test split .* no MR slices \(it has CT slices there.*split: test"):
        main(["compress", "recipe=quickstart", f"data_root={root}", f"out={out}"])
    assert not out.exists()
    with pytest.raises(
        DataError, match=r"train split .* no CT slices \(it has MR slices there.*`split: train`"
    ):
        main(["train", "model=rdn_tiny", "data.modality=CT", f"data.root={root}", f"out={tmp_path / 'r'}"])
