"""Numpy kernels of `copd.merge`'s streaming path: no torch, bitwise equal to the torch math of `copd.merge_torch`.

Every chunk is widened to fp32 (bf16 by a 16-bit shift, fp16 by numpy's exact cast), merged and narrowed back with
torch's rounding (bf16: round to nearest even on the bits, NaN -> 0x7FC0; fp16: numpy's IEEE cast, also nearest even).
torch's `acc.add_(x, alpha=w)` is one fused multiply-add on CPU (one rounding of acc + w * x); numpy has no FMA, so
`fma_` gets it exactly: plainly when w is a power of two (w * x is then exact, checked), else through fp64, where
w * x is exact and acc + w * x is rounded once more; that double rounding only errs when the fp64 sum lies exactly
halfway between two fp32 (or among fp32 subnormals), and those few entries are redone exactly with `fractions`.
Buffers come from a `Scratch` reused across chunks (fresh big arrays would page-fault on every chunk).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

F32, F64, U16, U32, U64 = np.float32, np.float64, np.uint16, np.uint32, np.uint64
RAW_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
TINY32 = float(np.finfo(F32).tiny)  # 2^-126, the smallest normal fp32
_HALF_ULP32 = np.uint64(1 << 28)  # in an fp64 holding an fp32-range number: the bit just below fp32's last one
_LOW29 = np.uint64((1 << 29) - 1)  # the fp64 mantissa bits that fp32 drops
_ABS64, _SUB64 = np.uint64((1 << 63) - 1), np.uint64((1023 - 126) << 52)  # |x| bits; fp64 bits of 2^-126


class Scratch:
    """Flat buffers reused across chunks by role; one per worker (never shared between threads)."""

    def __init__(self, min_count: int):
        self.min_count, self.buffers = min_count, {}

    def get(self, role: object, dtype, count: int) -> np.ndarray:
        buf = self.buffers.get((role, dtype))
        if buf is None or buf.size < count:
            buf = self.buffers[role, dtype] = np.empty(max(count, self.min_count), dtype=dtype)
        return buf[:count]


def widen(raw: np.ndarray, code: str, scr: Scratch, role: object) -> np.ndarray:
    """fp32 values of a raw chunk (bf16 held as uint16); an fp32 chunk is returned as is, no copy."""
    if code == "F32":
        return raw
    if code == "BF16":
        return np.left_shift(raw, 16, out=scr.get(role, U32, raw.size), dtype=U32).view(F32)
    out = scr.get(role, F32, raw.size)
    np.copyto(out, raw)  # fp16 -> fp32 is exact
    return out


@np.errstate(all="ignore")  # inf and NaN weights propagate as torch propagates them, silently
def narrow(acc_N: np.ndarray, code: str, scr: Scratch) -> np.ndarray:
    """The fp32 chunk in the output dtype, rounded as torch rounds (nearest even); bf16 comes back as uint16 bits."""
    if code == "F32":
        return acc_N
    if code == "F16":
        out = scr.get("out16", np.float16, acc_N.size)
        np.copyto(out, acc_N, casting="same_kind")
        return out
    bits, tmp = acc_N.view(U32), scr.get("round", U32, acc_N.size)
    np.right_shift(bits, 16, out=tmp)
    np.bitwise_and(tmp, 1, out=tmp)
    np.add(tmp, 0x7FFF, out=tmp)  # round to nearest, ties to even: add 0x7FFF plus the last kept bit
    np.add(tmp, bits, out=tmp)
    out = np.right_shift(tmp, 16, out=scr.get("out", U16, acc_N.size), casting="unsafe")
    if np.isnan(acc_N.min()):  # min propagates NaN; NaN must not round into inf: torch's canonical bf16 NaN
        out[np.isnan(acc_N)] = 0x7FC0
    return out


# w * x is exact in fp32 for a power of two 2^-j (0 <= j <= J) and any x of these dtypes: their lowest bit is far
# enough above fp32's (bf16: 2^-133, fp16: 2^-24, fp32's own subnormals go to 2^-149)
_EXACT_SHIFT = {"BF16": 16, "F16": 100}


def _exact_product(w32: float, x_code: str) -> bool:
    if w32 == 0.0:
        return True
    mantissa, exponent = math.frexp(abs(w32))
    return mantissa == 0.5 and x_code in _EXACT_SHIFT and -_EXACT_SHIFT[x_code] < exponent <= 1


@np.errstate(all="ignore")
def fma_(acc_N: np.ndarray, w: float, x_N: np.ndarray, scr: Scratch, x_code: str = "F32") -> np.ndarray:
    """acc_N <- acc_N + float32(w) * x_N with a single rounding (what torch's acc.add_(x, alpha=w) does), in place.

    x_code: the dtype x_N was widened from (its values' precision), "F32" when it is any fp32.
    """
    w32, n = F32(w), x_N.size
    if _exact_product(float(w32), x_code):  # w * x exact: the plain multiply-add rounds once
        return np.add(acc_N, np.multiply(x_N, w32, out=scr.get("prod", F32, n)), out=acc_N)
    if abs(math.frexp(float(w32))[0]) == 0.5 and abs(w32) <= 1:  # exact unless the product is subnormal: check
        prod = np.multiply(x_N, w32, out=scr.get("prod", F32, n))
        bits = np.bitwise_and(prod.view(U32), 0x7FFFFFFF, out=scr.get("bits32", U32, n))
        np.subtract(bits, 1, out=bits)  # 0 wraps around: left are the subnormal products, the only inexact ones
        if bits.min() >= 0x007FFFFF:
            return np.add(acc_N, prod, out=acc_N)
    sum_N = np.multiply(x_N, F64(w32), out=scr.get("sum64", F64, n))  # exact: 24 + 24 bits < 53
    np.add(sum_N, acc_N, out=sum_N)  # one rounding to fp64
    bits = sum_N.view(U64)
    tmp = np.bitwise_and(bits, _LOW29, out=scr.get("bits64", U64, n))
    suspect = np.equal(tmp, _HALF_ULP32, out=scr.get("suspect", np.bool_, n))  # halfway between two fp32
    np.bitwise_and(bits, _ABS64, out=tmp)
    np.subtract(tmp, 1, out=tmp)  # 0 wraps around: left are the nonzero sums among fp32's subnormals
    subnormal = np.less(tmp, _SUB64 - np.uint64(1), out=scr.get("subnormal", np.bool_, n))
    suspect |= subnormal
    redo = np.flatnonzero(suspect)
    a, s = acc_N[redo].astype(F64), sum_N[redo]
    np.copyto(acc_N, sum_N, casting="same_kind")  # the second rounding: right but at `redo` (halfway or subnormal)
    if not redo.size:
        return acc_N
    p = x_N[redo].astype(F64) * F64(w32)
    bb = s - a
    err = (a - (s - bb)) + (p - bb)  # TwoSum: the exact rounding error of s = a + p
    s = np.where(err > 0, np.nextafter(s, np.inf), np.where(err < 0, np.nextafter(s, -np.inf), s))
    acc_N[redo] = s  # nudged off the halfway point to the side of the exact sum: now rounds once, right
    for j in np.flatnonzero(subnormal[redo]):  # among fp32 subnormals the halfway points differ: rationals (rare)
        acc_N[redo[j]] = _fma32_exact(F32(a[j]), w32, x_N[redo[j]])
    return acc_N


def _fma32_exact(a: np.float32, w: np.float32, x: np.float32) -> np.float32:
    """round_fp32(a + w * x) with one rounding to nearest even, by exact rational arithmetic."""
    if not (math.isfinite(a) and math.isfinite(x)):
        return F32(F64(a) + F64(w) * F64(x))
    exact = Fraction(float(a)) + Fraction(float(w)) * Fraction(float(x))
    if exact == 0:
        return F32(F64(a) + F64(w) * F64(x))  # the sign of zero, by IEEE rules
    near = F32(float(exact))
    cands = [c for c in (np.nextafter(near, F32(-np.inf)), near, np.nextafter(near, F32(np.inf))) if np.isfinite(c)]
    if not cands:
        return near
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.array(c).view(U32)) & 1))


@np.errstate(all="ignore")
def ties_threshold(tau_N: np.ndarray, density: float) -> float:
    """Magnitude of the ceil(density * n)-th largest entry of one fp32 task vector (as torch's kthvalue finds it)."""
    n = tau_N.size
    if not n:
        return 0.0
    k = min(n, max(1, math.ceil(density * n)))
    return float(np.partition(np.abs(tau_N.reshape(-1)), n - k)[n - k])


@np.errstate(all="ignore")
def merge_chunk(method: str, xs_K: Sequence[np.ndarray], weights_K: Sequence[float], base_N: np.ndarray | None,
                scale: float, thresholds_K: Sequence[float] | None, scr: Scratch,
                code: str = "F32") -> np.ndarray:  # fmt: skip
    """One fp32 chunk of every method, in a reused buffer (valid until the next call). Shape: K x (N,) -> (N,).

    code: the dtype the fp32 chunks were widened from (bf16/fp16 values make more products exact: faster)."""
    n = xs_K[0].size
    if method == "ties":
        return _ties_chunk(xs_K, weights_K, base_N, scale, thresholds_K, scr)
    acc = scr.get("acc", F32, n)
    plain = method in ("average", "weighted") or scale == 1.0  # task arithmetic at scale 1: sum_k w_k theta_k
    if plain and len(set(weights_K)) == 1 and _exact_product(float(F32(weights_K[0])), code) and len(xs_K) > 1:
        # equal power-of-two weights on bf16/fp16 values: w * round(round(x0 + x1) + x2 ...) is bitwise torch's
        # round(round(w x0 + w x1) + w x2 ...), as scaling by 2^-j commutes with each rounding on their grid
        # (nothing falls below fp32's smallest subnormal); unless a sum overflows: then the general path below
        np.add(xs_K[0], xs_K[1], out=acc)
        for x in xs_K[2:]:
            np.add(acc, x, out=acc)
        np.multiply(acc, F32(weights_K[0]), out=acc)
        if np.isfinite(acc.min()) and np.isfinite(acc.max()):  # false on inf or NaN (min/max propagate NaN)
            return acc
    np.multiply(xs_K[0], F32(weights_K[0]), out=acc)
    for x, w in zip(xs_K[1:], weights_K[1:], strict=True):
        fma_(acc, w, x, scr, code)
    if method == "task_arithmetic" and scale != 1.0:  # (1 - s) base + s sum_k w_k theta_k, as in torch
        np.multiply(acc, F32(scale), out=acc)
        fma_(acc, 1.0 - scale, base_N, scr, code)
    return acc


def _ties_chunk(xs_K, weights_K, base_N, scale, thresholds_K, scr) -> np.ndarray:
    n = base_N.size
    taus_K = []
    for j, (x, thr) in enumerate(zip(xs_K, thresholds_K, strict=True)):
        tau = np.subtract(x, base_N, out=scr.get(("tau", j), F32, n))
        tau[np.abs(tau) < F32(thr)] = 0.0  # trim: keep the top-density magnitudes
        taus_K.append(tau)
    mass = np.multiply(taus_K[0], F32(weights_K[0]), out=scr.get("mass", F32, n))
    for w, tau in zip(weights_K[1:], taus_K[1:], strict=True):
        mass += tau * F32(w)  # a separate product, then a sum: two roundings, as torch's sum(w * tau)
    sign = np.sign(mass, out=mass)  # elect: the sign of the summed mass
    num = scr.get("num", F32, n)
    den = scr.get("den", F32, n)
    num.fill(0.0)
    den.fill(0.0)
    for w, tau in zip(weights_K, taus_K, strict=True):
        agree = (np.sign(tau) == sign) & (tau != 0)
        fma_(num, w, tau * agree, scr)
        den += np.where(agree, F32(w), F32(0.0))  # w * 1 or w * 0 is exact: the fused add is this plain one
    np.divide(num, np.maximum(den, F32(TINY32), out=den), out=num)  # 0 where no task vector agrees
    out = scr.get("ties_out", F32, n)
    np.copyto(out, base_N)
    return fma_(out, scale, num, scr)
