"""EK-FAC (George et al. 2018) over chosen `nn.Linear` modules: inverse-Hessian-vector products for influence.

For a linear module with weight W (d_out x d_in), inputs a and output gradients g per token:
- factors, normalised per (unmasked) token: A = E_t[a aᵀ], S = E_t[g gᵀ], with g from a loss whose labels are
  sampled from the model itself (so S is the true Fisher's, not the empirical one);
- eigenbases in float64: A = Q_A diag(λ_A) Q_Aᵀ, S = Q_S diag(λ_S) Q_Sᵀ;
- eigenvalue correction from per-example gradients G_n = Σ_t g_t a_tᵀ: Λ_ab = E_n[(Q_Sᵀ G_n Q_A)_ab²]
  (plain K-FAC instead uses T̄ λ_S,a λ_A,b, T̄ the mean tokens per example);
- H⁻¹V ≈ Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + δ)] Q_Aᵀ, damping δ = `damping` x mean(Λ) per module.
This is the correct rotation and the inverse (the released IDEAL code multiplies by Λ and rotates with the
other side; see docs/methods.md). Sums are all-reduced across processes when torch.distributed is running,
so every process ends with the statistics of all the data. Biases are not modelled (MLP and LoRA layers of
current LLMs have none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn


def _reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum a statistic over processes (no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, T, d) view of a module's input or output gradient ((B, d) counts as one token per example)."""
    return x.unsqueeze(1) if x.dim() == 2 else x.reshape(x.shape[0], -1, x.shape[-1])


class _Capture:
    """Forward hooks keeping each module's input and (through a tensor hook) its output gradient."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.a: dict[str, torch.Tensor] = {}
        self.g: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def fwd(module, inputs, output):
            self.a[name] = _tokens(inputs[0].detach())
            if output.requires_grad:
                output.register_hook(lambda grad: self.g.__setitem__(name, _tokens(grad.detach())))

        return fwd

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _run_backward(model: nn.Module, batch, loss_fn: Callable) -> torch.Tensor:
    """Backward of `loss_fn(model, batch)` (a scalar); returns it. Parameters' grads are cleared first."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach()


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Per-batch products run in float64 for a float64 model, else float32 (half the time of float64 on CPU;
    one batch's sums lose nothing that matters); the sums over batches are float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weighted_gram(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_bt w_bt x_bt x_btᵀ as one matrix product over the flattened tokens (one batch, see `_work_dtype`),
    returned in float64 for accumulation over batches."""
    flat = x.reshape(-1, x.shape[-1]).to(_work_dtype(x))
    return ((flat * w.reshape(-1, 1).to(flat.dtype)).T @ flat).double()


class EKFAC:
    """Per-module eigenbases and (corrected) eigenvalues of the Fisher; `ihvp` applies the damped inverse."""

    def __init__(self, modules: dict[str, nn.Module], *, damping: float = 0.1, correct: bool = True) -> None:
        if not modules:
            raise ValueError("EK-FAC needs at least one linear module")
        for name, m in modules.items():
            if not isinstance(m, nn.Linear):
                raise TypeError(f"EK-FAC module {name!r} is a {type(m).__name__}, not nn.Linear")
        self.modules = modules
        self.damping = float(damping)
        self.correct = bool(correct)
        self.Q_A: dict[str, torch.Tensor] = {}
        self.Q_S: dict[str, torch.Tensor] = {}
        self.lam: dict[str, torch.Tensor] = {}
        self.stats: dict[str, float] = {}

    # fitting ----------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        batches: Callable[[], Iterable],
        sampled_loss: Callable,
        mask: Callable | None = None,
        weights: Callable | None = None,
    ) -> EKFAC:
        """Two passes over `batches()`: factors (then their eigenbases), then the eigenvalue correction.

        `sampled_loss(model, batch)`: a scalar, the sum over examples of each example's loss with labels drawn
        from the model's own predictive distribution. `mask(batch)`: (B, T) bool of the tokens that count
        (default: all). `weights(batch)`: (B,) weight of each example in every expectation (default 1; a weight
        of 2 counts as two copies of the example). Call `batches()` twice: it must give the same batches
        (`sampled_loss` may draw the same labels in both passes, as a seeded one does).
        """
        caps = _Capture(self.modules)
        try:
            A = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in self.modules.items()}
            S = {n: torch.zeros(m.out_features, m.out_features, dtype=torch.float64) for n, m in self.modules.items()}
            n_tok = torch.zeros(1, dtype=torch.float64)
            n_ex = torch.zeros(1, dtype=torch.float64)
            for batch in batches():
                _run_backward(model, batch, sampled_loss)
                ex = None  # the batch's example weights, checked once for all modules
                for name in self.modules:
                    a, g, w = self._masked(caps, name, batch, mask)
                    ex = self._example_weights(batch, weights, w) if ex is None else ex
                    w = w * ex[:, None]
                    A[name] += _weighted_gram(a, w)
                    S[name] += _weighted_gram(g, w)
                n_tok += w.sum()
                n_ex += ex.sum()
            n_tok, n_ex = _reduce(n_tok), _reduce(n_ex)
            if n_tok.item() == 0:
                raise ValueError("EK-FAC: no tokens to fit on (empty batches or an all-false mask)")
            lam_kfac = {}
            for name in self.modules:
                ev_a, self.Q_A[name] = torch.linalg.eigh(_reduce(A[name]) / n_tok)
                ev_s, self.Q_S[name] = torch.linalg.eigh(_reduce(S[name]) / n_tok)
                tbar = n_tok / n_ex
                lam_kfac[name] = tbar * ev_s.clamp(min=0)[:, None] * ev_a.clamp(min=0)[None, :]
            if not self.correct:
                self.lam = lam_kfac
            else:
                lam = {n: torch.zeros_like(v) for n, v in lam_kfac.items()}
                for batch in batches():
                    _run_backward(model, batch, sampled_loss)
                    ex = None
                    for name in self.modules:
                        a, g, w = self._masked(caps, name, batch, mask)
                        # per-example gradients in the eigenbasis, Q_Sᵀ (Σ_t g_t a_tᵀ) Q_A = Σ_t (Q_Sᵀ g_t)(Q_Aᵀ a_t)ᵀ:
                        # rotate the tokens first (T (d_in² + d_out²) instead of B (d_out² d_in + d_out d_in²))
                        dt = _work_dtype(g)
                        g_rot = (g.to(dt) * w[..., None].to(dt)) @ self.Q_S[name].to(dt)
                        a_rot = a.to(dt) @ self.Q_A[name].to(dt)
                        ex = self._example_weights(batch, weights, w) if ex is None else ex
                        lam[name] += (torch.bmm(g_rot.transpose(1, 2), a_rot).double() ** 2
                                      * ex[:, None, None]).sum(0)
                self.lam = {n: _reduce(v) / n_ex for n, v in lam.items()}  # the same batches as pass 1
            self.stats = {"tokens": float(n_tok), "examples": float(n_ex)}
        finally:
            caps.close()
            model.zero_grad(set_to_none=True)
        return self

    @staticmethod
    def _masked(caps: _Capture, name: str, batch, mask: Callable | None):
        if name not in caps.g:
            raise RuntimeError(f"EK-FAC: module {name!r} received no gradient (is it used by the loss?)")
        a, g = caps.a[name], caps.g[name]
        w = torch.ones(a.shape[:2], dtype=torch.float64) if mask is None else mask(batch).reshape(a.shape[:2]).double()
        return a, g, w.to(a.device)

    @staticmethod
    def _example_weights(batch, weights: Callable | None, w: torch.Tensor) -> torch.Tensor:
        if weights is None:
            return torch.ones(w.shape[0], dtype=torch.float64, device=w.device)
        ex = torch.as_tensor(weights(batch), dtype=torch.float64).reshape(-1).to(w.device)
        if ex.shape[0] != w.shape[0] or not bool(torch.all(torch.isfinite(ex) & (ex >= 0))):
            raise ValueError(f"EK-FAC: example weights must be {w.shape[0]} finite values >= 0, got {ex.tolist()}")
        return ex

    # applying ---------------------------------------------------------------------------------
    def ihvp(self, grads: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """H⁻¹ V per module for weight-shaped `grads` (damped: δ = damping x mean eigenvalue), the four rotations
        in `dtype` (float32: half the time on CPU, ~1e-6 relative error, what influence scores need)."""
        out = {}
        for name, V in grads.items():
            lam = self.lam[name]
            scale = (1.0 / (lam + self.damping * lam.mean())).to(dtype)
            Qs, Qa = self.Q_S[name].to(dtype), self.Q_A[name].to(dtype)
            out[name] = Qs @ ((Qs.T @ V.to(dtype) @ Qa) * scale) @ Qa.T
        return out

    def dense_inverse(self, name: str) -> torch.Tensor:
        """The damped inverse of one module's approximate Fisher as a dense matrix over vec(W) (tests only:
        (d_out d_in)² entries), vec in row-major order of W."""
        Qs, Qa = self.Q_S[name], self.Q_A[name]
        Q = torch.kron(Qs, Qa)
        lam = self.lam[name].reshape(-1)
        return Q @ torch.diag(1.0 / (lam + self.damping * lam.mean())) @ Q.T

    # storage ----------------------------------------------------------------------------------
    def save(self, path: str | Path, key: str = "") -> None:
        """Eigenbases and eigenvalues of every module, in one safetensors file; `key` names what they were
        fitted on (`stored_key` reads it back)."""
        from safetensors.torch import save_file

        tensors = {}
        for name in self.modules:
            tensors[f"{name}::Q_A"] = self.Q_A[name].contiguous()
            tensors[f"{name}::Q_S"] = self.Q_S[name].contiguous()
            tensors[f"{name}::lam"] = self.lam[name].contiguous()
        meta = {"damping": str(self.damping), "correct": str(self.correct), "key": key}
        from index.io import atomic_path

        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load(self, path: str | Path) -> EKFAC:
        """Read what `save` wrote (the modules must have the same names)."""
        from safetensors.torch import load_file

        t = load_file(str(path))
        for name in self.modules:
            self.Q_A[name], self.Q_S[name], self.lam[name] = t[f"{name}::Q_A"], t[f"{name}::Q_S"], t[f"{name}::lam"]
        return self

    @staticmethod
    def stored_key(path: str | Path) -> str | None:
        """The `key` a saved file was written with (None when there is no file)."""
        from safetensors import safe_open

        if not Path(path).exists():
            return None
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("key", "")


def mean_gradient(
    model: nn.Module, modules: dict[str, nn.Module], batches: Iterable, loss_fn: Callable,
    weights: Callable | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Mean over examples of the per-example loss gradient w.r.t. each module's weight (reduced over
    processes); `loss_fn(model, batch)` returns the per-example losses (B,), `weights(batch)` each example's
    weight (default 1: a weight of 2 counts as two copies). Returns (gradients, total weight)."""
    sums = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in modules.items()}
    count = torch.zeros(1, dtype=torch.float64)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        losses = loss_fn(model, batch)
        w = torch.ones(losses.shape[0], dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights(batch), dtype=torch.float64).reshape(-1)
        (losses * w.to(losses.device, losses.dtype)).sum().backward()
        for n, m in modules.items():
            if m.weight.grad is None:
                raise RuntimeError(f"module {n!r} got no gradient; does it require grad?")
            sums[n] += m.weight.grad.double()
        count += w.sum()
    model.zero_grad(set_to_none=True)
    count = _reduce(count)
    if count.item() == 0:
        raise ValueError("mean_gradient: no examples (or every weight is 0)")
    return {n: _reduce(s) / count for n, s in sums.items()}, float(count.item())


def influence(ekfac: EKFAC, g_ref: dict[str, torch.Tensor], g_dom: dict[str, torch.Tensor]) -> float:
    """s = Σ_modules ⟨g_ref, H⁻¹ g_dom⟩: > 0 when training more on the domain lowers the reference loss."""
    return influence_matrix(ekfac, [("ref", g_ref)], [("dom", g_dom)])["ref"]["dom"]


def influence_matrix(
    ekfac: EKFAC,
    refs: Iterable[tuple[str, dict[str, torch.Tensor]]],
    doms: Iterable[tuple[str, dict[str, torch.Tensor]]],
) -> dict[str, dict[str, float]]:
    """s[r][d] = Σ_modules ⟨H⁻¹ g_r, g_d⟩ (= ⟨g_r, H⁻¹ g_d⟩: the damped inverse is symmetric) for every
    reference set r and domain d. One H⁻¹ product per reference set, all kept (float32) while the domain
    gradients stream: `refs` and `doms` may be generators, so memory holds the reference sets' products and one
    domain gradient (on SmolLM2's MLPs one gradient is 0.6 GB in float64, one H⁻¹ product ~0.5 TFLOP, done in
    float32)."""
    inv = {r: ekfac.ihvp(g, dtype=torch.float32) for r, g in refs}
    out: dict[str, dict[str, float]] = {r: {} for r in inv}
    for d, g_dom in doms:
        for r, h in inv.items():
            out[r][d] = float(sum((h[n].double() * g_dom[n].double()).sum() for n in h))
    return out
