"""index.io: atomic writes reach the disk (fsync) before their final name, and the rename is flushed too."""

from __future__ import annotations

import os

import index.io as io


def _record(monkeypatch) -> list[tuple[str, str]]:
    """Log fsync and replace calls in order as ("fsync", path) / ("replace", destination)."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    opened: dict[int, str] = {}

    def fake_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        opened[fd] = os.fspath(path)
        return fd

    monkeypatch.setattr(io.os, "open", fake_open)
    monkeypatch.setattr(io.os, "fsync", lambda fd: log.append(("fsync", opened[fd])) or real_fsync(fd))
    monkeypatch.setattr(io.os, "replace", lambda a, b: log.append(("replace", os.fspath(b))) or real_replace(a, b))
    return log


def test_atomic_path_flushes_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    log = _record(monkeypatch)
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert [k for k, _ in log] == ["fsync", "replace", "fsync"]
    assert os.path.basename(log[0][1]).startswith(".a.json.") and log[1][1] == str(tmp_path / "a.json")
    assert log[2][1] == str(tmp_path)
    assert io.read_json(tmp_path / "a.json") == {"x": 1}


def test_atomic_dir_flushes_every_file_before_the_swap(tmp_path, monkeypatch):
    log = _record(monkeypatch)
    with io.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"123")
        (tmp / "c.json").write_text("{}")
    swap = log.index(("replace", str(tmp_path / "model")))
    flushed = {os.path.relpath(p, tmp) for k, p in log[:swap] if k == "fsync"}
    assert flushed == {".", "sub", "sub/w.bin", "c.json"}
    assert log[swap + 1] == ("fsync", str(tmp_path))
    assert (tmp_path / "model" / "sub" / "w.bin").read_bytes() == b"123"
