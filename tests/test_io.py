"""Atomic writes: all or nothing, and the file mode a plain write would have had."""

from __future__ import annotations

import os

import pytest

from edgesr._io import atomic_path, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    previous = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        write_json_atomic(fresh, {})
        assert fresh.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        fresh.chmod(0o640)
        write_json_atomic(fresh, {"b": 2})
        assert fresh.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
