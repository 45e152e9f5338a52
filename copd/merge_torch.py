"""The in-memory merge on torch tensors: the reference math of `copd.merge` (see its docstring for the methods).

`copd.merge` streams checkpoints through the numpy kernels of `copd.merge_np`, which are tested bitwise equal to
this module; it imports this one (and torch) only for fp64 checkpoints and for these in-memory functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from copd.merge import _check_method_args, _check_same_layout, normalize_weights


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ties_threshold(tau: Tensor, density: float) -> float:
    """Magnitude of the ceil(density * n)-th largest entry of one task vector; TIES keeps entries with |tau| >= it.

    Shape: (*S) -> scalar. Entries tied with the threshold are all kept.
    """
    abs_N = tau.reshape(-1).abs()
    n = abs_N.numel()
    k = min(n, max(1, math.ceil(density * n)))
    return abs_N.kthvalue(n - k + 1).values.item() if n else 0.0


def merge_flat(method: str, tensors_K: Sequence[Tensor], weights_K: Sequence[float], base: Tensor | None = None,
               scale: float = 1.0, thresholds_K: Sequence[float] | None = None,
               out: Tensor | None = None) -> Tensor:  # fmt: skip
    """Elementwise core of every method, on whole tensors or chunks; weights normalised, TIES thresholds given.

    Shape: K x (*S) -> (*S), in fp32 (fp64 for fp64 inputs), written into `out` when given (not for TIES).
    """
    acc_dtype = _acc_dtype(tensors_K[0].dtype)
    if method == "ties":
        return _ties_flat(tensors_K, weights_K, base, scale, thresholds_K, acc_dtype)
    acc = torch.empty(tensors_K[0].shape, dtype=acc_dtype) if out is None else out
    acc.copy_(tensors_K[0]).mul_(weights_K[0])
    for t, w in zip(tensors_K[1:], weights_K[1:], strict=True):
        acc.add_(t, alpha=w)  # one fused multiply-add on CPU: acc + w * t rounded once
    if method == "task_arithmetic" and scale != 1.0:
        # base + s * sum_k w_k (theta_k - base) = (1 - s) base + s sum_k w_k theta_k, as sum_k w_k = 1
        acc.mul_(scale).add_(base, alpha=1.0 - scale)
    return acc


def _ties_flat(tensors_K, weights_K, base, scale, thresholds_K, acc_dtype) -> Tensor:
    base_f = base.to(acc_dtype, copy=True)
    trimmed_K = []
    for t, thr in zip(tensors_K, thresholds_K, strict=True):
        tau = t.to(acc_dtype) - base_f
        trimmed_K.append(tau.masked_fill_(tau.abs() < thr, 0.0))  # trim: keep the top-density magnitudes
    sign = sum(w * tau for w, tau in zip(weights_K, trimmed_K, strict=True)).sign_()  # elect: sign of the summed mass
    num, den = torch.zeros_like(base_f), torch.zeros_like(base_f)
    for w, tau in zip(weights_K, trimmed_K, strict=True):
        agree = (tau.sign() == sign) & (tau != 0)
        num.add_(tau * agree, alpha=w)
        den.add_(agree.to(acc_dtype), alpha=w)
    disjoint_mean = num.div_(den.clamp_min_(torch.finfo(acc_dtype).tiny))  # 0 where no task vector agrees
    return base_f.add_(disjoint_mean, alpha=scale)


def merge_tensors(method: str, tensors: Sequence[Tensor], weights: Sequence[float] | None = None,
                  base_tensor: Tensor | None = None, density: float = 0.2, scale: float = 1.0,
                  out_dtype: torch.dtype | None = None) -> Tensor:  # fmt: skip
    """Merge K same-shape float tensors in fp32 (fp64 for fp64) and cast to out_dtype (default: the inputs' dtype).

    Shape: K x (*S) -> (*S).
    """
    _check_method_args(method, len(tensors), base_tensor is not None, weights, density, scale)
    thresholds_K = None
    if method == "ties":
        acc_dtype = _acc_dtype(tensors[0].dtype)
        thresholds_K = [ties_threshold(t.to(acc_dtype) - base_tensor.to(acc_dtype), density) for t in tensors]
    merged = merge_flat(method, tensors, normalize_weights(weights, len(tensors)), base_tensor, scale, thresholds_K)
    return merged.to(out_dtype or tensors[0].dtype)


def merge_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]], method: str = "average",
                      weights: Sequence[float] | None = None, base_state_dict: Mapping[str, Tensor] | None = None,
                      density: float = 0.2, scale: float = 1.0) -> dict[str, Tensor]:  # fmt: skip
    """Merge K in-memory state dicts key by key with merge_tensors; non-float tensors are taken from the first."""
    all_sds = list(state_dicts) + ([base_state_dict] if base_state_dict is not None else [])
    layouts = [{k: (str(v.dtype), tuple(v.shape)) for k, v in sd.items()} for sd in all_sds]
    _check_same_layout(layouts, [f"state dict {i}" for i in range(len(all_sds))])
    merged = {}
    for key, first in state_dicts[0].items():
        if not first.is_floating_point():
            merged[key] = first.clone()
            continue
        base = base_state_dict[key] if base_state_dict is not None else None
        merged[key] = merge_tensors(method, [sd[key] for sd in state_dicts], weights, base, density, scale)
    return merged
