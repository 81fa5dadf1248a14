"""Summarises a collect-mode log (``EDGESR_FUZZ_LOG``): examples and outcomes per property, then every
distinct failure (property, problem, exception type, edgesr location) with one example input.

    python -m tests.fuzz.report fuzz.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def _problem_key(problem: str) -> str:
    """A problem without the numbers and names that vary between examples."""
    key = re.sub(r"\(.*", "", problem)
    key = re.sub(r"\{.*\}|\[.*\]|'[^']*'|\"[^\"]*\"|\bNone\b|\bTrue\b|\bFalse\b", "...", key)
    return re.sub(r"-?\d[\d.e+-]*", "#", key).strip()


def summarise(path: Path) -> str:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    failures: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        counts[entry["property"]][entry["outcome"]] += 1
        if entry["outcome"] == "fail":
            for problem in entry["problems"]:
                key = (entry["property"], _problem_key(problem), entry["exception"] or "-", entry["location"])
                failures[key].append(entry)
    lines = ["property               examples   ok  error  fail"]
    for prop, c in sorted(counts.items()):
        lines.append(f"{prop:22s} {sum(c.values()):8d} {c['ok']:4d} {c['error']:6d} {c['fail']:5d}")
    lines.append(f"\n{len(failures)} distinct failures (property | problem | exception | location | count)")
    for (prop, problem, exc, where), hits in sorted(failures.items()):
        first = hits[0]
        lines.append(f"- {prop} | {problem} | {exc} | {where} | {len(hits)}")
        lines.append(f"    e.g. {first['kind']}: {first['mutation'][:160]}")
        if first.get("message"):
            lines.append(f"    msg: {first['message'][:200]}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
