"""The Ray executor: shard jobs on Ray actors, for many GPUs or nodes (`pip install curate[ray]`).

Each actor rebuilds the job's model once (`job.setup()`, e.g. the encoder on the actor's GPU) and computes
whole shards, writing each to a temporary name beside its final name and renaming it (the run directory must be
on a filesystem every node sees). The driver keeps at most `in_flight` shards queued per actor (back-pressure:
a slow actor is not handed the whole pool), and only shards whose final file is missing are sent, so a re-run
after an actor or driver failure computes only what is missing. When an actor fails, the shards already handed
to the others (at most `in_flight` each) are finished before the error is raised, so none lands after it.
A local Ray is started on demand (`address` None: `workers x cpus_per_worker` CPUs), or an existing cluster is
joined (`address="auto"` or "ray://...").
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from index.io import ShardJob, atomic_path, clear_stale_temps, missing_shards, shard_name


class ExecutorError(CurateError):
    """A worker failed; the finished shards are kept and a re-run computes the missing ones."""


class _ShardWorker:
    """One Ray actor: the job's state (the model) is built once, then shards are computed on request."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.state = job.setup()

    def run(self, i: int, out_dir: str, ext: str) -> int:
        with atomic_path(Path(out_dir) / shard_name(i, ext), suffix="." + ext) as tmp:
            return int(self.job.run(self.state, i, tmp))

    def pid(self) -> int:
        return os.getpid()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's run to dozens of lines)."""
    return (str(exc).strip().splitlines() or [""])[0]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CurateError("the Ray executor needs Ray: pip install 'curate[ray]' (or pip install ray)") from None
    return ray


class RayExecutor:
    """Map a shard job over Ray actors. `workers` actors, each declaring `cpus_per_worker` CPUs and
    `gpus_per_worker` GPUs; `in_flight` shards queued per actor; `retries`: restarts of a dead actor (and
    re-submissions of its shard) before the stage fails."""

    def __init__(
        self,
        address: str | None = None,
        workers: int = 2,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        in_flight: int = 2,
        retries: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if workers < 1 or in_flight < 1 or retries < 0:
            raise ValueError(f"workers and in_flight must be >= 1 and retries >= 0; got {workers}, {in_flight}, {retries}")
        self.address, self.workers, self.in_flight, self.retries = address, int(workers), int(in_flight), int(retries)
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.init_kwargs = dict(init_kwargs or {})
        self.actor_pids: list[int] = []  # of the last call's actors (tests kill one)

    def _init(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, **self.init_kwargs}
        if self.address is None:  # room for every actor (0.5 GPU each on 1 worker still needs a GPU)
            kw.setdefault("num_cpus", max(1, math.ceil(self.workers * self.cpus)))
            kw.setdefault("num_gpus", math.ceil(self.workers * self.gpus))
        ray.init(address=self.address, **kw)

    def _check_room(self, ray: Any) -> None:
        """An actor no node can hold would wait for ever: say so instead (e.g. GPUs asked of a Ray that an
        earlier stage of this process started without them)."""
        total = ray.cluster_resources()
        for res, need in (("CPU", self.cpus), ("GPU", self.gpus)):
            if need > 0 and total.get(res, 0) < need:
                raise ExecutorError(
                    f"a Ray worker needs {need:g} {res} but the Ray cluster has {total.get(res, 0):g}",
                    "start Ray with the resources the stages need (the first stage of a process starts a local "
                    "Ray with its own workers' needs), or lower cpus_per_worker / gpus_per_worker")

    def __call__(
        self, job: ShardJob, out_dir: str | os.PathLike, n_shards: int, ext: str,
        progress: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Compute every missing shard of `out_dir` on the actors; return the indices computed."""
        todo = deque(missing_shards(out_dir, n_shards, ext))
        if not todo:
            return []
        out_dir = str(Path(out_dir).resolve())  # actors resolve a relative path where Ray started, not here
        ray = _import_ray()
        self._init(ray)
        self._check_room(ray)
        clear_stale_temps(out_dir)
        actor = ray.remote(_ShardWorker).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                 max_restarts=self.retries, max_task_retries=self.retries)
        actors = [actor.remote(job) for _ in range(min(self.workers, len(todo)))]
        load = dict.fromkeys(range(len(actors)), 0)
        pending: dict[Any, tuple[int, int]] = {}
        done: list[int] = []
        shard = -1
        failure: Exception | None = None
        try:
            self.actor_pids = ray.get([a.pid.remote() for a in actors])  # each actor has run the job's setup
            while todo or pending:
                for a in load:  # top every actor up to `in_flight` queued shards
                    while todo and load[a] < self.in_flight:
                        i = todo.popleft()
                        pending[actors[a].run.remote(i, out_dir, ext)] = (a, i)
                        load[a] += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                a, shard = pending.pop(ready[0])
                load[a] -= 1
                rows = ray.get(ready[0])
                done.append(shard)
                if progress is not None:
                    progress(rows)
        except ray.exceptions.RayError as exc:
            failure = exc
            _drain(ray, pending)
        finally:
            for a in actors:
                ray.kill(a)
        if failure is not None:
            left = len(missing_shards(out_dir, n_shards, ext))
            raise ExecutorError(
                f"a Ray worker failed on shard {shard} of {out_dir} ({type(failure).__name__}: {first_line(failure)}); "
                f"finished shards are kept: re-run the stage to compute the {left} missing of {n_shards}") from failure
        return sorted(done)


def _drain(ray: Any, pending: dict) -> None:
    """Wait until every shard already handed to an actor has ended, finished (renamed into place) or failed
    with its actor, so that no shard lands after the stage's error is raised. ray.kill cannot promise this:
    it returns, and the task fails, before the killed process is gone, which may rename a shard after."""
    if pending:
        ray.wait(list(pending), num_returns=len(pending))
