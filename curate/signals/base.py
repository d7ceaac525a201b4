"""The signal registry and the context a signal computes in (pool rows, models, cached LM losses)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.registry import Registry
from curate.run import RunDir
from curate.view import PoolView


@dataclass(frozen=True)
class SignalDef:
    """A named per-row signal: `compute(ctx) -> float array (pool order)`.

    `params` are the parameters (with defaults) that change its values and so enter its cache key;
    `roles` the models it reads: "model", "base_model", "ref_model" (causal LMs), "tokenizer",
    "embedder" (the run's current embeddings), "knn" (the run's kNN graph).
    """

    name: str
    compute: Callable[[ScoreContext], np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()
    doc: str = ""
    deps: tuple[str, ...] | Callable[[ScoreContext], list[str]] = ()
    # what else its values read, as a JSON-able digest for its key (pool columns besides the rows' content,
    # map clusters, decontamination records): `key_extra(ctx)`
    key_extra: Callable[[ScoreContext], Any] | None = None


SIGNALS: Registry[SignalDef] = Registry("signal")

# the `curate score` flag each role needs, and the stage that must have run before
_ROLE_FLAGS = {
    "model": "--model DIR", "base_model": "--base-model DIR", "ref_model": "--ref-model DIR",
    "validation": "--validation FILE.jsonl",
}  # fmt: skip
_ROLE_STAGES = {"embedder": "curate embed", "knn": "curate index"}


def score_command(name: str, run: str | os.PathLike = "RUN") -> str:
    """The command that computes signal `name`, with every flag its models need (and the stages before it)."""
    try:
        defn = SIGNALS.get(name)
    except Exception:  # noqa: BLE001 - unknown name: the plain command still names what is missing
        return f"curate score --run {run} --signal {name}"
    roles = list(defn.roles)
    for dep in () if callable(defn.deps) else defn.deps:
        dep_def = SIGNALS.get(dep)
        roles += [r for r in dep_def.roles if r not in roles]
    flags = [_ROLE_FLAGS[r] for r in roles if r in _ROLE_FLAGS]
    before = [f"`{_ROLE_STAGES[r]} --run {run}`" for r in roles if r in _ROLE_STAGES]
    cmd = f"`curate score --run {run} --signal {name}{''.join(' ' + f for f in flags)}`"
    return (" then ".join(before) + " then " if before else "") + cmd


def signal(name: str, *, params: dict[str, Any] | None = None, roles: tuple[str, ...] = (), deps=(),
           key_extra: Callable[[ScoreContext], Any] | None = None):
    """Decorator registering `fn(ctx) -> np.ndarray` as signal `name` (docstring = its description)."""

    def deco(fn: Callable[[ScoreContext], np.ndarray]) -> Callable[[ScoreContext], np.ndarray]:
        SIGNALS.register(name)(
            SignalDef(name, fn, dict(params or {}), tuple(roles), (fn.__doc__ or "").strip(),
                      deps if callable(deps) else tuple(deps), key_extra)
        )
        return fn

    return deco


def short_hash(obj: Any, n: int = 8) -> str:
    """Stable hex digest of a JSON-serialisable object."""
    data = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(data, digest_size=n).hexdigest()


def ids_digest(ids: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{len(ids)}\n".encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def tokenizer_fingerprint(path: str | os.PathLike) -> str:
    """Hash of the files that define a tokenizer (its vocabulary, merges and settings)."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=8)
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
             "vocab.json", "merges.txt", "tokenizer.model"]
    found = False
    for name in names:
        f = path / name
        if f.exists():
            found = True
            h.update(name.encode())
            h.update(f.read_bytes())
    if not found:
        raise FileNotFoundError(f"{path} holds no tokenizer files")
    return h.hexdigest()


def default_tokenizer_path() -> Path:
    """The bundled embedder's tokenizer (all-MiniLM-L6-v2), used for token counts when no model is given."""
    from index.embed import default_model_path

    return Path(default_model_path())


class ScoreContext:
    """Everything a signal may read, loaded lazily and shared between the signals of one `score` call."""

    def __init__(
        self,
        run: str | os.PathLike,
        *,
        models: dict[str, str | None],
        validation: str | os.PathLike | None,
        dtype: str | None,
        batch_tokens: int,
        progress: bool,
        params: dict[str, Any],
        device: str | None = None,
        executor: Any = None,
    ) -> None:
        self.rd = RunDir(run)
        self.executor = executor  # where per-row model passes run (None: this process; see curate.executors)
        self.models = models
        self.validation = Path(validation) if validation is not None else None
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.progress = progress
        self.params = params
        self.device = device
        self.view = PoolView.from_run(self.rd)  # the run's pool, embeddings and graph, read once on first use
        self._scorers: dict[str, Any] = {}
        self._tok = None
        self._fps: dict[str, str] = {}
        self._pool_digest: str | None = None
        self.extra: dict[str, Any] = {}
        self.memo: dict[Any, Any] = {}  # per-row values derived from the pool, read by a key and its signal alike

    # pool -------------------------------------------------------------------------------------
    @property
    def pool(self):
        """The pool table (id, kind, domain, messages, prompt, response, meta), pool order."""
        return self.view.columns(["id", "domain", "messages", "prompt", "response", "meta"])

    @property
    def n(self) -> int:
        return self.view.n

    @property
    def ids(self) -> list[str]:
        return self.view.frame["id"].to_list()

    def messages(self, lo: int = 0, hi: int | None = None) -> list[list[dict]]:
        """Conversations of pool rows [lo, hi) as lists of {role, content}."""
        return self.pool["messages"].slice(lo, (hi if hi is not None else self.n) - lo).to_list()

    def key_pool(self) -> str:
        """Digest of the pool's ordered id list."""
        if self._pool_digest is None:
            self._pool_digest = ids_digest(self.ids)
        return self._pool_digest

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def bar(self, total: int, desc: str) -> Any:
        """A tqdm bar over `total` rows (rows/s on stderr), shown when this score call has progress on."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, dynamic_ncols=True,
                    disable=not self.progress)

    # models -----------------------------------------------------------------------------------
    def model_path(self, role: str) -> str:
        value = self.models.get(role)
        if value is None and role == "base_model":
            value = self.models.get("model")
        if value is None:
            flag = "--" + role.replace("_", "-")
            raise ValueError(f"this signal needs a causal LM for {role!r}: pass {role}=PATH (CLI {flag})")
        if value == "reference":  # ILA's reference model of this run (curate train --reference)
            if not self.rd.reference_path.exists():
                raise ValueError(
                    f"{role}=reference, but {self.rd.root} has no reference model: make one with "
                    f"`curate train --run {self.rd.root} --reference 300 --lora`"
                )
            value = json.loads(self.rd.reference_path.read_text())["model"]
        return value

    def scorer(self, role: str = "model"):
        """The LMScorer of a role, loaded once."""
        path = self.model_path(role)
        if path not in self._scorers:
            from curate.signals.lm import LMScorer

            self._scorers[path] = LMScorer(
                path,
                dtype=self.dtype,
                device=self.device,
                max_length=int(self.param("max_length", 2048)),
                batch_tokens=self.batch_tokens,
            )
        return self._scorers[path]

    def fingerprint(self, role: str) -> str:
        """Identity of what a role reads, without loading a model where possible."""
        if role in self._fps:
            return self._fps[role]
        if role in ("model", "base_model", "ref_model"):
            from curate.models import model_fingerprint, resolve_model
            from curate.signals.lm import default_device, resolve_dtype

            dev = self.device or default_device()
            fp = model_fingerprint(resolve_model(self.model_path(role)), resolve_dtype(self.dtype, dev))
        elif role == "tokenizer":
            fp = "tok-" + tokenizer_fingerprint(self.tokenizer_path())
        elif role == "embedder":
            from curate.embed import current_fingerprint

            fp = "emb-" + current_fingerprint(self.rd.root)
        elif role == "validation":
            if self.validation is None:
                raise ValueError("this signal needs a tiny validation set: pass validation=PATH (CLI --validation)")
            if not self.validation.exists():
                raise FileNotFoundError(f"validation file {self.validation} does not exist")
            fp = "val-" + hashlib.blake2b(self.validation.read_bytes(), digest_size=8).hexdigest()
        elif role == "knn":
            p = self.rd.require(self.rd.index_dir / "knn.npz", "index")
            st = p.stat()
            fp = f"knn-{st.st_size}-{st.st_mtime_ns}"
        else:
            raise KeyError(role)
        self._fps[role] = fp
        return fp

    def tokenizer_path(self) -> Path:
        if self.models.get("model"):
            from curate.models import resolve_model

            return resolve_model(self.models["model"])
        return default_tokenizer_path()

    def tokenizer(self):
        if self._tok is None:
            from curate.signals.lm import load_tokenizer

            self._tok = load_tokenizer(self.tokenizer_path())
        return self._tok

    # keys -------------------------------------------------------------------------------------
    def key(self, defn: SignalDef) -> dict:
        """The cache key of a signal: fingerprints of what it reads, its parameters, and the pool."""
        params = {k: self.params.get(k, v) for k, v in defn.params.items()}
        fps = {role: self.fingerprint(role) for role in defn.roles}
        key = {"models": fps, "params": params, "pool": self.key_pool()}
        if defn.key_extra is not None:
            key["reads"] = defn.key_extra(self)
        return key

    def signal(self, name: str) -> np.ndarray:
        """Values of another signal, computed (and stored) first if needed."""
        from curate.signals.stage import ensure_signal

        ensure_signal(self, name)
        from curate.signals.store import load_signal

        return load_signal(self.rd.root, name)
