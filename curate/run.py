"""The run directory: every artefact of one curation, laid out so a run can be resumed and audited.

    <run>/pool/shard-*.parquet        unique, normalised rows (see curate.pool.schema)
    <run>/duplicates.parquet          exact duplicates: source, row, id of the row kept
    <run>/quarantine.parquet          unreadable rows: source, row, reason, raw
    <run>/ingest.json                 inputs and counts of the ingest stage
    <run>/embeddings/<fingerprint>/   embedding shards of one model (index.embed)
    <run>/index/                      faiss index and kNN graph
    <run>/projection.parquet          2-D / k-D coordinates
    <run>/signals/<name>.parquet      one float per row (+ sidecar <name>.json with its key)
    <run>/selections/<name>.parquet   id, weight, rank, reason (+ <name>.json with method and params)
    <run>/mixtures/<name>.json        domain weights per round
    <run>/export/                     the exported subset and manifest.json
    <run>/train/<name>/               training runs (curate.train): config, logs, metrics, model
    <run>/reference.json              ILA's reference model: its folder and the selection it was trained on
    <run>/stages/<name>.json          each stage's key, outputs and time (curate.stage.run_stage)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from curate.errors import CurateError, MissingArtefactError


class RunBusyError(CurateError, RuntimeError):
    """Another process is running the same stage on this run directory."""


class RunDir:
    """Paths of one run directory; creating it is cheap and idempotent."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)  # a RunDir is os.PathLike too, so RunDir(RunDir(p)) works

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    @contextmanager
    def lock(self, stage: str, error: type[Exception] = RunBusyError) -> Iterator[None]:
        """Hold `<run>/.<stage>.lock` (an advisory flock): a second process running `stage` on this run
        directory fails at once with `error` instead of writing the same artefacts beside the first."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        if not self.root.is_dir():  # nothing to protect; the stage itself reports the missing run
            yield
            return
        with open(self.root / f".{stage}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise error(
                    f"{self.root}: another {stage} is writing this run directory",
                    "wait for it to finish, or use another --run",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def remove_stale_temp(self, paths: Iterable[str | os.PathLike]) -> list[Path]:
        """Remove the temporary files (`.<name>.*.tmp`, see index.io.atomic_path) that killed runs left in the
        folders `paths` and beside the files `paths` (relative to the run, or absolute); safe only while the
        lock of the stage writing them is held (curate.stage.run_stage). Returns the paths removed."""
        removed = []
        for name in paths:
            target = self.root / name
            found = list(target.rglob(".*.tmp")) if target.is_dir() else list(target.parent.glob(f".{target.name}.*.tmp"))
            for tmp in found:
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
        return removed

    # layout -----------------------------------------------------------------------------------
    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    @property
    def duplicates_path(self) -> Path:
        return self.root / "duplicates.parquet"

    @property
    def quarantine_path(self) -> Path:
        return self.root / "quarantine.parquet"

    @property
    def ingest_path(self) -> Path:
        return self.root / "ingest.json"

    def embeddings_dir(self, fingerprint: str) -> Path:
        return self.root / "embeddings" / fingerprint

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def projection_path(self) -> Path:
        return self.root / "projection.parquet"

    @property
    def map_dir(self) -> Path:
        return self.root / "map"

    def signal_path(self, name: str) -> Path:
        return self.root / "signals" / f"{name}.parquet"

    def selection_path(self, name: str) -> Path:
        return self.root / "selections" / f"{name}.parquet"

    def mixture_path(self, name: str) -> Path:
        return self.root / "mixtures" / f"{name}.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def train_dir(self, name: str) -> Path:
        return self.root / "train" / name

    def stage_path(self, name: str) -> Path:
        """The sidecar of a stage run (curate.stage): its key, its outputs' fingerprints, its time."""
        return self.root / "stages" / f"{name}.json"

    @property
    def reference_path(self) -> Path:
        return self.root / "reference.json"

    def reference_ids(self) -> set[str] | None:
        """Ids of the rows ILA's reference model was trained on (None when the run has no reference)."""
        if not self.reference_path.exists():
            return None
        import json

        ref = json.loads(self.reference_path.read_text())
        path = self.selection_path(ref["selection"])
        if not path.exists():
            raise FileNotFoundError(f"{self.reference_path} names selection {ref['selection']!r}, but {path} is missing")
        return set(pl.read_parquet(path, columns=["id"])["id"].to_list())

    # readers ----------------------------------------------------------------------------------
    def require(self, path: Path, stage: str) -> Path:
        """Return `path`, or raise a clear error saying which stage produces it."""
        if not path.exists():
            raise MissingArtefactError(f"{path} is missing: run `curate {stage}` on {self.root} first")
        return path

    def scan_pool(self) -> pl.LazyFrame:
        """The pool as a lazy frame over its parquet shards (unique rows, in ingest order)."""
        self.require(self.pool_dir, "ingest")
        return pl.scan_parquet(self.pool_dir / "shard-*.parquet")

    def read_pool(self, columns: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan_pool()
        return (lf.select(columns) if columns else lf).collect()
