"""The run directory: every artefact of one curation, laid out so a run can be resumed and audited.

Every path below has a RunDir property or method (in brackets); stages join no run path by hand.

    <run>/pool/shard-*.parquet          unique, normalised rows (see curate.pool.schema)  [pool_dir]
    <run>/duplicates.parquet            exact duplicates: source, row, id of the row kept  [duplicates_path]
    <run>/quarantine.parquet            unreadable rows: source, row, reason, raw  [quarantine_path]
    <run>/ingest.json                   inputs and counts of the ingest stage  [ingest_path]
    <run>/embeddings/<fingerprint>/     embedding shards of one model (index.embed)  [embeddings_dir(fp)]
    <run>/embeddings/current.json       the fingerprint the embed stage wrote last  [current_embeddings_path]
    <run>/index/                        faiss index and kNN graph  [index_dir]
    <run>/projection.parquet            2-D / k-D coordinates  [projection_path]
    <run>/projection.json               the projection's key and info  [projection_meta_path]
    <run>/map/                          grid cells, clusters, centroids, diversity (+ sidecars)  [map_dir]
    <run>/signals/<name>.parquet        one float per row (+ sidecar <name>.json with its key)  [signals_dir,
                                        signal_path(name)]
    <run>/signals/_icl/, _lm/           resumable shards of the ICL and LM-loss signals  [icl_cache_dir, lm_cache_dir]
    <run>/signals/miw_weights.json      the indicator weights miw_score learnt (read by the miw selector)
                                        [miw_weights_path]
    <run>/features/                     cached LM features (<fingerprint>/) and DaaR seed files  [features_dir]
    <run>/probes/                       fitted DaaR probes  [probes_dir]
    <run>/decontam/                     one decontamination record per validation file  [decontam_dir]
    <run>/selections/<name>.parquet     id, weight, rank, reason (+ <name>.json with method and params)
                                        [selections_dir, selection_path(name)]
    <run>/mixtures/<name>.json          domain weights per round  [mixtures_dir, mixture_path(name)]
    <run>/mix/<name>/                   IDEAL's rounds: influence per round, EK-FAC factors  [mix_dir(name)]
    <run>/mix/ama/<name>/               AMA's initial weights  [ama_dir(name)]
    <run>/mix/ama/specialists/          AMA's specialists (and DoReMi's reference) with their row losses
                                        [ama_specialists_dir]
    <run>/mix/ama/_row_nll/             resumable shards of their per-row losses  [ama_row_nll_dir]
    <run>/compare/                      tables of `curate compare`  [compare_dir]
    <run>/export/                       the exported subset and manifest.json  [export_dir]
    <run>/train/<name>/                 training runs (curate.train): config, logs, metrics, model  [train_dir(name)]
    <run>/train/_ref_logps/             cached reference-model log-probs of DPO rows  [ref_logps_dir]
    <run>/reference.json                ILA's reference model: its folder and the selection it was trained on
                                        [reference_path]
    <run>/report.html                   the report of `curate report`  [report_path]
    <run>/atlas.parquet                 the map exported for viewers (curate.viz.atlas)  [atlas_path]
    <run>/stages/<name>.json            each stage's key, outputs and time (curate.stage.run_stage)  [stage_path(name)]
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
            except BlockingIOError:  # EWOULDBLOCK: held by another process
                raise error(
                    f"{self.root}: another {stage} is writing this run directory",
                    "wait for it to finish, or use another --run",
                ) from None
            except OSError as e:  # e.g. ENOLCK on a file system without locks: not a busy run
                raise error(
                    f"{self.root}: cannot lock {fh.name} for {stage} ({e.strerror or e})",
                    "the file system may not support locks (some NFS mounts): use a run directory on one that does",
                ) from e
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
    def current_embeddings_path(self) -> Path:
        """embeddings/current.json: the fingerprint (and model, fields) of the embeddings written last."""
        return self.root / "embeddings" / "current.json"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def projection_path(self) -> Path:
        return self.root / "projection.parquet"

    @property
    def projection_meta_path(self) -> Path:
        """projection.json: the key and info of the stored projection."""
        return self.root / "projection.json"

    @property
    def map_dir(self) -> Path:
        return self.root / "map"

    @property
    def signals_dir(self) -> Path:
        return self.root / "signals"

    def signal_path(self, name: str) -> Path:
        return self.signals_dir / f"{name}.parquet"

    @property
    def icl_cache_dir(self) -> Path:
        """signals/_icl/: resumable shards of the ICL signals."""
        return self.signals_dir / "_icl"

    @property
    def lm_cache_dir(self) -> Path:
        """signals/_lm/: resumable shards of the LM-loss signals."""
        return self.signals_dir / "_lm"

    @property
    def miw_weights_path(self) -> Path:
        """signals/miw_weights.json: the indicator weights miw_score learnt; the miw selector reads them."""
        return self.signals_dir / "miw_weights.json"

    @property
    def features_dir(self) -> Path:
        """features/: cached LM features (one folder per fingerprint) and DaaR's generated seed files."""
        return self.root / "features"

    @property
    def probes_dir(self) -> Path:
        """probes/: DaaR's fitted probes."""
        return self.root / "probes"

    @property
    def decontam_dir(self) -> Path:
        """decontam/: one decontamination record per validation file."""
        return self.root / "decontam"

    @property
    def selections_dir(self) -> Path:
        return self.root / "selections"

    def selection_path(self, name: str) -> Path:
        return self.selections_dir / f"{name}.parquet"

    @property
    def mixtures_dir(self) -> Path:
        return self.root / "mixtures"

    def mixture_path(self, name: str) -> Path:
        return self.mixtures_dir / f"{name}.json"

    def mix_dir(self, name: str) -> Path:
        """mix/<name>/: the working folder of mixture `name` (IDEAL: each round's influence and EK-FAC factors)."""
        return self.root / "mix" / name

    def ama_dir(self, name: str) -> Path:
        """mix/ama/<name>/: AMA's working folder for mixture `name` (its initial weights)."""
        return self.mix_dir("ama") / name

    @property
    def ama_specialists_dir(self) -> Path:
        """mix/ama/specialists/: AMA's trained specialists (and DoReMi's reference) with their row losses."""
        return self.mix_dir("ama") / "specialists"

    @property
    def ama_row_nll_dir(self) -> Path:
        """mix/ama/_row_nll/: resumable shards of the specialists' per-row losses."""
        return self.mix_dir("ama") / "_row_nll"

    @property
    def compare_dir(self) -> Path:
        """compare/: the tables `curate compare` saves."""
        return self.root / "compare"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def train_dir(self, name: str) -> Path:
        return self.root / "train" / name

    @property
    def ref_logps_dir(self) -> Path:
        """train/_ref_logps/: the reference model's log-probs of DPO rows, cached per (model, max_length)."""
        return self.root / "train" / "_ref_logps"

    def stage_path(self, name: str) -> Path:
        """The sidecar of a stage run (curate.stage): its key, its outputs' fingerprints, its time."""
        return self.root / "stages" / f"{name}.json"

    @property
    def reference_path(self) -> Path:
        return self.root / "reference.json"

    @property
    def report_path(self) -> Path:
        """report.html: where `curate report` writes by default."""
        return self.root / "report.html"

    @property
    def atlas_path(self) -> Path:
        """atlas.parquet: where the map is exported for viewers by default (curate.viz.atlas)."""
        return self.root / "atlas.parquet"

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
            if not self.root.exists():  # a mistyped --run, most likely: say so rather than name a file in it
                raise MissingArtefactError(f"run directory {self.root} does not exist: check --run, or run "
                                           f"`curate ingest FILES --run {self.root}` to start it")
            raise MissingArtefactError(f"{path} is missing: run `curate {stage}` on {self.root} first")
        return path

    def scan_pool(self) -> pl.LazyFrame:
        """The pool as a lazy frame over its parquet shards (unique rows, in ingest order)."""
        self.require(self.pool_dir, "ingest")
        return pl.scan_parquet(self.pool_dir / "shard-*.parquet")

    def read_pool(self, columns: list[str] | None = None) -> pl.DataFrame:
        lf = self.scan_pool()
        return (lf.select(columns) if columns else lf).collect()
