"""The whole pipeline on a real BIG-bench pool of a million rows: ingest, embed, index, map, score, select
with every selector that needs no LM, export. One stage per child process, so each stage's wall time and
peak RSS (the child's own `ru_maxrss`, from `os.wait4`) are its own.

    nice -n 10 .venv/bin/python bench/pipeline_1m.py --rows 20000                     # a try at 20k
    flock /tmp/curate-bench.lock .venv/bin/python bench/pipeline_1m.py --rows 1000000 \\
        --out bench/out/pipeline_1m.json

Data: the BIG-bench archive written as parquet by `scripts/build_bigbench_pool.py` (default
/work/bigbench_pool, 1,841,863 rows). The `input` step (not a curate stage) shuffles those rows (seeded)
and keeps the shortest prefix that holds `--rows` distinct (prompt, response) pairs, duplicates included,
so the ingest stage really deduplicates and the pool has about `--rows` rows in random order.

Embeddings: the embed stage (`curate.embed.embed`, dtype auto: bf16 only on CPUs with bf16 units; 4,096-row shards) runs with a stand-in executor
(the executor seam: `executor=` a callable). `--sample-shards` shards spread evenly over the pool are
embedded by the real all-MiniLM-L6-v2 encoder through the stage's own shard job (timed: the encoder's
rows/s per worker). Every other shard gets a STAND-IN vector, not MiniLM's:
- the row's text (first 1,024 characters, about MiniLM's 256-token window) as hashed word 1-2-grams
  (4,096 signed buckets, l2-normalised);
- mapped to 384-d by a ridge regression fitted on the real sample's vectors;
- plus a seeded gaussian random projection of the same features, scaled to the fit's per-dimension residual
  (the spread the regression smooths away comes back as a function of the text), then L2-normalised.
Why: a full MiniLM pass over 1M rows takes about 3 h on these 2 cores (89 rows/s, measured), while the
index and the selectors' timings depend on the geometry (clusters of templated tasks, near-duplicates,
spread), which random vectors would not have. The stage's JSON records how close the stand-in comes to
the real vectors on 4,000 held-out sample rows (cosine to the real vector, nearest-neighbour cosines, kNN
overlap). The vectors are written through the stage, so the run's meta.json names MiniLM: outside the
sample shards they are the stand-in.

Stages after embed use the public stage functions with their defaults: `curate.map.build_index`
(kind auto, k=10), `curate.map.map_pool` (PCA 2-D, grid, k-means, diversity), `curate.signals.score`
(heuristic signals only), `curate.select.select` (budget `--budget` rows, each selector's default
stratification), `curate.export.export` (every selection, messages layout). A re-run skips every stage
whose record (<run-dir>/_bench/<stage>.json) exists, and the stages skip finished work themselves.
Two more records: `lm_tokens` (SmolLM2-135M chat-template and MiniLM token counts of the sample rows,
tokenizers only, for the projection) and `coverage` (the coverage report that `select` attaches to every
selection, timed alone on the random selection). Selectors whose paper signal needs an LM run here on
heuristic stand-in signals (ILA: mtld for relative depth; Deita: mtld x knn_novelty for its LLM scores; MIW:
given weights for the ICL-learned ones; DaaR: sentence-embedding features for the truncated LM's); `rds`
needs LM features of every row and is not run: its cost is the LM scoring pass, projected from
bench/score_throughput_bf16.json. The JSON's `projection` gives the wall time on N workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUDGET = 10_000
SHARD_SIZE = 4096
# Selectors that need no LM, with parameters. Signals are heuristic stand-ins where the paper's signal needs
# an LM (ILA: relative_depth; Deita: IFD / LLM scores; MIW: weights learned with an ICL proxy; DaaR:
# truncated-LM features): the algorithm's cost is what is timed here, on the pool's real size.
SELECTORS: dict[str, dict[str, Any]] = {
    "random": {},
    "balanced-random": {},
    "longest": {},
    "top-signal": {"signal": "mtld"},
    "k-center": {},
    "facility-location": {},
    "ila": {"signal": "mtld"},
    "deita": {"signal": "mtld,knn_novelty"},
    "miw": {"weights": {"mtld": 0.4, "reasoning_steps": 0.3, "knn_novelty": 0.2, "math_markers": 0.1}},
    "daar": {"cluster_features": "embeddings", "probe_features": "embeddings", "probe_size": 5000},
    "daar_band": {"metric": "inter", "band": [80, 100], "descending": False, "labels": "domain"},
}
# selectors that need an LM's per-row passes and so are measured elsewhere (their cost is the LM scoring)
LM_SELECTORS = {
    "rds": "LM gradient/hidden-state features of every pool row and of the validation set",
}
SIGNALS = ["tokens", "mtld", "reasoning_steps", "math_markers", "knn_novelty", "knn_density"]
STAGES = ["input", "ingest", "embed", "lm_tokens", "index", "map", "score", *[f"select:{m}" for m in SELECTORS], "export",
          "coverage"]
CORE = {"input", "ingest", "embed", "index", "map", "score"}  # later stages need these


# ---------------------------------------------------------------------------------------------------------
# the stand-in embedding executor


class StandInExecutor:
    """An executor for the embed stage's shard job: the real encoder on `sample` shards, the hashed n-gram
    stand-in (fitted on those shards' real vectors) on every other missing shard. Writes each shard to a
    temporary name and renames it (index.io.atomic_path), like the stage's own executors."""

    def __init__(self, n_sample: int, record: Path, seed: int = 0, n_features: int = 4096, ridge: float = 1.0,
                 noise: float = 1.5, trunc_chars: int = 1024, block_shards: int = 8) -> None:
        self.n_sample, self.record, self.seed = n_sample, Path(record), seed
        self.n_features, self.ridge, self.noise, self.trunc = n_features, ridge, noise, trunc_chars
        self.block = block_shards

    def sample_shards(self, n_shards: int) -> list[int]:
        k = min(self.n_sample, n_shards)
        return sorted({int((j + 0.5) * n_shards / k) for j in range(k)})

    def _hasher(self) -> Any:
        import numpy as np
        from sklearn.feature_extraction.text import HashingVectorizer

        trunc = self.trunc
        return HashingVectorizer(n_features=self.n_features, ngram_range=(1, 2), alternate_sign=True, norm="l2",
                                 preprocessor=lambda s: s[:trunc].lower(), dtype=np.float32)

    def __call__(self, job: Any, out_dir: str | os.PathLike, n_shards: int, ext: str, progress: Any = None) -> list[int]:
        import numpy as np

        from index.io import atomic_path, clear_stale_temps, missing_shards, read_json, shard_name, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        missing = set(missing_shards(out, n_shards, ext))
        rec = read_json(self.record) if self.record.exists() else {"real_shards": {}}
        if not missing:
            return []
        clear_stale_temps(out)
        sample = self.sample_shards(n_shards)
        done: list[int] = []
        state = None
        t_load = 0.0
        for i in sample:  # the real encoder, through the stage's own shard job
            if i not in missing:
                continue
            if state is None:
                t = time.perf_counter()
                state = job.setup()
                t_load = time.perf_counter() - t
            t = time.perf_counter()
            with atomic_path(out / shard_name(i, ext), suffix="." + ext) as tmp:
                rows = job.run(state, i, tmp, progress)
            rec["real_shards"][str(i)] = {"rows": int(rows), "seconds": time.perf_counter() - t}
            rec["encoder_setup_seconds"] = t_load
            write_json(self.record, rec)
            done.append(i)
        # fit the stand-in on the real shards (all of them: they are on disk until the stage consolidates)
        t = time.perf_counter()
        hv = self._hasher()
        texts, real = [], []
        for i in sample:
            start, stop = i * job.shard_size, min((i + 1) * job.shard_size, job.n_rows)
            texts += list(job.texts(start, stop))
            real.append(np.load(out / shard_name(i, ext)))
        Y = np.concatenate(real).astype(np.float64)
        X = hv.transform(texts)
        model, quality = fit_standin(X, Y, ridge=self.ridge, noise=self.noise, seed=self.seed)
        rec["fit"] = {"rows": len(texts), "seconds": time.perf_counter() - t, "n_features": self.n_features,
                      "ridge": self.ridge, "noise": self.noise, "trunc_chars": self.trunc, "heldout": quality}
        write_json(self.record, rec)
        # the stand-in for every other missing shard, a block of shards' texts read at a time
        rest = sorted(missing - set(sample))
        t = time.perf_counter()
        n_rest = 0
        for b in range(0, len(rest), self.block):
            group = rest[b : b + self.block]
            lo, hi = group[0] * job.shard_size, min((group[-1] + 1) * job.shard_size, job.n_rows)
            block_texts = list(job.texts(lo, hi))
            for i in group:
                start, stop = i * job.shard_size, min((i + 1) * job.shard_size, job.n_rows)
                vecs = model.transform(hv.transform(block_texts[start - lo : stop - lo]))
                with atomic_path(out / shard_name(i, ext), suffix="." + ext) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, vecs)
                n_rest += stop - start
                if progress is not None:
                    progress(stop - start)
                done.append(i)
        if rest:
            rec["standin"] = {"rows": n_rest, "shards": len(rest), "seconds": time.perf_counter() - t}
            write_json(self.record, rec)
        return done


class StandInModel:
    """normalise(X W + c + noise * residual_std * (X G)): the ridge prediction plus a seeded gaussian random
    projection G of the same hashed features, scaled to the per-dimension residual of the fit. The ridge
    prediction alone is too smooth (neighbours too close, mean cosine too high); the added term gives back
    text-specific spread while keeping near-identical texts near each other (a function of the text, not of
    the row). noise = 1.5 matched the real vectors' nearest-neighbour cosines best on a first 8k-row sample."""

    def __init__(self, W: Any, c: Any, res_std: Any, noise: float, seed: int) -> None:
        import numpy as np

        self.W, self.c, self.res_std, self.noise = W, c, res_std, noise
        self.G = np.random.default_rng(seed).standard_normal(W.shape, dtype=np.float32) if noise > 0 else None

    def transform(self, X: Any) -> Any:
        import numpy as np

        P = np.asarray(X @ self.W, dtype=np.float32) + self.c
        if self.G is not None:
            P += self.noise * self.res_std * np.asarray(X @ self.G, dtype=np.float32)
        P /= np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
        return P


def fit_standin(X: Any, Y: Any, *, ridge: float, noise: float, seed: int) -> tuple[StandInModel, dict]:
    """Ridge regression of the real vectors Y on hashed features X (intercept, 20% of rows held out to
    measure it, then refitted on all rows); returns the model and the held-out agreement."""
    import numpy as np

    n = X.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    n_te = min(max(n // 5, 1), 4000) if n >= 10 else 0
    te, tr = np.sort(perm[:n_te]), np.sort(perm[n_te:])

    def solve(rows: Any) -> tuple[Any, Any, Any]:
        Xr = X[rows]
        mx = np.asarray(Xr.mean(axis=0), dtype=np.float64).ravel()
        my = Y[rows].mean(axis=0)
        A = np.asarray((Xr.T @ Xr).toarray(), dtype=np.float64) - len(rows) * np.outer(mx, mx)
        B = np.asarray(Xr.T @ Y[rows], dtype=np.float64) - len(rows) * np.outer(mx, my)
        W = np.linalg.solve(A + ridge * np.eye(A.shape[0]), B)
        c = my - mx @ W
        res = Y[rows] - (np.asarray(Xr @ W) + c)
        return W.astype(np.float32), c.astype(np.float32), res.std(axis=0).astype(np.float32)

    quality: dict[str, Any] = {}
    if n_te:
        W, c, rs = solve(tr)
        m = StandInModel(W, c, rs, noise, seed)
        P = m.transform(X[te])
        R = Y[te].astype(np.float32)
        quality = {"rows": int(n_te), "cos_to_real_mean": float((P * R).sum(1).mean()),
                   "real": geometry(R), "standin": geometry(P), "knn10_overlap": knn_overlap(P, R, 10)}
    W, c, rs = solve(np.arange(n))
    return StandInModel(W, c, rs, noise, seed), quality


def geometry(V: Any) -> dict:
    """Nearest-neighbour cosines within a set of unit vectors (median, deciles, share above 0.9 / 0.95) and
    the mean pairwise cosine."""
    import numpy as np

    S = V @ V.T
    n = len(V)
    mean_pair = float((S.sum() - np.trace(S)) / max(n * (n - 1), 1))
    np.fill_diagonal(S, -2.0)
    nn = S.max(axis=1)
    return {"nn_median": float(np.median(nn)), "nn_p10": float(np.quantile(nn, 0.1)),
            "nn_p90": float(np.quantile(nn, 0.9)), "nn_above_0.9": float((nn > 0.9).mean()),
            "nn_above_0.95": float((nn > 0.95).mean()), "mean_pair_cos": mean_pair}


def knn_overlap(A: Any, B: Any, k: int) -> float:
    """Mean share of each row's k nearest neighbours (within the set) that A and B agree on."""
    import numpy as np

    def top(V: Any) -> Any:
        S = V @ V.T
        np.fill_diagonal(S, -2.0)
        return np.argpartition(-S, k, axis=1)[:, :k]

    ta, tb = top(A), top(B)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ta, tb, strict=True)]))


# ---------------------------------------------------------------------------------------------------------
# stages (each runs in its own child process)


def stage_input(args: argparse.Namespace, root: Path) -> dict:
    """Shuffle the BIG-bench parquet pool (seeded) and write the shortest prefix holding `rows` distinct
    (prompt, response) pairs, duplicates included, as input parquet parts."""
    import numpy as np
    import polars as pl

    from index.io import atomic_path

    src = sorted(Path(args.pool).glob("shard-*.parquet"))
    if not src:
        raise SystemExit(f"{args.pool} has no shard-*.parquet: run scripts/build_bigbench_pool.py {args.pool}")
    df = pl.read_parquet(src, columns=["prompt", "response", "domain", "task"])
    n_src = df.height
    perm = np.random.default_rng(args.seed).permutation(n_src)
    key = df.select(pl.struct("prompt", "response").hash(seed=0).alias("k"))["k"].to_numpy()[perm]
    _, first = np.unique(key, return_index=True)
    firsts = np.sort(first)
    if len(firsts) < args.rows:
        raise SystemExit(f"{args.pool} holds {len(firsts):,} distinct rows, fewer than --rows {args.rows:,}")
    stop = int(firsts[args.rows - 1]) + 1  # the prefix holding `rows` distinct pairs
    take = perm[:stop]
    out = root / "input"
    out.mkdir(parents=True, exist_ok=True)
    part = 100_000
    for j, lo in enumerate(range(0, stop, part)):
        sub = df[take[lo : lo + part]]
        with atomic_path(out / f"part-{j:05d}.parquet", suffix=".parquet") as tmp:
            sub.write_parquet(tmp, compression="zstd")
    return {"source_rows": n_src, "input_rows": stop, "distinct_pairs": int(args.rows),
            "duplicates_in_input": stop - int(args.rows), "parts": (stop + part - 1) // part}


def stage_ingest(args: argparse.Namespace, root: Path) -> dict:
    from curate.pool import ingest

    rep = ingest([str(root / "input")], root / "run", progress=False)
    return {"n_read": rep.n_read, "n_unique": rep.n_unique, "n_duplicate": rep.n_duplicate,
            "n_quarantined": rep.n_quarantined, "n_shards": rep.n_shards, "domains": len(rep.per_domain),
            "reasons": rep.reasons}


def stage_embed(args: argparse.Namespace, root: Path) -> dict:
    from curate.embed import embed, embedding_meta
    from index.io import read_json

    record = root / "_bench" / "embed_detail.json"
    ex = StandInExecutor(args.sample_shards, record, seed=args.seed)
    fp = embed(root / "run", dtype="auto", shard_size=SHARD_SIZE, device="cpu", progress=False, executor=ex)
    meta = embedding_meta(root / "run", fp)
    rec = read_json(record) if record.exists() else {}
    real = rec.get("real_shards", {})
    rows = sum(r["rows"] for r in real.values())
    secs = sum(r["seconds"] for r in real.values())
    return {"fingerprint": fp, "n_rows": meta["n_rows"], "dim": meta["dim"], "dtype": meta["dtype"],
            "real_rows": rows, "real_seconds": secs, "real_rows_per_s": rows / secs if secs else None,
            "real_shard_indices": sorted(int(i) for i in real), "encoder_setup_seconds": rec.get("encoder_setup_seconds"),
            "fit": rec.get("fit"), "standin": rec.get("standin")}


def stage_lm_tokens(args: argparse.Namespace, root: Path) -> dict:
    """SmolLM2-135M-Instruct chat-template token counts of the rows the real encoder embedded (tokenizer
    only, no model): the per-row size of an LM scoring pass over this pool, for the projection. `cond` is
    the row as the loss pass encodes it (SmolLM2's template, default system prompt), `alone` the response
    after an empty user turn (the second pass of IFD); both clipped at the scorer's max_length, 2048."""
    import numpy as np
    from transformers import AutoTokenizer

    from curate.models import ensure_smollm2
    from curate.run import RunDir
    from index.io import read_json

    rec = read_json(root / "_bench" / "embed_detail.json")
    shards = sorted(int(i) for i in rec["real_shards"])
    pool = RunDir(root / "run").read_pool(["prompt", "response"])
    rows = np.concatenate([np.arange(i * SHARD_SIZE, min((i + 1) * SHARD_SIZE, pool.height)) for i in shards])
    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    prompts, responses = pool["prompt"].to_list(), pool["response"].to_list()
    t = time.perf_counter()

    def n_tokens(user: str, answer: str) -> int:
        ids = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                                      tokenize=True, return_dict=False)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return len(ids)

    cond, alone = [], []
    for r in rows.tolist():
        p, a = prompts[r] or "", responses[r] or ""
        cond.append(n_tokens(p, a))
        alone.append(n_tokens("", a))
    cond_a, alone_a = np.minimum(cond, 2048), np.minimum(alone, 2048)
    from index.embed import default_model_path

    enc_tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    texts = [(prompts[r] or "") + "\n" + (responses[r] or "") for r in rows.tolist()]
    enc_n = np.array([len(x) for x in enc_tok(texts, add_special_tokens=True)["input_ids"]])
    return {"rows": int(rows.size), "tokenizer": "SmolLM2-135M-Instruct", "seconds": time.perf_counter() - t,
            "minilm_tokens_mean": float(np.minimum(enc_n, 256).mean()), "minilm_clipped_share": float((enc_n > 256).mean()),
            "cond_tokens_mean": float(cond_a.mean()), "cond_tokens_median": float(np.median(cond_a)),
            "cond_clipped_share": float((np.asarray(cond) > 2048).mean()), "alone_tokens_mean": float(alone_a.mean())}


def stage_index(args: argparse.Namespace, root: Path) -> dict:
    from curate.map import build_index

    return build_index(root / "run", seed=args.seed, progress=False)


def stage_map(args: argparse.Namespace, root: Path) -> dict:
    from curate.map import map_pool

    res = map_pool(root / "run", seed=args.seed, progress=False)
    div = res.get("diversity", {})
    return {"written": len(res.get("written", [])), "skipped": res.get("skipped"),
            "projection": {k: v for k, v in res.get("projection", {}).items() if isinstance(v, (int, float, str))},
            "grid": {k: v for k, v in res.get("grid", {}).items() if isinstance(v, (int, float, str))},
            "clusters": {k: v for k, v in res.get("clusters", {}).items() if isinstance(v, (int, float, str))},
            "diversity": {k: v for k, v in div.items() if isinstance(v, (int, float, str))}}


def stage_score(args: argparse.Namespace, root: Path) -> dict:
    from curate.signals import score

    times = {}
    for name in SIGNALS:  # one call per signal, to time each
        t = time.perf_counter()
        score(root / "run", [name], progress=False)
        times[name] = time.perf_counter() - t
    return {"signals": SIGNALS, "seconds_per_signal": times}


def stage_select(args: argparse.Namespace, root: Path, method: str) -> dict:
    from curate.select import select

    t = time.perf_counter()
    sel = select(root / "run", method, args.budget, seed=args.seed, **SELECTORS[method])
    secs = time.perf_counter() - t
    st = sel.stats
    strat = st.get("stratify") or {}
    cov = st.get("coverage") or {}
    return {"method": method, "params": SELECTORS[method], "budget": args.budget, "rows": int(len(sel.positions)),
            "select_seconds": secs, "tokens": st.get("tokens"),
            "stratify": {k: strat.get(k) for k in ("by", "scope", "rounds", "kl_vs_target")} | {
                "strata": len(strat.get("strata") or {})},
            "coverage": {k: v for k, v in cov.items() if isinstance(v, (int, float))}}


def stage_coverage(args: argparse.Namespace, root: Path) -> dict:
    """The coverage report `select` attaches to every selection (curate.map.coverage_report), timed alone on
    the random selection: the part of each select stage that is not the selector."""
    from curate.map import coverage_report
    from curate.run import RunDir
    from curate.select import Selection

    pos = Selection.load(RunDir(root / "run"), "random").positions
    t = time.perf_counter()
    rep = coverage_report(root / "run", pos)
    return {"selection": "random", "rows": int(len(pos)), "coverage_report_seconds": time.perf_counter() - t,
            "covering_radius": rep.get("covering_radius")}


def stage_export(args: argparse.Namespace, root: Path) -> dict:
    from curate.export import export

    times = {}
    for method in SELECTORS:
        if not (root / "run" / "selections" / f"{method}.parquet").exists():
            continue  # its select stage failed
        t = time.perf_counter()
        export(root / "run", method)
        times[method] = time.perf_counter() - t
    return {"selections": list(times), "seconds_per_selection": times}


def run_stage(name: str, args: argparse.Namespace, root: Path) -> dict:
    if name.startswith("select:"):
        return stage_select(args, root, name.split(":", 1)[1])
    return {"input": stage_input, "ingest": stage_ingest, "embed": stage_embed, "lm_tokens": stage_lm_tokens,
            "index": stage_index,
            "map": stage_map, "score": stage_score, "export": stage_export, "coverage": stage_coverage}[name](args, root)


# ---------------------------------------------------------------------------------------------------------
# driver


def record_path(root: Path, stage: str) -> Path:
    return root / "_bench" / (stage.replace(":", "_") + ".json")


def child(args: argparse.Namespace) -> int:
    from index.io import write_json

    root = Path(args.run_dir)
    t = time.perf_counter()
    detail = run_stage(args.stage, args, root)
    write_json(record_path(root, args.stage), {"stage": args.stage, "inner_seconds": time.perf_counter() - t,
                                               "detail": detail})
    return 0


# LM scoring throughput per worker, measured earlier (not re-run here): SmolLM2-135M-Instruct loss pass,
# bf16, this 2-core CPU (bench/score_throughput_bf16.json, `ours_tok_s`; bench/RESULTS.md "Scoring throughput")
LM_THROUGHPUT_FILE = REPO / "bench" / "score_throughput_bf16.json"
# LM passes per pool row, in units of the row's loss pass (`cond` tokens) plus IFD's response-alone pass:
LM_SCENARIOS = {
    "one loss pass (loss / perplexity)": {"cond": 1.0, "alone": 0.0},
    "all LM signals of the LM selectors (IFD: cond + alone; ILA relative depth: + the reference model's "
    "cond pass; DaaR truncated features: 3 of 30 layers ~ 0.1; RDS+ last-hidden features ~ 1)":
        {"cond": 3.1, "alone": 1.0},
}
# ASSUMED per-GPU rates (no GPU was lent to measure them): FLOPs per row at 10% of an H100's bf16 dense peak
# (989 TFLOP/s) -> ~99 TFLOP/s effective; MiniLM-L6 22.7M parameters, SmolLM2-135M 135M parameters, 2 FLOPs per
# parameter per token (attention and the LM head's skipped positions ignored).
GPU_EFFECTIVE_FLOPS = 0.10 * 989e12
GPU_COUNTS = (1, 8, 64, 512)


def projection(results: dict) -> dict | None:
    """Wall time of the 1M pipeline on N workers: the measured global (one-node) stages plus the per-row model
    work divided over N workers, at the measured per-worker rates (this CPU) and at assumed GPU rates."""
    import json

    try:
        emb = results["embed"]["detail"]
        tok = results["lm_tokens"]["detail"]
        rows = results["ingest"]["detail"]["n_unique"]
    except KeyError:
        return None
    lm_tok_s = json.loads(LM_THROUGHPUT_FILE.read_text())["bfloat16"]["ours_tok_s"]
    enc_rows_s = emb["real_rows_per_s"]
    sel = {k: v["wall_seconds"] for k, v in results.items() if k.startswith("select:") and not v.get("failed")}
    sel_sorted = sorted(sel.values())
    median_select = sel_sorted[len(sel_sorted) // 2] if sel_sorted else 0.0
    exp = results.get("export", {})
    n_exp = max(len(exp.get("detail", {}).get("seconds_per_selection", {})), 1)
    core = sum(results[s]["wall_seconds"] for s in ("ingest", "index", "map", "score") if s in results)
    global_one = core + median_select + exp.get("wall_seconds", 0.0) / n_exp
    global_all = core + sum(sel.values()) + exp.get("wall_seconds", 0.0)
    cond, alone = tok["cond_tokens_mean"], tok["alone_tokens_mean"]
    gpu_enc = GPU_EFFECTIVE_FLOPS / (2 * 22.7e6 * tok["minilm_tokens_mean"])
    gpu_lm = GPU_EFFECTIVE_FLOPS / (2 * 135e6)
    out = {"rows": rows, "measured": {
        "encoder_rows_per_s_per_worker": enc_rows_s, "encoder_worker": f"this 2-core CPU, {emb.get('dtype', 'bfloat16')}, in-process",
        "lm_tokens_per_s_per_worker": lm_tok_s, "lm_source": str(LM_THROUGHPUT_FILE.relative_to(REPO)),
        "lm_cond_tokens_per_row": cond, "lm_alone_tokens_per_row": alone,
        "global_seconds_one_selection": global_one, "global_seconds_all_selections": global_all,
        "global_stages": "ingest + index + map + score (heuristics) + select + export, measured here at this size",
        "median_select_seconds": median_select},
        "assumed_gpu": {"effective_flops": GPU_EFFECTIVE_FLOPS, "encoder_rows_per_s": gpu_enc,
                        "lm_tokens_per_s": gpu_lm, "note": "assumed, not measured: 10% of H100 bf16 dense peak"},
        "table": []}
    for name, sc in LM_SCENARIOS.items():
        lm_tokens = rows * (sc["cond"] * cond + sc["alone"] * alone)
        for n in GPU_COUNTS:
            cpu_model = rows / (n * enc_rows_s) + lm_tokens / (n * lm_tok_s)
            gpu_model = rows / (n * gpu_enc) + lm_tokens / (n * gpu_lm)
            out["table"].append({"lm_work": name, "workers": n,
                                 "cpu_workers_model_s": cpu_model,
                                 "cpu_workers_total_one_selection_s": cpu_model + global_one,
                                 "gpus_model_s": gpu_model, "gpus_total_one_selection_s": gpu_model + global_one,
                                 "gpus_total_all_selections_s": gpu_model + global_all})
    return out


def _git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "HEAD"), "dirty_library_files": git("status", "--porcelain", "curate", "index")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="distinct rows in the pool (default %(default)s)")
    ap.add_argument("--pool", default="/work/bigbench_pool", help="scripts/build_bigbench_pool.py output")
    ap.add_argument("--run-dir", help="default /work/bench_1m/rows<ROWS>")
    ap.add_argument("--budget", type=int, default=BUDGET)
    ap.add_argument("--sample-shards", type=int, default=5, help=f"shards of {SHARD_SIZE} rows embedded by MiniLM")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated stages to run (others must be done already or are skipped)")
    ap.add_argument("--redo", help="comma-separated stages whose records are dropped first (their library "
                    "artefacts stay: the stage then skips its finished work)")
    ap.add_argument("--out", help="JSON of the run (default bench/out/pipeline_1m_<rows>.json)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.run_dir = args.run_dir or f"/work/bench_1m/rows{args.rows}"
    if args.stage:
        return child(args)

    from index.io import read_json, write_json

    root = Path(args.run_dir)
    (root / "_bench").mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    for s in (args.redo.split(",") if args.redo else []):
        record_path(root, s).unlink(missing_ok=True)
    results: dict[str, Any] = {}
    git_state, started = _git_state(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for stage in STAGES:
        rec_path = record_path(root, stage)
        if rec_path.exists():
            results[stage] = {**read_json(rec_path), "resumed": True}
            print(f"{stage:<26} done already ({results[stage].get('wall_seconds', 0):.1f} s)", flush=True)
            continue
        if only is not None and stage not in only:
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--rows", str(args.rows),
               "--pool", args.pool, "--run-dir", str(root), "--budget", str(args.budget),
               "--sample-shards", str(args.sample_shards), "--seed", str(args.seed)]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            print(f"{stage} FAILED (exit {proc.returncode}) after {wall:.1f} s", flush=True)
            results[stage] = {"stage": stage, "failed": True, "exit": proc.returncode, "wall_seconds": wall,
                              "peak_rss_gb": ru.ru_maxrss / 2**20}
            if stage in CORE:
                break
            continue
        rec = read_json(rec_path)
        rec.update({"wall_seconds": wall, "peak_rss_gb": ru.ru_maxrss / 2**20, "cpu_seconds": ru.ru_utime + ru.ru_stime,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_json(rec_path, rec)
        results[stage] = rec
        print(f"{stage:<26} {wall:8.1f} s  peak RSS {rec['peak_rss_gb']:.2f} GB", flush=True)
    out = Path(args.out or REPO / "bench" / "out" / f"pipeline_1m_{args.rows}.json")
    try:
        proj = projection(results)
    except Exception as exc:  # a report, not a stage: never lose the stage records over it
        proj = {"error": f"{type(exc).__name__}: {exc}"}
    summary = {"rows": args.rows, "projection": proj, "run_dir": str(root), "pool": args.pool, "budget": args.budget,
               "sample_shards": args.sample_shards, "shard_size": SHARD_SIZE, "seed": args.seed,
               "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
               "selectors": SELECTORS, "lm_selectors_not_run": LM_SELECTORS, "signals": SIGNALS,
               "git": git_state, "started": started, "stages": results,
               "total_wall_seconds": sum(r.get("wall_seconds", 0) for r in results.values())}
    write_json(out, summary)
    print(f"total {summary['total_wall_seconds']:.1f} s -> {out}")
    return 0 if all(not r.get("failed") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
