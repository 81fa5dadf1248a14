"""``edgesr data prepare`` and ``edgesr data info``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from edgesr.config import check_choice, opt
from edgesr.data.dataset import PreparedDataset
from edgesr.data.prepare import PrepareConfig, prepare_dataset, split_sizes


def run_prepare(cfg: PrepareConfig) -> int:
    prepare_dataset(cfg)
    return 0


@dataclass(frozen=True)
class InfoConfig:
    root: str = opt("", "data cache folder (default: $EDGESR_DATA or ~/.cache/edgesr/data)")
    format: str = opt("table", "table (for people) or json (for machines)")

    def __post_init__(self) -> None:
        check_choice("format", self.format, ("table", "json"))


def run_info(cfg: InfoConfig) -> int:
    dataset = PreparedDataset(cfg.root or None)
    manifest = dataset.manifest
    sizes = split_sizes(manifest)
    if cfg.format == "json":
        info = {
            "path": str(dataset.path),
            "version": manifest["version"],
            "created_by": manifest["created_by"],
            "split_policy": manifest["split_policy"],
            "fingerprint": dataset.fingerprint,
            "volumes": [
                {
                    k: v[k]
                    for k in (
                        "name",
                        "modality",
                        "description",
                        "package",
                        "license",
                        "input_path",
                        "input_sha256",
                        "shape",
                        "spacing_mm",
                    )
                }
                | {"role": v.get("role", "train"), "package_version": v.get("package_version", "unknown")}
                | {"split_slices": sizes[v["name"]]}
                for v in manifest["volumes"]
            ],
            "unavailable": manifest["unavailable"],
        }
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    title = (
        f"edgesr data set v{manifest['version']} at {dataset.path}, fingerprint {dataset.fingerprint['id']}"
    )
    table = Table(title=title)
    for column in (
        "volume",
        "role",
        "modality",
        "shape (S,H,W)",
        "spacing mm",
        "train",
        "val",
        "test",
        "external",
    ):
        table.add_column(column)
    for v in manifest["volumes"]:
        s = sizes[v["name"]]
        table.add_row(
            v["name"],
            v.get("role", "train")
            + (" (template)" if v.get("template") else "")
            + (" (site)" if v["package"].startswith("local:") else ""),
            v["modality"],
            "x".join(map(str, v["shape"])),
            "x".join(f"{x:.3g}" for x in v["spacing_mm"]),
            *(str(s[split]) for split in ("train", "val", "test", "external")),
        )
    console.print(table)
    for v in manifest["volumes"]:
        site = v["package"].startswith("local:")
        origin = f"the site's {v['input_path']}" if site else f"{v['package']} {v.get('package_version', '')}"
        console.print(
            f"{v['name']}: {v['description']}; from {origin}; license: {v['license']}", highlight=False
        )
    if manifest.get("local_sources"):
        console.print(
            f"the site's scans are listed in {manifest['local_sources'].get('file')} "
            "(`edgesr data prepare local=none` drops them)",
            highlight=False,
        )
    for missing in manifest["unavailable"]:
        console.print(f"[yellow]not used[/]: {missing['name']} ({missing['package']}: {missing['reason']})")
    return 0
