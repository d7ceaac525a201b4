"""Does the ICL proxy prefer a relevant demonstration to an irrelevant one of the same length? (SmolLM2)

Validation items are one-line questions with short answers ("What is the capital of France?" -> "Paris").
For each item: a relevant demonstration (the same task, another instance: "What is the capital of Italy?" ->
"Rome") and every irrelevant demonstration (an unrelated one-word question) whose chat-formatted token
length equals the relevant one's. The one-shot ICL gain (curate.signals.icl.icl_gains: log-likelihood of
the item's answer with the demo minus without) is measured with the answer tokens only (the default) and
with the end-of-turn tokens (`score_eot=True`, the old convention).

Also the issue's own case: "capital of France? -> Paris" with an unrelated one-word demo ("Name a colour."
-> "Blue") against a same-topic demo with a long answer, where the end-of-turn token decided the ranking.

Run: nice -n 15 .venv/bin/python bench/icl_relevance.py [--out bench/out/icl_relevance.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (validation question, answer, relevant demo question, its answer)
ITEMS = [
    ("What is the capital of France?", "Paris", "What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo", "What is the capital of Spain?", "Madrid"),
    ("What is 7 times 8?", "56", "What is 6 times 9?", "54"),
    ("What is 12 plus 15?", "27", "What is 23 plus 14?", "37"),
    ("Translate 'cat' into French.", "chat", "Translate 'dog' into French.", "chien"),
    ("What is the opposite of 'hot'?", "cold", "What is the opposite of 'up'?", "down"),
    ("Which planet is known as the red planet?", "Mars", "Which planet is closest to the sun?", "Mercury"),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", "Who wrote 'Pride and Prejudice'?", "Jane Austen"),
    ("What is the chemical symbol for gold?", "Au", "What is the chemical symbol for iron?", "Fe"),
    ("What is the plural of 'mouse'?", "mice", "What is the plural of 'goose'?", "geese"),
]

# unrelated demonstrations with one-word answers, of assorted lengths (none shares a task with ITEMS)
UNRELATED = [
    ("Name a colour.", "Blue"), ("Name a fruit.", "Apple"), ("Name a farm animal.", "Cow"),
    ("What colour is grass?", "Green"), ("Name a musical instrument.", "Piano"), ("What do bees make?", "Honey"),
    ("Name a season of the year.", "Winter"), ("What is frozen water called?", "Ice"),
    ("Name a shape with three sides.", "Triangle"), ("Which animal says 'moo'?", "Cow"),
    ("Name a day of the week.", "Monday"), ("What do you call a baby dog?", "Puppy"),
    ("What colour is a ripe banana?", "Yellow"), ("Name a large animal with a trunk.", "Elephant"),
    ("What do cows drink?", "Water"), ("Name a vegetable.", "Carrot"), ("Name a bird.", "Robin"),
    ("What is a baby cat called?", "Kitten"), ("Which sport uses a racket and a shuttlecock?", "Badminton"),
    ("Name something you wear on your feet.", "Shoes"), ("What do you use to write on paper?", "Pen"),
    ("Name a flower.", "Rose"), ("What falls from clouds when it rains?", "Water"),
    ("What is the colour of snow?", "White"), ("Name a kitchen tool.", "Spoon"),
    ("What do you sleep on?", "Bed"), ("Name a pet.", "Dog"), ("What shines in the sky at night?", "Moon"),
    ("Which insect spins a web to catch flies?", "Spider"), ("What do you call a young sheep?", "Lamb"),
    ("Which tool do you use to cut paper?", "Scissors"), ("Which animal has black and white stripes?", "Zebra"),
    ("What is the name of a baby horse?", "Foal"), ("What do you call a baby goat?", "Kid"),
    ("Which bird is a symbol of peace?", "Dove"),
]  # fmt: skip

ISSUE_CASE = {
    "item": ("What is the capital of France?", "Paris"),
    "unrelated one-word": ("Name a colour.", "Blue"),
    "same topic, long answer": (
        "Tell me about Paris.",
        "Paris is the capital and largest city of France. It lies on the Seine and is known for the Eiffel "
        "Tower, the Louvre and its cafés.",
    ),
}


def chat(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "icl_relevance.json"))
    args = ap.parse_args()

    import torch

    from curate.models import ensure_smollm2
    from curate.signals.icl import icl_gains
    from curate.signals.lm import LMScorer
    from curate.signals.validation import ValItem

    torch.set_num_threads(os.cpu_count() or 2)
    sc = LMScorer(ensure_smollm2(), dtype=args.dtype, device="cpu")

    def length(q: str, a: str) -> int:
        return len(sc.encode(chat(q, a)).ids)

    def gain(demo: tuple[str, str], item: tuple[str, str], eot: bool) -> float:
        val = [ValItem([{"role": "user", "content": item[0]}], item[1])]
        return float(icl_gains(sc, [chat(*demo)], val, eot=eot)[0][0])

    rows = []
    for vq, va, rq, ra in ITEMS:
        n = length(rq, ra)
        matched = [u for u in UNRELATED if length(*u) == n]
        if not matched:
            raise SystemExit(f"no unrelated demo has {n} tokens like {rq!r}: add one to UNRELATED")
        rec = {"item": [vq, va], "relevant": [rq, ra], "demo_tokens": n, "irrelevant": matched}
        for eot in (False, True):
            key = "eot" if eot else "answer_only"
            rel = gain((rq, ra), (vq, va), eot)
            irr = [gain(u, (vq, va), eot) for u in matched]
            rec[key] = {"relevant": rel, "irrelevant_mean": float(np.mean(irr)), "irrelevant": irr}
        rows.append(rec)
        print(json.dumps({k: rec[k] for k in ("item", "demo_tokens", "answer_only", "eot")}), flush=True)

    summary = {}
    for key in ("answer_only", "eot"):
        diff = np.array([r[key]["relevant"] - r[key]["irrelevant_mean"] for r in rows])
        wins = sum(r[key]["relevant"] > max(r[key]["irrelevant"]) for r in rows)
        summary[key] = {"mean_relevant": float(np.mean([r[key]["relevant"] for r in rows])),
                        "mean_irrelevant": float(np.mean([r[key]["irrelevant_mean"] for r in rows])),
                        "mean_relevant_minus_irrelevant": float(diff.mean()),
                        "items_relevant_above_mean_irrelevant": int((diff > 0).sum()),
                        "items_relevant_above_every_irrelevant": int(wins), "items": len(rows)}
    item = ISSUE_CASE["item"]
    issue = {}
    for name in ("unrelated one-word", "same topic, long answer"):
        demo = ISSUE_CASE[name]
        issue[name] = {"demo": list(demo), "demo_tokens": length(*demo),
                       "answer_only": gain(demo, item, False), "eot": gain(demo, item, True)}
    report = {"model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "k": 1, "summary": summary,
              "issue_case": {"item": list(item), **issue}, "rows": rows}
    print(json.dumps({"summary": summary, "issue_case": report["issue_case"]}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
