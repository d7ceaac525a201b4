"""Where per-row work runs: the only package that knows about parallelism.

A stage hands an executor a shard job (`index.io.ShardJob`: picklable, `setup()` once per worker, `run()` per
shard) and the shard folder; the executor computes the shards whose final file is missing, each written to a
temporary name and renamed, and returns their indices. Two executors:
- `"local"` (default): in this process (`index.io.run_job`);
- `"ray"`: Ray actors, one model per actor, declared CPUs/GPUs per actor, a bounded number of shards in flight
  (`curate.executors.ray.RayExecutor`; the optional extra `pip install curate[ray]`).
Same job, same shards: the outputs do not depend on the executor.
"""

from __future__ import annotations

from typing import Any

from curate.errors import ParameterError
from index.io import run_job

EXECUTORS = ("local", "ray")


def get_executor(spec: Any = None, options: dict[str, Any] | None = None) -> Any:
    """An executor from a name, an executor (returned as is) or None (local). Names: "local"; "ray" (a local
    Ray started on demand); "ray:ADDRESS" (join a cluster: "ray:auto", "ray:ray://head:10001").

    `options` go to the Ray executor (`workers`, `cpus_per_worker`, `gpus_per_worker`, `in_flight`, `retries`)."""
    if spec is None or spec == "local":
        if options:
            raise ParameterError(f"executor options {sorted(options)} need executor='ray'")
        return run_job
    if isinstance(spec, str) and (spec == "ray" or spec.startswith("ray:")):
        from curate.executors.ray import RayExecutor

        address = spec.partition(":")[2] or None
        try:
            return RayExecutor(address=address, **(options or {}))
        except TypeError as exc:
            raise ParameterError(f"executor options: {exc}") from None
    if callable(spec):
        return spec
    raise ParameterError(f"executor must be 'local', 'ray' or 'ray:ADDRESS', got {spec!r}")


__all__ = ["EXECUTORS", "get_executor", "run_job"]
