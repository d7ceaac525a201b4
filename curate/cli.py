"""The `curate` command line: one Typer app, thin over the stage functions (see curate.recipe.STAGES).

Every command works on a run directory (`--run`) and calls the same function a recipe or a notebook would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from curate.errors import CurateError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Curate LLM fine-tuning pools: ingest, embed, index, map, score, select, export.",
)
console = Console()  # results (paths written, summaries, tables): stdout, so they can be piped
err_console = Console(stderr=True)  # errors; progress bars go to stderr too

RunOpt = typer.Option(..., "--run", "-r", help="Run directory (ingest creates it).")

# User errors: printed as one `error:` line, exit code 2 (tracebacks only with --debug). CurateError is the
# root of the project's own; the built-in ones stay for errors raised by libraries on bad user input.
# The OSErrors below are about paths the user named (a directory given for a file, a file for a directory).
USER_ERRORS: tuple[type[Exception], ...] = (CurateError, FileNotFoundError, KeyError, ValueError, IsADirectoryError,
                                            NotADirectoryError, FileExistsError, PermissionError)
_DEBUG = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks of errors.")) -> None:
    """Curate LLM fine-tuning pools: ingest, embed, index, map, score, select, export."""
    _DEBUG["on"] = debug


def _fail(exc: BaseException) -> NoReturn:
    """Print a user error as one `error:` line (with its hint) and exit with code 2; re-raise under --debug."""
    if _DEBUG["on"]:
        raise exc
    msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc  # KeyError's str() quotes it
    text = " ".join(str(msg).split()) or type(exc).__name__
    err_console.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2) from None


#: `-p` keys that are not stage parameters: the command sets them itself
RESERVED_PARAMS = {"run": "the run directory is not a parameter: use --run",
                   "stage": "the command names the stage: 'stage' is not a parameter"}


def _with_params(param: list[str] | None, **named: Any) -> dict[str, Any]:
    """The command's named options and its `-p KEY=VALUE` parameters together; a key given both ways is an error,
    and so are the reserved keys (`run`, `stage`)."""
    params = _parse_params(param)
    for key in params:
        if key in RESERVED_PARAMS:
            _fail(typer.BadParameter(f"-p {key}=...: {RESERVED_PARAMS[key]}"))
    both = sorted(k for k in params if named.get(k) is not None)
    if both:
        _fail(typer.BadParameter(f"{both[0]!r} is given twice: as its own option and as -p {both[0]}=..."))
    return {**named, **params}


def _first_quarantine_reason(quarantine: Path) -> str:
    """The reason of the first row-level entry of a quarantine file ("" when none)."""
    import polars as pl

    q = pl.read_parquet(quarantine, columns=["row", "reason"]).drop_nulls("row")
    return q["reason"][0] if q.height else ""


def _scalars(info: dict[str, Any]) -> str:
    """A stage's result dict on one line: its scalar entries (no keys, fingerprints or nested structures)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k} {fmt(v)}" for k, v in info.items()
                     if isinstance(v, (str, int, float)) and k not in ("key", "fingerprint", "skipped"))


def _parse_params(items: list[str] | None, option: str = "-p") -> dict[str, Any]:
    """Turn ['k=v', ...] into a dict, values parsed as YAML scalars/lists (so 0.9 is a float, [a,b] a list)."""
    import yaml

    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(typer.BadParameter(f"{option}: expected KEY=VALUE, got {item!r}"))
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            why = " ".join(str(getattr(exc, "problem", None) or "not valid YAML").split())
            _fail(typer.BadParameter(f"{option} {item!r}: the value is not valid YAML ({why}); quote text "
                                     "with special characters, e.g. -p 'key=\"[a\"'"))
        params[key.strip().replace("-", "_")] = parsed
    return params


def _executor_options(items: list[str] | None) -> dict[str, Any] | None:
    """The `--executor-opt KEY=VALUE` items as a dict (None when none are given)."""
    return _parse_params(items, "--executor-opt") or None


def _check_run_path(run: Path | None, what: str = "--run") -> None:
    """Fail when the run directory named is an existing file (a common slip: `--run data.jsonl`)."""
    if run is not None and os.path.exists(run) and not os.path.isdir(run):
        _fail(CurateError(f"{what} {run}: is a file, not a run directory", "name a new or an existing directory"))


def _check_name(name: str | None, option: str = "--name") -> None:
    """A name that becomes a file name in the run directory: no path separators, not '.' or '..'."""
    if name is None:
        return
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not name.strip() or name in (".", "..") or any(sep in name for sep in seps):
        _fail(CurateError(f"{option} {name!r}: a name cannot be empty, '.', '..' or contain a path separator",
                          "it names a file in the run directory, e.g. --name kcenter_500"))


def _parse_pairs(items: list[str] | None, option: str, form: str) -> dict[str, str]:
    """Turn ['a=b', ...] into {'a': 'b'} (values kept as text), naming the option on a malformed item."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            _fail(CurateError(f"{option}: expected {form}, got {item!r}"))
        out[key.strip()] = value.strip()
    return out


ExecutorOpt = typer.Option(None, help="Where per-row model work runs: local (default), ray (a local Ray) or "
                                      "ray:ADDRESS (join a cluster, e.g. ray:auto).")
ExecutorOptsOpt = typer.Option(None, "--executor-opt", help="Ray option KEY=VALUE (repeat): workers, "
                                                           "cpus_per_worker, gpus_per_worker, in_flight, retries.")


def _call(stage: str, run: Path, /, **kwargs: Any) -> Any:
    """Call a stage with the options the user gave (None means: the stage's default)."""
    from curate.recipe import RecipeError, call_stage
    from curate.run import RunDir

    _check_run_path(run)
    params = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return call_stage(stage, RunDir(run) if run is not None else None, params).value
    except (RecipeError, *USER_ERRORS) as exc:
        _fail(exc)


@app.command()
def ingest(
    inputs: list[str] = typer.Argument(..., help="Files, directories or globs (jsonl, json, parquet, csv)."),
    run: Path = RunOpt,
    map_: list[str] = typer.Option(None, "--map", help="Column mapping FIELD=COLUMN, e.g. prompt=question."),
    records: str = typer.Option(None, help="Key path of the records in .json documents, e.g. data or data.train."),
    layout: str = typer.Option(None, help="Force one layout (messages, sharegpt, alpaca, prompt_response, ...)."),
    role_map: list[str] = typer.Option(None, "--role-map", help="Rename a role FROM=TO, e.g. usr=user (repeat)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file."),
    chunk_rows: int = typer.Option(None, help="Rows read per chunk when streaming."),
) -> None:
    """Read a pool into the run directory: normalise layouts, hash ids, mark duplicates, quarantine bad rows."""
    columns = {k: str(v) for k, v in _parse_pairs(map_, "--map", "FIELD=COLUMN").items()} or None
    roles = _parse_pairs(role_map, "--role-map", "FROM=TO") or None
    report = _call("ingest", run, inputs=inputs, columns=columns, records=records, layout=layout,
                   role_map=roles, strict=strict or None, chunk_rows=chunk_rows)
    console.print(report.summary(), markup=False, soft_wrap=True)
    if report.n_unique == 0:  # nothing usable: say why instead of leaving an empty pool for the next stage
        from curate.errors import CurateError
        from curate.run import RunDir

        if report.n_read == 0:
            _fail(CurateError(f"no rows read from {', '.join(report.inputs)}", "are the files empty?"))
        why = _first_quarantine_reason(RunDir(run).quarantine_path)
        _fail(CurateError(f"no usable rows: all {report.n_read:,} rows read were quarantined, e.g. {why}",
                          f"see {RunDir(run).quarantine_path}; name the fields with --map prompt=COLUMN "
                          "--map response=COLUMN or --layout"))


@app.command()
def embed(
    run: Path = RunOpt,
    model: str = typer.Option(None, help="Local sentence-transformers directory (default: bundled MiniLM)."),
    dtype: str = typer.Option(None, help="float32 (default), bfloat16, or auto (bf16 on GPU or a CPU with native bf16, else float32)."),
    batch_size: int = typer.Option(None),
    device: str = typer.Option(None, help="auto, cpu or cuda."),
    executor: str = ExecutorOpt,
    executor_opt: list[str] = ExecutorOptsOpt,
) -> None:
    """Embed every pool row into resumable shards keyed by the model fingerprint."""
    fp = _call("embed", run, model=model, dtype=dtype, batch_size=batch_size, device=device, executor=executor,
               executor_options=_executor_options(executor_opt))
    from curate.run import RunDir

    console.print(f"embeddings: {RunDir(run).embeddings_dir(str(fp))}")


@app.command("index")
def index_cmd(
    run: Path = RunOpt,
    kind: str = typer.Option(None, help="flat (exact), ivf, hnsw or auto (by size; the default)."),
    k: int = typer.Option(None, help="Neighbours per row in the kNN graph (default 10; at most rows - 1)."),
) -> None:
    """Build the faiss index and the kNN graph over the current embeddings."""
    info = _call("index", run, kind=kind, k=k)
    from curate.run import RunDir

    state = "current, not rebuilt" if info.get("skipped") else "built"
    console.print(f"index {state}: {_scalars(info)}", markup=False, soft_wrap=True)
    console.print(f"in: {RunDir(run).index_dir}", markup=False, soft_wrap=True)


@app.command("map")
def map_cmd(
    run: Path = RunOpt,
    projection: str = typer.Option(None, help="pca (default) or umap."),
    target_cells: int = typer.Option(None, help="Target number of non-empty grid cells (default about sqrt(rows), at most 10,000)."),
    n_clusters: int = typer.Option(None, help="k-means clusters, the pseudo-domains (default about sqrt(rows / 10))."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Extra KEY=VALUE parameters."),
) -> None:
    """Project, grid, cluster and measure the diversity of the pool."""
    info = _call("map", run, **_with_params(param, projection=projection, target_cells=target_cells,
                                            n_clusters=n_clusters))
    written = info.pop("written", []) if isinstance(info, dict) else []
    for step in ("projection", "grid", "clusters", "diversity"):
        if isinstance(info.get(step), dict):
            console.print(f"{step}: {_scalars(info[step])}", markup=False, soft_wrap=True)
    for path in written:
        console.print(f"wrote: {path}", markup=False, soft_wrap=True)
    if isinstance(info, dict) and info.get("skipped"):
        console.print(f"current, not rebuilt: {', '.join(info['skipped'])}", markup=False)


@app.command()
def score(
    run: Path = RunOpt,
    signal: list[str] = typer.Option(..., "--signal", "-s", help="Signal names (repeat the option)."),
    model: str = typer.Option(None, help="Causal LM directory or alias (e.g. smollm2)."),
    base_model: str = typer.Option(None, help="Base LM for ILA depth (loss before fine-tuning)."),
    ref_model: str = typer.Option(None, help="Reference (fine-tuned) LM for ILA depth."),
    validation: Path = typer.Option(None, help="Tiny validation set (jsonl) for icl, relevance, miw_score."),
    dtype: str = typer.Option(None, help="auto (bf16 on GPU or a CPU with native bf16, else float32), float32 or bfloat16."),
    score_eot: bool = typer.Option(None, "--score-eot/--no-score-eot",
                                   help="LM signals: score the chat template's end-of-turn tokens too "
                                   "(default: the response tokens only)."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Extra KEY=VALUE parameters."),
    executor: str = ExecutorOpt,
    executor_opt: list[str] = ExecutorOptsOpt,
) -> None:
    """Compute per-row signals (heuristics, LM losses, IFD, depth, ICL proxy) into signals/<name>.parquet."""
    paths = _call("score", run, **_with_params(
        param, names=signal, model=model, base_model=base_model, ref_model=ref_model, validation=validation,
        dtype=dtype, score_eot=score_eot, executor=executor,
        executor_options=_executor_options(executor_opt)))
    for name, path in (paths.items() if isinstance(paths, dict) else []):
        console.print(f"signal {name:<16} {path}", markup=False, soft_wrap=True)


@app.command()
def select(
    run: Path = RunOpt,
    method: str = typer.Option(..., "--method", "-m", help="Selector name (see `curate methods`)."),
    budget: str = typer.Option(..., "--budget", "-b", help="Rows (1000), a fraction (20%) or tokens (50000tok)."),
    seed: int = typer.Option(None, min=0, help="Random seed (default 0)."),
    name: str = typer.Option(None, help="Selection name (default: the method)."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Selector parameters KEY=VALUE."),
    stratify: str = typer.Option(None, help="none, domain, cluster, or domain:MIXTURE (quotas from mixtures/); "
                                 "default: the selector's (domain for k-center, facility-location, deita, daar, miw)."),
    max_ifd: str = typer.Option(None, "--max-ifd", help="deita, ila, top-signal, miw: rows with ifd >= this are not "
                                "ranked; 'none' turns it off (default 1.0 when ranking by ifd)."),
    validation: Path = typer.Option(None, help="Target task's validation set (jsonl): rds scores against it; "
                                    "pool copies of its rows are left out."),
    decontaminate: bool = typer.Option(None, "--decontaminate/--no-decontaminate",
                                       help="Leave out pool rows that copy validation rows (default: on)."),
    executor: str = ExecutorOpt,
    executor_opt: list[str] = ExecutorOptsOpt,
) -> None:
    """Choose a subset with a selector; writes selections/<name>.parquet (id, weight, rank, reason)."""
    _check_name(name)
    sel = _call("select", run, **_with_params(
        param, method=method, budget=budget, seed=seed, name=name, stratify=stratify, max_ifd=max_ifd,
        validation=validation, decontaminate=decontaminate, executor=executor,
        executor_options=_executor_options(executor_opt)))
    from curate.run import RunDir

    console.print(f"selected {len(sel.ids)} rows with {method}: {RunDir(run).selection_path(name or method)}")
    dec = sel.stats.get("decontamination")
    if dec and dec["contaminated_rows"]:
        what = "left out" if dec["excluded"] else f"kept eligible ({dec['selected_contaminated_rows']} selected)"
        console.print(f"decontamination: {dec['contaminated_rows']} pool rows copy validation rows, {what}",
                      markup=False)
    for key in ("note", "budget_note"):
        if sel.stats.get(key):
            console.print(f"note: {sel.stats[key]}", markup=False)


@app.command()
def export(
    run: Path = RunOpt,
    selection: str = typer.Option(..., "--selection", "-s", help="Selection name."),
    layout: str = typer.Option(None, help="messages (default), alpaca, sharegpt, preference or prompt."),
    fmt: list[str] = typer.Option(None, "--format", "-f", help="jsonl and/or parquet (repeat; default both)."),
) -> None:
    """Export a selection as a weighted training subset with manifest.json."""
    out = _call("export", run, selection=selection, layout=layout, formats=tuple(fmt) if fmt else None)
    console.print(f"exported: {out}", markup=False, soft_wrap=True)
    from index.io import read_json

    note = read_json(out / "manifest.json").get("note")
    if note:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command()
def train(
    run: Path = typer.Option(None, "--run", "-r", help="Run directory holding the selection (and the pool)."),
    selection: str = typer.Option(None, "--selection", "-s", help="Selection to train on."),
    data: list[str] = typer.Option(None, "--data", help="Or: an export folder or files in an export layout."),
    model: str = typer.Option(None, help="Causal LM directory or alias (default smollm2)."),
    name: str = typer.Option(None, help="Name of the training run (default: the selection)."),
    out: Path = typer.Option(None, help="Output folder (default <run>/train/<name>)."),
    objective: str = typer.Option(None, help="auto (from the rows), sft or dpo."),
    lora: bool = typer.Option(None, "--lora/--full", help="LoRA adapters (peft) or full fine-tuning."),
    merge: bool = typer.Option(None, help="Also write LoRA merged into a full model directory (model/)."),
    epochs: float = typer.Option(None),
    max_steps: int = typer.Option(None, help="Optimiser steps (overrides epochs)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 2e-4 LoRA, 2e-5 full)."),
    batch_tokens: int = typer.Option(None, help="Padded tokens per micro-batch (length-grouped)."),
    grad_accum: int = typer.Option(None, help="Micro-batches per optimiser step."),
    dtype: str = typer.Option(None, help="auto (bf16 on GPU or a CPU with native bf16, else float32), float32 "
                             "or bfloat16 (autocast)."),
    mixture: str = typer.Option(None, help="Sample by the domain proportions of mixtures/<NAME>.json (or a path)."),
    heldout: Path = typer.Option(None, help="Held-out rows (a file with a domain column)."),
    heldout_split: float = typer.Option(None, help="Or: held-out rows drawn from the pool (count, or fraction < 1)."),
    eval_every: int = typer.Option(None, help="Evaluate held-out rows every N steps (and at the end)."),
    reference: int = typer.Option(None, help="Train ILA's reference model on N balanced-random pool rows."),
    seed: int = typer.Option(None, min=0, help="Random seed (default 0)."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Other train() parameters KEY=VALUE."),
    executor: str = ExecutorOpt,
    executor_opt: list[str] = ExecutorOptsOpt,
) -> None:
    """Fine-tune a causal LM on a selection (SFT or DPO, per-row weights), report held-out NLL per domain."""
    if heldout_split is not None and heldout_split >= 1:
        heldout_split = int(heldout_split)
    opts = _with_params(param, model=model, name=name, out=out, objective=objective, lora=lora, merge=merge,
                        epochs=epochs, max_steps=max_steps, lr=lr, batch_tokens=batch_tokens, grad_accum=grad_accum,
                        dtype=dtype, mixture=mixture, heldout=heldout, heldout_split=heldout_split,
                        eval_every=eval_every, seed=seed, executor=executor,
                        executor_options=_executor_options(executor_opt),
                        selection=selection, data=data or None)
    selection, data = opts.pop("selection"), opts.pop("data")  # arguments of their own (-p may set them too)
    if reference is not None:
        if run is None:
            _fail(typer.BadParameter("--reference needs --run"))
        if "n" in opts:
            _fail(typer.BadParameter("-p n=...: the reference model's row count is --reference N"))
        opts.pop("merge")
        res = _call("reference", run, n=reference, **{k: v for k, v in opts.items() if k not in ("name", "out")})
        console.print(res.summary())
        console.print(f"reference model: {res.out / 'model'}  (use it as --ref-model for depth)")
        return
    res = _call("train", run, selection=selection, data=data or None, **opts)
    console.print(res.summary())
    h = res.metrics.get("heldout")
    if h:
        for dom, v in h["per_domain"].items():
            console.print(f"  {dom:<32} {v:.4f}", markup=False)


mix_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Domain mixtures learned with training in the loop (AutoMixAlign; IDEAL).",
)
app.add_typer(mix_app, name="mix")


@mix_app.command("ama")
def mix_ama(
    run: Path = RunOpt,
    selection: str = typer.Option(..., "--selection", "-s", help="Selection to mix (its domains are the tasks)."),
    method: str = typer.Option("ama-s", help="ama-s, ama-r, or a baseline: doremi, uniform, stratified."),
    model: str = typer.Option(None, help="Causal LM directory or alias (default smollm2)."),
    name: str = typer.Option(None, help="Mixture and generalist name (default ama for ama-s, else ama-<method>)."),
    eta: float = typer.Option(None, help="Task-weight step size (default 0.01 AMA, 1 DoReMi)."),
    floor: float = typer.Option(None, help="AMA-S exploration floor c: probabilities >= c / k (default 0.05)."),
    smoothing: float = typer.Option(None, help="Smoothing toward uniform (AMA-R 0, DoReMi 1e-3)."),
    specialist_steps: int = typer.Option(None, help="Optimiser steps of each specialist (default: as the generalist)."),
    lora: bool = typer.Option(None, "--lora/--full", help="LoRA adapters (peft) or full fine-tuning."),
    max_steps: int = typer.Option(None, help="Optimiser steps of the generalist (and specialists)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 2e-4 LoRA, 2e-5 full)."),
    batch_tokens: int = typer.Option(None, help="Padded tokens per micro-batch."),
    heldout_split: float = typer.Option(None, help="Held-out rows drawn from the pool (count, or fraction < 1)."),
    seed: int = typer.Option(None, min=0, help="Random seed (default 0)."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Other train() parameters KEY=VALUE."),
    executor: str = ExecutorOpt,
    executor_opt: list[str] = ExecutorOptsOpt,
) -> None:
    """AutoMixAlign: specialists per domain, then a generalist on the clipped excess loss (AMA-S / AMA-R)."""
    from curate.mix.ama import ama

    if heldout_split is not None and heldout_split >= 1:
        heldout_split = int(heldout_split)
    _check_run_path(run)
    _check_name(name)
    opts = _with_params(param, model=model, name=name, eta=eta, floor=floor, smoothing=smoothing, lora=lora,
                        max_steps=max_steps, lr=lr, batch_tokens=batch_tokens, heldout_split=heldout_split, seed=seed,
                        specialist={"max_steps": specialist_steps} if specialist_steps is not None else None,
                        executor=executor, executor_options=_executor_options(executor_opt),
                        selection=selection, method=method)
    del opts["selection"], opts["method"]  # given to ama() as arguments of their own
    try:
        res = ama(run, selection, method=method, **{k: v for k, v in opts.items() if v is not None})
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(res.summary(), markup=False, soft_wrap=True)
    h = res.train.metrics.get("heldout")
    if h:
        for dom, v in h["per_domain"].items():
            console.print(f"  {dom:<32} {v:.4f}", markup=False)


@mix_app.command("ideal")
def mix_ideal(
    run: Path = RunOpt,
    selection: str = typer.Option(..., "--selection", "-s", help="Selection whose domain volumes IDEAL adjusts."),
    reference: Path = typer.Option(..., help="Reference set (a file with a domain column: the target capabilities)."),
    model: str = typer.Option(None, help="Causal LM directory or alias (default smollm2)."),
    name: str = typer.Option(None, help="Mixture name (default ideal)."),
    rounds: int = typer.Option(None, help="Influence rounds (default 2), then a training run on the final volumes."),
    m: float = typer.Option(None, help="Largest volume change per round (default 0.15)."),
    layers: str = typer.Option(None, help="mlp (default), lora, or a module-name pattern."),
    damping: float = typer.Option(None, help="Damping as a multiple of the mean eigenvalue (default 0.1)."),
    influence_scaling: str = typer.Option(None, help="mean (default) or sum (x domain size)."),
    heldout: Path = typer.Option(None, help="Held-out rows evaluated after each round's training."),
    seed: int = typer.Option(None, min=0, help="Random seed (default 0)."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Training parameters KEY=VALUE (lora, lr, ...)."),
) -> None:
    """IDEAL: train, measure each domain's EK-FAC influence on the reference set, change volumes; repeat."""
    from curate.mix.ideal import ideal

    _check_run_path(run)
    _check_name(name)
    opts = _with_params(param, model=model, name=name, rounds=rounds, m=m, layers=layers, damping=damping,
                        influence_scaling=influence_scaling, heldout=heldout, seed=seed, selection=selection,
                        reference=reference)
    del opts["selection"], opts["reference"]  # positional arguments of ideal()
    try:
        doc = ideal(run, selection, reference, **{k: v for k, v in opts.items() if v is not None})
    except USER_ERRORS as exc:
        _fail(exc)
    for r in doc["rounds"]:
        beta = ", ".join(f"{d} {b:+.3f}" for d, b in (r.get("beta") or {}).items())
        console.print(f"round {r['round']}: {sum(r['counts'].values())} rows" + (f"; beta {beta}" if beta else ""),
                      markup=False, soft_wrap=True)
    from curate.run import RunDir

    console.print(f"mixture: {RunDir(run).mixture_path(doc['name'])}; final selection {doc['final_selection']}")


@app.command()
def merge(
    adapter: Path = typer.Argument(..., help="A LoRA adapter folder written by `curate train --lora`."),
    out: Path = typer.Argument(..., help="Where to write the merged full model directory."),
) -> None:
    """Merge a LoRA adapter into its base model: a full model directory `curate score --model` loads."""
    from curate.train.model import ModelDirError, merge_adapter

    try:
        console.print(f"merged model: {merge_adapter(adapter, out)}")
    except (ModelDirError, *USER_ERRORS) as exc:
        _fail(exc)


@app.command()
def compare(
    run: Path = RunOpt,
    names: list[str] = typer.Argument(..., help="Selection names to put side by side."),
) -> None:
    """Compare selections of one pool: size, tokens, domains, coverage, diversity, signals, overlap."""
    table = _call("compare", run, names=names)
    from curate.compare import render, table_paths

    md, csv = table_paths(run, names)
    left_out = render(table)
    if left_out:
        console.print(f"{len(left_out)} selection(s) did not fit the terminal: {', '.join(left_out)}", markup=False)
    console.print(f"full table: {md} (and {csv.name})", markup=False)


@app.command()
def report(
    run: Path = RunOpt,
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN/report.html)."),
    signal: str = typer.Option(None, help="Signal to colour the map by (default: ifd, else the first stored)."),
    atlas: bool = typer.Option(False, "--atlas", help="Also write the Embedding Atlas parquet (RUN/atlas.parquet)."),
) -> None:
    """Write one self-contained HTML report of the run: pool, quarantine, map, signals, selections, mixtures."""
    path = _call("report", run, out=out, signal=signal, atlas=atlas)
    console.print(f"report: {path}")


@app.command("export-map")
def export_map_cmd(
    run: Path = RunOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Parquet file to write (default: RUN/atlas.parquet)."),
) -> None:
    """Write the Embedding Atlas parquet: x, y, text, domain, cluster, signals, selection flags, neighbors."""
    from curate.viz.atlas import export_map

    try:
        path = export_map(run, out)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        _fail(exc)
    console.print(f"atlas: {path}")
    console.print(f"open it with: embedding-atlas {path} --text text --x x --y y --neighbors neighbors")


@app.command()
def methods() -> None:
    """List the registered selectors and signals."""
    from curate.select import SELECTORS
    from curate.signals import SIGNALS

    console.print("selectors: " + ", ".join(SELECTORS.names()))
    console.print("signals:   " + ", ".join(SIGNALS.names()))


@app.command()
def models(
    ensure: str = typer.Option(None, help="Build a bundled model's local directory now (e.g. smollm2)."),
) -> None:
    """Show the bundled models and where their local directories are (building them on request)."""
    from curate import models as m

    if ensure:
        console.print(f"{ensure}: {m.resolve_model(ensure)}")
    for info in m.list_models():
        state = "ready" if info["cached"] else "not built (curate models --ensure " + info["name"] + ")"
        console.print(f"{info['name']:<12} {info['path']}  ({state})", markup=False)
    console.print(f"embedding default: {_default_embedder()}")


def _default_embedder() -> str:
    from index.embed import default_model_path

    try:
        return str(default_model_path())
    except (FileNotFoundError, ImportError) as exc:
        return f"missing ({exc})"


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    run: Path = typer.Option(None, "--run", "-r", help="Override the recipe's run directory."),
    executor: str = typer.Option(None, help="Override the recipe's top-level executor: local, ray or ray:ADDRESS "
                                            "(a stage's own `executor:` still wins)."),
    executor_opt: list[str] = typer.Option(None, "--executor-opt", help="With --executor: a Ray option KEY=VALUE "
                                           "(repeat), merged over the recipe's executor_options."),
) -> None:
    """Run a recipe: its stages in order, each resuming from what is already in the run directory."""
    from curate.recipe import Recipe, RecipeError, run_recipe

    cli_opts = _executor_options(executor_opt) or {}
    if cli_opts and executor is None:
        _fail(typer.BadParameter("--executor-opt needs --executor (e.g. --executor ray --executor-opt workers=4); "
                                 "or set executor_options: in the recipe"))
    try:
        rec = Recipe.load(recipe, run=run)
        _check_run_path(rec.run, "--run" if run is not None else f"recipe {recipe}: run")
        if executor is not None:  # replaces the recipe's top-level executor; a stage's own `executor:` still wins
            # the recipe's options are kept (a local executor takes none), the command line's merged over them
            kept = {} if executor == "local" else dict(rec.executor.get("executor_options") or {})
            rec.executor = {"executor": executor, "executor_options": {**kept, **cli_opts} or None}
        results = run_recipe(rec, log=lambda s: console.print(f"[bold cyan]{s}[/bold cyan]"))
    except (RecipeError, *USER_ERRORS) as exc:
        _fail(exc)
    console.print("\n[bold]done[/bold]")
    for name, res in results:
        state = "current" if res.skipped else f"{res.seconds:7.1f} s"
        console.print(f"  {name:<8} {state:>9}  {_describe(name, res.value)}")
    for name, res in results:
        result = res.value
        if name == "compare":
            from curate.compare import render, table_paths

            render(result)
            md, csv = table_paths(rec.run, result["selection"].to_list())
            console.print(f"full table: {md} (and {csv.name})", markup=False)
    exports = [r.value for n, r in results if n == "export"]
    for out in exports:
        console.print(f"[green]subset:[/green]   {out}")
        console.print(f"[green]manifest:[/green] {Path(out) / 'manifest.json'}")
    for out in [r.value for n, r in results if n == "report"]:
        console.print(f"[green]report:[/green]   {out}")


def _describe(stage: str, result: Any) -> str:
    """One line per stage for the recipe summary."""
    if hasattr(result, "summary"):
        return str(result.summary()).splitlines()[0]
    if hasattr(result, "ids"):
        return f"{result.method}: {len(result.ids)} rows"
    if isinstance(result, dict):
        return ", ".join(str(k) for k in result)[:100]
    if hasattr(result, "shape"):
        return f"{result.shape[0]} selections compared"
    return str(result)[:100]


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="curate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
