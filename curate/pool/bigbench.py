"""BIG-bench task files -> plain prompt/response rows, read straight from the sdist archive.

BIG-bench (``bigbench==1.0.0`` on PyPI, Apache-2.0; Srivastava et al. 2022, "Beyond the Imitation
Game") ships its JSON tasks inside the source archive at
``bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``. This module downloads the
archive once (``fetch_archive``) and converts examples into instruction rows (``iter_rows``) without
extracting or installing anything, so it serves both the small committed demo pool and
million-row benchmark pools.

Conversion rules (one example -> at most one row):

* prompt = task prefix (the example's own ``task_prefix`` if it has one, else the task's), then the
  input, then -- for multiple choice -- the choices lettered ``A. ...``, ``B. ...`` (after ``Z`` come
  ``AA``, ``AB``, ... as in spreadsheet columns), the parts stripped and joined by a blank line.
* multiple choice (``target_scores`` present, preferred over ``target`` when an example has both):
  response = ``"<letter>. <choice text>"`` of the highest-scored choice (the first one on a tie).
* free response: response = ``target`` (a string, or the first element of a list).
* rows whose prompt or response is empty after stripping are skipped and counted; task files with no
  ``examples`` (programmatic tasks, parent folders of subtasks) yield nothing and are counted.
* domain = the task's first topical keyword (see ``NON_TOPICAL_KEYWORDS`` and ``GENERIC_WORDS``,
  with ``KEYWORD_ALIASES`` applied), else the top-level task name (so the 247 subtasks of
  ``mult_data_wrangling``, whose only keyword is ``many-shot``, share one domain).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIGBENCH_VERSION = "1.0.0"
ARCHIVE_NAME = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
TASKS_MARKER = "/bigbench/benchmark_tasks/"
TASK_FILE = "task.json"

# Keywords that describe the format, the shot setting, the language setting or the design of a task
# rather than its subject; they never become a domain.
NON_TOPICAL_KEYWORDS: frozenset[str] = frozenset(
    {
        "json",
        "multiple choice",
        "free response",
        "numerical response",
        "zero-shot",
        "one-shot",
        "many-shot",
        "multi-step",
        "non-english",
        "multilingual",
        "low-resource language",
        "non-language",
        "human-like behavior",
        "out of distribution",
        "context length",
        "example task",
        "domain specific",
        "context-free question answering",
        "contextual question-answering",
        "contextual question answering",
        "instructions",
        "",
    }
)

# Generic English words found in free-text keyword lists (the ``natural_instructions`` subtasks list
# words of their description, e.g. "Answering, questions, regarding, relations, given, paragraph").
GENERIC_WORDS: frozenset[str] = frozenset(
    {
        "answer", "answers", "answering", "answerability", "question", "questions", "question-answer",
        "given", "based", "creating", "identifying", "constructing", "generating", "finding",
        "checking", "verifying", "correcting", "classifying", "modifying", "annotating", "combining",
        "choosing", "correct", "incorrect", "good", "implausible", "understanding", "whether",
        "contains", "provided", "typically", "happen", "pair", "pairs", "fill", "blank", "type",
        "complex", "simple", "word", "words", "sentence", "sentences", "single-sentence", "passage",
        "paragraph", "information", "present", "presence", "needed", "options", "requires", "context",
        "essential", "phrases", "overlapping", "incomplete", "related", "regarding", "relations",
        "topic", "fact", "facts", "story", "over", "multiple", "task", "corresponding", "category",
        "reading", "comprehension", "content", "event", "events", "objects", "persons", "entity",
        "references", "tracking", "reasoning", "grammatical", "logical", "correctness",
        "inappropriate", "duration", "transient", "stationary", "ordering", "absolute", "timepoint",
        "frequency", "frequencies", "temporal", "paraphrases",
    }
)

# Spelling variants folded onto the usual BIG-bench keyword.
KEYWORD_ALIASES: dict[str, str] = {"commonsense": "common sense"}


@dataclass
class ConversionStats:
    """Counts gathered while converting (filled in place by ``iter_rows``)."""

    task_files: int = 0
    tasks_without_examples: int = 0
    tasks_used: int = 0
    examples: int = 0
    rows: int = 0
    skipped_empty: int = 0
    skipped_long: int = 0
    skipped_over_cap: int = 0
    rows_per_domain: Counter = field(default_factory=Counter)
    rows_per_task: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view (domains and tasks sorted by name)."""
        return {
            "task_files": self.task_files,
            "tasks_without_examples": self.tasks_without_examples,
            "tasks_used": self.tasks_used,
            "examples": self.examples,
            "rows": self.rows,
            "skipped_empty": self.skipped_empty,
            "skipped_long": self.skipped_long,
            "skipped_over_cap": self.skipped_over_cap,
            "rows_per_domain": dict(sorted(self.rows_per_domain.items())),
            "rows_per_task": dict(sorted(self.rows_per_task.items())),
        }


def default_cache_dir() -> Path:
    """``$CURATE_CACHE/bigbench`` or ``~/.cache/curate/bigbench``."""
    root = os.environ.get("CURATE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "curate") / "bigbench"


def _pip_download(dest: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"bigbench=={BIGBENCH_VERSION}", "-d", str(dest)]
    env = dict(os.environ, **(extra_env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def fetch_archive(cache_dir: str | Path | None = None) -> Path:
    """Return the path of ``bigbench-1.0.0.tar.gz`` in the cache, downloading it with pip if missing.

    pip >= 25 refuses even to *download* this sdist (its metadata declares a ``bleurt @ file://``
    dependency, which pip now rejects for files from PyPI), so on that failure the download is
    retried with pip 24.2 installed into the cache folder (``pip install --target``) -- still the
    ordinary pip client, nothing is installed into the environment.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / ARCHIVE_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        tmp_path = Path(tmp)
        res = _pip_download(tmp_path)
        if res.returncode != 0:
            old_pip = cache / "_pip24"
            if not (old_pip / "pip").is_dir():
                inst = subprocess.run(
                    [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(old_pip), "pip==24.2"],
                    capture_output=True,
                    text=True,
                )
                if inst.returncode != 0:
                    raise RuntimeError(
                        f"pip download of bigbench failed:\n{res.stderr[-2000:]}\n"
                        f"and installing pip 24.2 for the retry failed:\n{inst.stderr[-2000:]}"
                    )
            res = _pip_download(tmp_path, {"PYTHONPATH": str(old_pip)})
            if res.returncode != 0:
                raise RuntimeError(f"pip download of bigbench=={BIGBENCH_VERSION} failed:\n{res.stderr[-2000:]}")
        got = tmp_path / ARCHIVE_NAME
        if not got.is_file():
            raise RuntimeError(f"pip download finished but {ARCHIVE_NAME} is not in {tmp_path}: {os.listdir(tmp_path)}")
        os.replace(got, target)
    shutil.rmtree(cache / "_pip24", ignore_errors=True)
    return target


def task_name(member_name: str) -> str | None:
    """Task name (``task`` or ``task/subtask``) of an archive member, or None if not a task file."""
    i = member_name.find(TASKS_MARKER)
    if i < 0 or not member_name.endswith("/" + TASK_FILE):
        return None
    name = member_name[i + len(TASKS_MARKER) : -len(TASK_FILE) - 1]
    return name or None


def choose_domain(keywords: Iterable[str], task: str) -> str:
    """First topical keyword of a task (aliases applied), else the top-level task name."""
    for kw in keywords:
        if not isinstance(kw, str):
            continue
        k = kw.strip()
        low = k.lower()
        if low in NON_TOPICAL_KEYWORDS or low in GENERIC_WORDS:
            continue
        return KEYWORD_ALIASES.get(low, k)
    return task.split("/")[0]


def choice_letter(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, 27 -> AB, ... (spreadsheet column letters)."""
    out = ""
    i += 1
    while i > 0:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def convert_example(example: dict[str, Any], task_prefix: str = "") -> tuple[str, str]:
    """(prompt, response) of one BIG-bench example; either may be empty (the caller skips those)."""
    prefix = _text(example.get("task_prefix", task_prefix)).strip()
    inp = _text(example.get("input")).strip()
    parts = [p for p in (prefix, inp) if p]
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        choices = [_text(c).strip() for c in scores]
        values = [float(v) for v in scores.values()]
        best = values.index(max(values))
        letters = [choice_letter(i) for i in range(len(choices))]
        parts.append("\n".join(f"{letter}. {c}" for letter, c in zip(letters, choices, strict=True)))
        response = f"{letters[best]}. {choices[best]}" if choices[best] else ""
    else:
        target = example.get("target")
        if isinstance(target, list):
            target = target[0] if target else ""
        response = _text(target).strip()
    return "\n\n".join(parts), response


def _wanted(name: str, tasks: set[str] | None) -> str | None:
    """The requested name that selects this task (exact name or its top-level family), else None."""
    if tasks is None:
        return name
    if name in tasks:
        return name
    top = name.split("/")[0]
    return top if top in tasks else None


def iter_task_files(archive: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task name, parsed task.json) for every task file, in archive order, streaming."""
    path = Path(archive)
    if not path.is_file():
        raise FileNotFoundError(f"BIG-bench archive not found: {path}")
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            name = task_name(member.name)
            if name is None:
                continue
            fh = tf.extractfile(member)
            if fh is None:
                continue
            try:
                data = json.load(fh)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: {member.name}: invalid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{path}: {member.name}: expected a JSON object, got {type(data).__name__}")
            yield name, data


def iter_rows(
    archive: str | Path,
    tasks: Iterable[str] | None = None,
    cap_per_task: int | None = None,
    seed: int = 0,
    max_chars: int | None = None,
    stats: ConversionStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows ``{"prompt", "response", "domain", "task", "keywords"}`` from a BIG-bench archive.

    ``tasks``: names to keep (a full ``task/subtask`` name or a top-level task, which keeps all its
    subtasks); unknown names raise after the pass. ``cap_per_task``: at most this many rows per task
    file, drawn by a permutation seeded with (seed, task) and emitted in the file's order, so the
    result is the same on every run. ``max_chars``: skip rows whose prompt + response is longer.
    Tasks come in archive order (sorted by path in the real archive). Counts go to ``stats``.
    """
    if cap_per_task is not None and cap_per_task < 0:
        raise ValueError(f"cap_per_task must be >= 0, got {cap_per_task}")
    wanted = set(tasks) if tasks is not None else None
    matched: set[str] = set()
    st = stats if stats is not None else ConversionStats()
    for name, data in iter_task_files(archive):
        sel = _wanted(name, wanted)
        if sel is None:
            continue
        matched.add(sel)
        st.task_files += 1
        examples = data.get("examples")
        if not isinstance(examples, list) or not examples:
            st.tasks_without_examples += 1
            continue
        st.tasks_used += 1
        st.examples += len(examples)
        keywords = [k for k in (data.get("keywords") or []) if isinstance(k, str)]
        domain = choose_domain(keywords, name)
        prefix = _text(data.get("task_prefix"))
        order: Iterable[int]
        if cap_per_task is not None and cap_per_task < len(examples):
            order = random.Random(f"{seed}:{name}").sample(range(len(examples)), len(examples))
        else:
            order = range(len(examples))
        kept: list[tuple[int, str, str]] = []
        seen = 0
        for idx in order:
            if cap_per_task is not None and len(kept) >= cap_per_task:
                break
            seen += 1
            ex = examples[idx]
            if not isinstance(ex, dict):
                raise ValueError(f"{name}: example {idx} is {type(ex).__name__}, expected an object")
            try:
                prompt, response = convert_example(ex, prefix)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: example {idx}: cannot convert: {exc}") from exc
            if not prompt or not response:
                st.skipped_empty += 1
                continue
            if max_chars is not None and len(prompt) + len(response) > max_chars:
                st.skipped_long += 1
                continue
            kept.append((idx, prompt, response))
        st.skipped_over_cap += len(examples) - seen
        kept.sort(key=lambda r: r[0])
        for _, prompt, response in kept:
            st.rows += 1
            st.rows_per_domain[domain] += 1
            st.rows_per_task[name] += 1
            yield {"prompt": prompt, "response": response, "domain": domain, "task": name, "keywords": keywords}
    if wanted is not None:
        missing = sorted(wanted - matched)
        if missing:
            raise KeyError(f"tasks not found in {archive}: {', '.join(missing)}")
