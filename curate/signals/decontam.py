"""Decontamination: pool rows that are (near-)copies of validation rows, found at the validation step.

A validation set used by `icl`, `relevance`, `miw_score` or the `rds` selector must not leak into the training
subset: a pool row identical to a validation item has the highest ICL gain and relevance of all, so those
signals would pull it in. A pool row is contaminated by a validation file when

- `exact_id`: its id equals the content id the pool would give the validation item (kind sft, the item's
  question turns then its answer as the assistant turn; `curate.pool.ids.content_id`);
- `exact_text`: its prompt and response, whitespace-collapsed and case-folded, equal the item's (the prompt
  rendered as ingest renders it, `curate.pool.layouts.render_prompt`); this catches copies stored in
  another layout or kind (e.g. a preference row whose chosen answer is the item's answer);
- `near_duplicate`: the cosine between its embedding (the run's current embeddings) and the item's (same
  encoder, model, dtype, text fields and max length as the run's embed stage) is at or above `threshold`
  (default 0.95), and its text holds at least half (MIN_OVERLAP) of the item's own word 8-grams. An item's own
  n-grams leave out its template: the n-grams found in TEMPLATE_ROWS or more of the item's TEMPLATE_NEIGHBOURS
  most similar pool rows (all of them when nothing else is left). Without the text check every item of a
  templated task is a near duplicate of every other: in the BIG-bench demo pool all 250 rows of the SVG-shapes
  task sat at cosine 0.95-0.997 to a validation item of that task (the same ten options, another path and
  answer). The template is counted over the nearest rows, not only those above the threshold, so a task with
  few rows that close (a long shared preamble) is recognised too. Without embeddings only the exact checks run,
  and the record says so.

Each validation file gets one record, `<run>/decontam/<validation fingerprint>.json` (threshold, embedding
fingerprint, pool digest, counts per reason and every contaminated row with its reason, validation row and
cosine). The score stage writes it whenever it is given a validation file; the select stage writes it for a
validation file given to it, refreshes stale records (pool or embeddings changed since) whose file is still
there, and by default excludes every recorded row from selection.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.run import RunDir
from curate.signals.validation import ValItem, read_validation
from index.io import read_json, write_json

DEFAULT_THRESHOLD = 0.95
REASONS = ("exact_id", "exact_text", "near_duplicate")
#: a near duplicate holds at least this share of the item's own word n-grams ...
MIN_OVERLAP = 0.5
#: ... of NGRAM words (fewer for shorter items: the whole item) ...
NGRAM = 8
#: ... where an n-gram found in this many ...
TEMPLATE_ROWS = 10
#: ... of the item's this many most similar pool rows is the task's template
TEMPLATE_NEIGHBOURS = 100
#: the near-duplicate rule, recorded in the key so records made under another rule are redone
NEAR_RULE = (f"cosine>=threshold, own {NGRAM}-gram overlap>={MIN_OVERLAP}, template in {TEMPLATE_ROWS} of the "
             f"{TEMPLATE_NEIGHBOURS} nearest rows")


class DecontaminationError(CurateError):
    """A validation set cannot be checked against the pool (bad threshold, encoder mismatch)."""


def validation_fingerprint(path: str | os.PathLike) -> str:
    """The key of a validation file: a hash of its bytes (the same key its signals use)."""
    return "val-" + hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


def text_key(prompt: str | None, response: str | None) -> str:
    """Whitespace-collapsed, case-folded prompt and response: equal keys mean the same exchange."""
    def norm(s: str | None) -> str:
        return " ".join((s or "").split()).casefold()

    return norm(prompt) + "\x1f" + norm(response)


def item_id(item: ValItem) -> str:
    """The pool id a validation item would get if it were ingested as an sft row."""
    from curate.pool.ids import content_id

    return content_id("sft", [*item.question, {"role": "assistant", "content": item.answer}])


def item_text_key(item: ValItem) -> str:
    """`text_key` of a validation item, its prompt rendered the way ingest renders a pool row's prompt."""
    from curate.pool.layouts import render_prompt

    return text_key(render_prompt(list(item.question)), item.answer)


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The case-folded, whitespace-split word n-grams of `text` (one n-gram of every word when it has fewer)."""
    w = text.casefold().split()
    m = min(n, len(w))
    return {tuple(w[i : i + m]) for i in range(len(w) - m + 1)} if m else set()


def own_overlap(item_text: str, row_texts: Sequence[str], context: Sequence[str] | None = None) -> np.ndarray:
    """Share of the item's own word n-grams (NGRAM words; its template left out: those in TEMPLATE_ROWS or more
    of `context`, default `row_texts`, or none when that leaves nothing) that each of `row_texts` holds."""
    grams = word_ngrams(item_text, NGRAM)
    if not grams:
        return np.zeros(len(row_texts))
    n = len(next(iter(grams)))
    hits = [grams & word_ngrams(t, n) for t in row_texts]
    df: dict[tuple[str, ...], int] = {}
    for h in hits if context is None else (grams & word_ngrams(t, n) for t in context):
        for g in h:
            df[g] = df.get(g, 0) + 1
    own = {g for g in grams if df.get(g, 0) < TEMPLATE_ROWS} or grams
    return np.array([len(h & own) / len(own) for h in hits])


def _most_similar(rows: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (validation item), the TEMPLATE_NEIGHBOURS largest `sims` and their `rows` (same shape)."""
    if len(sims) <= TEMPLATE_NEIGHBOURS:
        return rows, sims
    keep = np.argpartition(-sims, TEMPLATE_NEIGHBOURS - 1, axis=0)[:TEMPLATE_NEIGHBOURS]
    return np.take_along_axis(rows, keep, 0), np.take_along_axis(sims, keep, 0)


def find_contamination(
    pool_ids: Sequence[str],
    prompts: Sequence[str | None],
    responses: Sequence[str | None],
    items: Sequence[ValItem],
    *,
    vectors: np.ndarray | None = None,
    val_vectors: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    chunk: int = 65536,
) -> list[dict[str, Any]]:
    """Contaminated pool rows, one dict each: position, id, reason, val_row, cosine (None for exact matches) and,
    for near duplicates, overlap (the share of the item's own n-grams the row holds; see the module doc).

    A row matching several ways gets the first reason of `REASONS`; `vectors` (pool, unit rows) and
    `val_vectors` (validation, unit rows) enable the near-duplicate check. A near duplicate's val_row is the
    most similar item whose text check it passes.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise DecontaminationError(f"decontamination threshold must lie in (0, 1], got {threshold!r}")
    found: dict[int, dict[str, Any]] = {}
    by_id = {item_id(it): v for v, it in enumerate(items)}
    by_text = {item_text_key(it): v for v, it in enumerate(items)}
    for p, rid in enumerate(pool_ids):
        v = by_id.get(str(rid))
        if v is not None:
            found[p] = {"reason": "exact_id", "val_row": v, "cosine": None}
            continue
        v = by_text.get(text_key(prompts[p], responses[p]))
        if v is not None:
            found[p] = {"reason": "exact_text", "val_row": v, "cosine": None}
    if vectors is not None and val_vectors is not None and len(items) and len(vectors):
        val = np.asarray(val_vectors, dtype=np.float32)
        pos, vrow, cos = [], [], []  # every (row, item) pair at or above the threshold
        near = np.empty((0, len(items)), dtype=np.int64)  # each item's most similar rows (columns), for its template
        near_sims = np.empty((0, len(items)), dtype=np.float32)
        for lo in range(0, len(vectors), chunk):
            sims = np.asarray(vectors[lo : lo + chunk], dtype=np.float32) @ val.T
            top, top_sims = _most_similar(np.broadcast_to(np.arange(lo, lo + len(sims))[:, None], sims.shape), sims)
            near, near_sims = _most_similar(np.concatenate([near, top]), np.concatenate([near_sims, top_sims]))
            best = sims.max(axis=1)
            for p in np.flatnonzero(best >= threshold):  # exact matches keep their reason, with their cosine
                if lo + int(p) in found:
                    found[lo + int(p)]["cosine"] = float(best[p])
            r, v = np.nonzero(sims >= threshold)
            pos.append(r + lo)
            vrow.append(v)
            cos.append(sims[r, v])
        pos, vrow, cos = np.concatenate(pos), np.concatenate(vrow), np.concatenate(cos)
        overlap = np.zeros(pos.size)

        def text(p: int) -> str:
            return f"{prompts[p] or ''} {responses[p] or ''}"

        for v in np.unique(vrow):
            at = np.flatnonzero(vrow == v)
            overlap[at] = own_overlap(items[v].question_text + " " + items[v].answer, [text(p) for p in pos[at]],
                                      [text(p) for p in near[:, v]])
        for i in np.lexsort((-cos, pos)):  # per row, the most similar item first
            p = int(pos[i])
            if p not in found and overlap[i] >= MIN_OVERLAP:
                found[p] = {"reason": "near_duplicate", "val_row": int(vrow[i]), "cosine": float(cos[i]),
                            "overlap": float(overlap[i])}
    return [{"position": p, "id": str(pool_ids[p]), **found[p]} for p in sorted(found)]


def encode_like_pool(run: RunDir | str | os.PathLike, items: Sequence[ValItem], device: str | None = None) -> np.ndarray:
    """Unit embeddings of validation items made exactly as the run's embed stage made the pool's.

    The item's "prompt" field is its question text and "response" its answer, joined by a newline as the embed
    stage joins the fields it embedded (read from embeddings/current.json).
    """
    from curate.embed import current_fingerprint, embedding_meta
    from index.embed import Encoder

    rd = RunDir(run)
    root = rd.root
    fp = current_fingerprint(root)
    cur = read_json(rd.current_embeddings_path)
    fields = list(cur.get("fields") or ["prompt", "response"])
    texts = []
    for item in items:
        parts = {"prompt": item.question_text, "response": item.answer}
        missing = [f for f in fields if f not in parts]
        if missing:
            raise DecontaminationError(f"embeddings of {root} use field(s) {missing} that a validation row lacks")
        texts.append("\n".join(parts[f] for f in fields))
    enc = Encoder.load(cur["model_path"], dtype=cur.get("dtype", "float32"), device=device or "auto")
    if enc.fingerprint_with({"fields": fields}) != fp:  # embedded with an explicit max_seq_length?
        msl = embedding_meta(root, fp).get("max_seq_length")
        enc = Encoder.load(cur["model_path"], dtype=cur.get("dtype", "float32"), device=device or "auto",
                           max_seq_length=msl)
        if enc.fingerprint_with({"fields": fields}) != fp:
            raise DecontaminationError(
                f"cannot rebuild the encoder of embeddings {fp} (model {cur['model_path']}): re-run `curate embed`"
            )
    return enc.encode(texts)


def _embedding_fp(root: Path) -> str | None:
    from curate.embed import current_fingerprint

    try:
        fp = current_fingerprint(root)
    except FileNotFoundError:
        return None
    meta = RunDir(root).embeddings_dir(fp) / "meta.json"
    return fp if meta.exists() and read_json(meta).get("complete") else None


def _pool_digest(ids: Sequence[str]) -> str:
    from curate.signals.base import ids_digest

    return ids_digest([str(i) for i in ids])


def record_path(run: RunDir | str | os.PathLike, validation: str | os.PathLike) -> Path:
    """Where the decontamination record of a validation file lives."""
    return RunDir(run).decontam_dir / f"{validation_fingerprint(validation)}.json"


def decontaminate(
    run: RunDir | str | os.PathLike,
    validation: str | os.PathLike,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    device: str | None = None,
) -> dict[str, Any]:
    """Check every row of the pool of `run` against the whole validation file; write and return its record.

    A record with the same validation file, threshold, pool and embeddings is reused as it is.
    """
    rd = RunDir(run)
    validation = Path(validation)
    if not validation.exists():
        raise FileNotFoundError(f"validation file {validation} does not exist")
    frame = rd.read_pool(["id", "prompt", "response"])
    ids = frame["id"].to_list()
    emb = _embedding_fp(rd.root)
    vectors = val_vectors = None
    if emb is not None:
        from curate.embed import load_vectors
        from curate.errors import MissingArtefactError

        try:
            vectors = load_vectors(rd.root, emb)
        except MissingArtefactError:  # embedded before the pool was re-ingested: exact checks only
            emb = None
    key = {
        "validation_fingerprint": validation_fingerprint(validation),
        "threshold": float(threshold),
        "near_rule": NEAR_RULE,
        "embeddings": emb,
        "pool": _pool_digest(ids),
    }
    path = record_path(rd, validation)
    if path.exists():
        old = read_json(path)
        if all(old.get(k) == v for k, v in key.items()):
            return old
    items = read_validation(validation)
    if vectors is not None:
        val_vectors = encode_like_pool(rd, items, device)
    rows = find_contamination(ids, frame["prompt"].to_list(), frame["response"].to_list(), items,
                              vectors=vectors, val_vectors=val_vectors, threshold=threshold)
    counts = {r: sum(1 for x in rows if x["reason"] == r) for r in REASONS}
    record: dict[str, Any] = {
        "validation": str(Path(validation).resolve()),  # refresh finds it from any working directory
        **key,
        "n_validation": len(items),
        "counts": {**counts, "total": len(rows)},
        "rows": [{k: v for k, v in x.items() if k != "position"} for x in rows],
    }
    if emb is None:
        record["note"] = "near duplicates not checked: the run has no current embeddings (run `curate embed`)"
    write_json(path, record)
    return record


def contamination(run: RunDir | str | os.PathLike, *, refresh: bool = True, device: str | None = None) -> list[dict]:
    """Every decontamination record of `run`, refreshed first where stale (pool, embeddings or the near-duplicate
    rule changed since) and the validation file still exists."""
    rd = RunDir(run)
    folder = rd.decontam_dir
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("val-*.json")):
        rec = read_json(path)
        src = Path(rec.get("validation", ""))
        if refresh and src.is_file() and validation_fingerprint(src) == rec.get("validation_fingerprint"):
            stale = rec.get("embeddings") != _embedding_fp(rd.root) or rec.get("near_rule") != NEAR_RULE or (
                rec.get("pool") != _pool_digest(rd.read_pool(["id"])["id"].to_list())
            )
            if stale:
                rec = decontaminate(rd, src, threshold=float(rec.get("threshold", DEFAULT_THRESHOLD)), device=device)
        records.append(rec)
    return records


def contaminated_positions(ids: Sequence[str], records: Sequence[dict]) -> np.ndarray:
    """Pool positions (ascending) of the rows any record lists."""
    bad = {r["id"] for rec in records for r in rec.get("rows", [])}
    return np.flatnonzero(np.isin(np.asarray(ids, dtype=object), np.asarray(sorted(bad), dtype=object)))


def summary(records: Sequence[dict], ids: Sequence[str], chosen: np.ndarray | None = None) -> dict[str, Any]:
    """What a selection sidecar records: the validation sets checked, counts per reason, the excluded rows."""
    pool = set(map(str, ids))
    rows = {}
    for rec in records:
        for r in rec.get("rows", []):
            if r["id"] in pool and r["id"] not in rows:
                rows[r["id"]] = {**r, "validation": rec.get("validation")}
    out: dict[str, Any] = {
        "validation_sets": [
            {k: rec.get(k) for k in ("validation", "validation_fingerprint", "threshold", "embeddings", "counts",
                                     "note") if rec.get(k) is not None}
            for rec in records
        ],
        "contaminated_rows": len(rows),
        "by_reason": {r: sum(1 for x in rows.values() if x["reason"] == r) for r in REASONS},
        "rows": list(rows.values()),
    }
    if chosen is not None:
        chosen_ids = {str(ids[int(i)]) for i in np.asarray(chosen, dtype=np.int64)}
        out["selected_contaminated_rows"] = len(chosen_ids & set(rows))
    return out
