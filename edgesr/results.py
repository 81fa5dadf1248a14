"""Scored results as people read them: the name of each setting and the tables of methods.

Every report (``baseline``, ``evaluate``, later compression and benchmark reports) names its settings
with these keys, so rows from different runs line up.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def sr_setting(*, modality: str, scale: int, degradation: str) -> dict[str, Any]:
    """The keys that name one scored SR setting in a report."""
    return {"task": "sr", "modality": modality, "scale": scale, "degradation": degradation}


def recon_setting(*, acceleration: float, mask: str, coils: int, maps: str | None = None) -> dict[str, Any]:
    """The keys that name one scored recon setting in a report (``maps`` only when it was chosen)."""
    setting = {"task": "recon", "modality": "MR", "acceleration": acceleration, "mask": mask, "coils": coils}
    return setting if maps is None else setting | {"maps": maps}


def setting_title(row: dict[str, Any]) -> str:
    """A readable name for one scored setting (a row of a report's results or comparison)."""
    if row["task"] == "sr":
        return f"SR x{row['scale']} on {row['modality']} ({row['degradation']})"
    maps = f", {row['maps']} coil maps" if "maps" in row else ""
    return f"Recon R={row['acceleration']:g}, {row['mask']} mask, {row['coils']} coils{maps}"


def print_results(console: Console, report: dict[str, Any]) -> None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in report["results"]:
        groups.setdefault(setting_title(row), []).append(row)
    # Short headers (explained in the caption) keep the table within 80 columns, the width rich
    # assumes when the output is piped; a long method name folds onto a second line.
    caption = "PSNR and worst (the lowest slice) in dB; gradE: gradient energy ratio; s/sl: seconds per slice"
    for title, rows in groups.items():
        table = Table(
            title=f"{title}: {report['split']} split, {rows[0]['slices']} slices",
            caption=caption,
            box=box.SIMPLE_HEAD,
        )
        widest_method = max(len(row["method"]) for row in rows)
        table.add_column("method", overflow="fold", min_width=min(widest_method, 17))
        for column in ("PSNR", "SSIM", "NMSE", "HFEN", "gradE", "worst", "s/sl"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(
                row["method"],
                f"{row['psnr_db']:.2f}",
                f"{row['ssim']:.4f}",
                f"{row['nmse']:.5f}",
                f"{row['hfen']:.4f}",
                f"{row.get('gradient_energy_ratio', float('nan')):.3f}",
                f"{row['psnr_min_db']:.2f}",
                f"{row['seconds_per_slice']:.3f}",
            )
        console.print(table)
    console.print(f"sources: {', '.join(report['sources'])}; {report['seconds']} s")
