"""Atomic file writes and resumable shard bookkeeping shared by every expensive stage.

A shard is written to a temporary name in the same folder and renamed into place, so a killed run never
leaves a half-written file under a final name; a stage resumes by skipping shards whose final name exists.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: what `open` would give a new file (0o777 for a folder). The temporary files
    and folders of `tempfile` are private (0600 / 0700), so what is renamed into place gets this mode first."""
    try:
        with open("/proc/self/status") as fh:
            umask = next(int(ln.split()[1], 8) for ln in fh if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):  # not Linux: read it by setting it (not thread-safe)
        umask = os.umask(0o022)
        os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.fchmod(fd, umask_mode())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync(tmp_path)  # the data on disk before the name: a power loss must not leave an empty final file
        os.replace(tmp_path, final)
        fsync(final.parent)  # and the rename itself
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync(path: str | os.PathLike, tree: bool = False) -> None:
    """Flush a file's data, or a folder's entries, to disk; `tree`: also every file and folder below the folder."""
    path = Path(path)
    if tree:
        for sub in path.iterdir():
            if (sub.is_dir() or sub.is_file()) and not sub.is_symlink():
                fsync(sub, tree=sub.is_dir())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; it replaces `final` only if the block succeeds, so
    `final` is always either absent, the old folder, or the complete new one."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):  # left by killed processes
        for stale in final.parent.glob(pattern):
            pid = stale.name.rsplit("-", 1)[-1]
            if stale.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        fsync(tmp, tree=True)
        if final.exists():  # moved aside, not deleted in place: a kill mid-delete must not leave half of it
            os.replace(final, old)
        os.replace(tmp, final)
        fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (sorted keys, so equal objects give equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def iter_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line of a JSON-lines file. A missing file or a line that is not
    JSON raises, naming `what`, the file and the line (for small inputs that must be whole, unlike the pool)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")  # a leading BOM is not data
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            yield i, value


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a numpy array atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def shard_name(i: int, ext: str) -> str:
    return f"shard-{i:05d}.{ext}"


def run_shards(
    out_dir: str | os.PathLike,
    n_shards: int,
    ext: str,
    work: Callable[[int, Path], None],
) -> list[int]:
    """Call `work(i, tmp_path)` for every shard whose final file is missing; return the indices computed.

    `work` writes shard `i` to `tmp_path`; the rename to `shard-XXXXX.<ext>` happens only after it returns.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for i in range(n_shards):
        final = out_dir / shard_name(i, ext)
        if final.exists():
            continue
        with atomic_path(final, suffix="." + ext) as tmp:
            work(i, tmp)
        done.append(i)
    return done


class ShardJob(Protocol):
    """Per-row work as executors run it: a picklable object; `setup()` runs once per worker (loads the model)
    and `run(state, i, tmp, progress)` writes shard `i` to `tmp` and returns its row count (`progress(n)`, when
    given, is told of rows as they finish). Executors (in-process here, Ray in `curate.executors`) call these."""

    def setup(self) -> Any: ...

    def run(self, state: Any, i: int, tmp: Path, progress: Callable[[int], None] | None = None) -> int: ...


def missing_shards(out_dir: str | os.PathLike, n_shards: int, ext: str) -> list[int]:
    """Indices of the shards whose final file is not in `out_dir` (what a resumed stage still has to do)."""
    out_dir = Path(out_dir)
    return [i for i in range(n_shards) if not (out_dir / shard_name(i, ext)).exists()]


def clear_stale_temps(out_dir: str | os.PathLike) -> None:
    """Remove the temporary shard files (`.shard-*.tmp`) a killed worker left; call only under the stage's lock."""
    for f in Path(out_dir).glob(".shard-*.tmp"):
        f.unlink(missing_ok=True)


def run_job(
    job: ShardJob, out_dir: str | os.PathLike, n_shards: int, ext: str, progress: Callable[[int], None] | None = None
) -> list[int]:
    """The in-process executor: `job.setup()` once (only if a shard is missing), then every missing shard in
    order, each written to a temporary name and renamed. Returns the indices computed."""
    if not missing_shards(out_dir, n_shards, ext):
        return []
    clear_stale_temps(out_dir)
    state = job.setup()
    return run_shards(out_dir, n_shards, ext, lambda i, tmp: job.run(state, i, tmp, progress))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
