"""DaaR's probe: the MLP d -> 2d -> d -> d/2 -> 256 -> out, trained and applied on arrays, free of pools.

Training (a deliberate deviation from the paper, see `curate.select.daar`): Adam lr 1e-3, batch 64, 30 epochs,
features standardised with the training rows' mean/std, an optional holdout (DaaR uses it only with folds=1);
deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class ProbeFit:
    """A trained probe and its holdout figures."""

    model: Any
    mean: np.ndarray
    std: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def probe_widths(d: int, out: int) -> list[int]:
    """Layer widths of the DaaR probe scaled to input width d: d, 2d, d, d/2, 256, out."""
    return [d, 2 * d, d, max(1, d // 2), 256, out]


def build_probe(d: int, out: int) -> torch.nn.Sequential:
    """The DaaR MLP (ReLU between layers)."""
    import torch

    w = probe_widths(d, out)
    layers: list[Any] = []
    for a, b in zip(w[:-2], w[1:-1], strict=True):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(w[-2], w[-1]))
    return torch.nn.Sequential(*layers)


def _split(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_hold = int(round(holdout * n)) if n >= 10 else 0
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    holdout: float = 0.1,
    seed: int = 0,
    threads: int = 1,
    n_classes: int | None = None,
) -> ProbeFit:
    """Train a DaaR probe: task "classify" (y int labels, cross-entropy) or "regress" (y float, MSE).

    `n_classes` (classify): the classifier's outputs, labels 0..n_classes-1 (default: the largest label + 1).
    Give it whenever `y` may lack the last class (a fold's training rows): the output width, and so the
    entropy of its softmax, would otherwise depend on which labels the rows happen to hold.

    Deterministic for a seed (torch's global RNG is forked, not touched). Reports holdout accuracy (classify)
    or holdout MSE and R² (regress) in `info`.
    """
    import torch

    if task not in ("classify", "regress"):
        raise ValueError(f"task must be 'classify' or 'regress', got {task!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(y) != x.shape[0] or x.shape[0] == 0:
        raise ValueError(f"probe data: x {x.shape} and y ({len(y)}) must be [n, d] and [n], n > 0")
    if not np.isfinite(x).all():
        raise ValueError(
            f"probe features have a non-finite value at row {int(np.argwhere(~np.isfinite(x))[0, 0])}"
        )
    rng = np.random.default_rng(seed)
    tr, ho = _split(x.shape[0], holdout, rng)
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0) + 1e-6
    xs = torch.from_numpy((x - mean) / std)
    if task == "classify":
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        out = int(yt.max()) + 1 if n_classes is None else int(n_classes)
        if int(yt.min()) < 0 or int(yt.max()) >= out:
            raise ValueError(f"probe labels must lie in 0..{out - 1}, got {int(yt.min())}..{int(yt.max())}")
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).unsqueeze(1)
        out = 1
        loss_fn = torch.nn.MSELoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_probe(x.shape[1], out)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    prev_threads = torch.get_num_threads()
    # small batches of a small MLP: one thread avoids synchronisation costs (20x slower on a busy 2-core box)
    torch.set_num_threads(int(threads))
    try:
        for _ in range(int(epochs)):
            perm = tr[rng.permutation(tr.size)]
            for s in range(0, perm.size, int(batch_size)):
                b = torch.from_numpy(perm[s : s + int(batch_size)])
                opt.zero_grad()
                loss = loss_fn(model(xs[b]), yt[b])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()
    info: dict[str, Any] = {
        "n_train": int(tr.size),
        "n_holdout": int(ho.size),
        "epochs": int(epochs),
        "lr": lr,
        "batch_size": int(batch_size),
    }
    with torch.no_grad():
        for name, idx in (("train", tr), ("holdout", ho)):
            if idx.size == 0:
                continue
            pred = model(xs[torch.from_numpy(idx)])
            if task == "classify":
                info[f"{name}_accuracy"] = float((pred.argmax(1) == yt[idx]).float().mean())
            else:
                err = float(((pred - yt[idx]) ** 2).mean())
                var = float(yt[idx].var(unbiased=False)) if idx.size > 1 else 0.0
                info[f"{name}_mse"] = err
                info[f"{name}_r2"] = 1.0 - err / var if var > 0 else None
    return ProbeFit(model, mean, std, info)


def predict(fit: ProbeFit, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """Probe outputs [n, out] float64 (logits for a classifier, values for a regressor)."""
    import torch

    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy((np.asarray(x[s : s + batch_size], dtype=np.float32) - fit.mean) / fit.std)
            outs.append(fit.model(xb.float()).double().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 1))


def entropy(logits: np.ndarray) -> np.ndarray:
    """Natural-log entropy of softmax(logits) per row."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)
