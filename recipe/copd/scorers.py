"""Answer checkers of the paper's benchmarks: small pure functions, one per answer format.

- ``extract_final``: the model's final answer (the last ``\\boxed{}``, an ``<answer>`` tag, an "Answer:" line);
  for ZeroBench, whose own prompt asks for the answer in curly braces, also the last ``{...}`` (``last_braced``).
- ``math_equal``: mathematical equivalence with Hugging Face's ``math-verify`` (fractions, decimals, LaTeX,
  intervals, sets), with a plain string comparison as the last resort.
- ``choice_equal``: multiple choice, by option letter ("(B)", "B.", "The answer is B") or by option text.
- ``numeric_equal``: MathVista-style free-form numbers: rounded to the benchmark's ``precision`` (decimal places)
  when it defines one, integers compared as integers.

``score(data_source, solution, ground_truth, extra_info)`` picks the checker: the row's
``extra_info["answer_type"]`` (written by ``recipe.copd.data``), else the data source's default kind.
"""

from __future__ import annotations

import math
import re
import threading

ANSWER_TYPES = ("math", "choice", "numeric", "text")
# The data sources that the presets and ``recipe.copd.data`` write, with the checker used when a row names none.
DEFAULT_KIND = {
    "text": "math", "image": "math", "video": "choice",
    "aime24": "math", "aime25": "math", "hmmt25": "math", "math500": "math", "minerva_math": "math",
    "mmmu": "choice", "mmmu_pro": "choice", "mathvista": "numeric", "mathvision": "math", "zerobench": "math",
    "wemath": "choice", "mathverse": "math", "mvbench": "choice", "videomathqa": "choice",
}  # fmt: skip
MAX_ANSWER_CHARS = 300  # longer "answers" are not parsed (math-verify can take seconds on a page of LaTeX)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_THINK = re.compile(r"<think>.*?</think>", re.S)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_LINE = re.compile(
    r"\b(?:final answer|the answer|answer)\b\s*(?:is|:)?\s*[:\-]?\s*(.+)$", re.I | re.M
)  # "Answer: 5", "The final answer is $5$", "the answer is (B)."


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    macro = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    i = text.find("{", start)
    if i < 0 or text[start + len(macro) : i].strip():  # "\boxed 5" (no brace): up to the next space or $
        rest = text[start + len(macro) :].strip()
        return re.split(r"[\s$]", rest, maxsplit=1)[0] or None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: the response was cut off


def last_braced(text: str) -> str | None:
    """ZeroBench's own answer format, "{final answer}": the content of the last balanced ``{...}`` that is not a
    LaTeX argument (not after a macro name, ``^``, ``_`` or another group, as in ``\\frac{1}{2}``); None if none."""
    end = text.rfind("}")
    while end >= 0:
        depth, j = 0, end
        while j >= 0:
            depth += {"}": 1, "{": -1}.get(text[j], 0)
            if depth == 0:
                break
            j -= 1
        if j < 0:
            return None  # unbalanced
        before = text[:j].rstrip(" ")
        if not (before.endswith(("^", "_", "}")) or re.search(r"\\[A-Za-z]+\*?$", before)):
            inner = text[j + 1 : end].strip()
            return inner or None
        end = text.rfind("}", 0, j)
    return None


def extract_final(solution: str) -> str:
    """The final answer of a response: ``\\boxed{}`` > ``<answer>`` tag > "answer is/Answer:" line > last line."""
    text = _THINK.sub("", solution)
    if "</think>" in text:  # an unclosed-start think block: keep what follows it
        text = text.rsplit("</think>", 1)[1]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1].strip()
        return (last_boxed(inner) or inner).strip()
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip().rstrip(".").strip()
    rows = [r.strip() for r in text.strip().splitlines() if r.strip()]
    return rows[-1] if rows else ""


def _normalize(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|!|,|;|quad)", "", s)
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _timeout() -> int | None:
    """math-verify times out with signal.alarm, which works only in the main thread (reward workers use threads)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_equal(pred: str, gold: str) -> bool:
    """``pred`` equals ``gold`` mathematically (math-verify), or as normalized strings."""
    from math_verify import parse, verify

    if not pred or len(pred) > MAX_ANSWER_CHARS:
        return False
    if _normalize(pred) == _normalize(gold):
        return True
    t = _timeout()
    gold_parsed = parse(f"${gold.strip().strip('$')}$", parsing_timeout=t) or parse(gold, parsing_timeout=t)
    pred_parsed = parse(f"${pred.strip().strip('$')}$", parsing_timeout=t) or parse(pred, parsing_timeout=t)
    if gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=t):
        return True
    # "6.5e-27" vs "6.5 \times 10^{-27}": within 1e-4 relative, as in Qwen2.5-Math's grader
    p, g = _to_float(pred), _to_float(gold)
    return p is not None and g is not None and math.isclose(p, g, rel_tol=1e-4, abs_tol=0.0 if g else 1e-9)


def _letter(answer: str, n_options: int) -> str | None:
    """The option letter an answer names: "(B)", "B.", "B)", "B: text", "option B", a lone "B"."""
    valid = LETTERS[: max(n_options, 1)] if n_options else LETTERS[:10]
    a = answer.strip().strip("$*").strip()
    a = re.sub(r"^\\text\{(.*)\}$", r"\1", a)
    patterns = (
        rf"^\(?([{valid}])\)?(?:[\.\):,]|\s|$)",  # "(B)", "B.", "B) text", "B: text", "B"
        rf"(?:option|choice|answer is|answer:)\s*\(?([{valid}])\)?(?![A-Za-z])",
        rf"\(([{valid}])\)|(?<![A-Za-z])([{valid}])\)",  # "... (B)" or "... B) text" inside a sentence
    )
    if len(a) == 1 and a.upper() in valid:
        return a.upper()
    for p in patterns:
        m = re.search(p, a, re.I if p is patterns[1] else 0)
        if m:
            return next(g for g in m.groups() if g).upper()
    return None


def choice_equal(solution: str, gold: str, options: list[str] | None = None) -> bool:
    """Multiple choice: the letter of the final answer equals ``gold`` (a letter); else the answer is the
    text of the gold option. ``options`` are the option texts in letter order (without "A." prefixes)."""
    options = [] if options is None else [str(o) for o in options]
    gold_letter = gold.strip().strip("()").strip().upper()
    final = extract_final(solution)
    letter = _letter(final, len(options))
    if letter is None:  # a sentence: "The answer is B." inside a longer last line
        m = re.findall(r"answer is:?\s*\(?([A-J])\)?(?![A-Za-z])", solution)
        letter = m[-1] if m else None
    if letter is not None:
        return letter == gold_letter
    if options and gold_letter in LETTERS[: len(options)]:
        target = _normalize(options[LETTERS.index(gold_letter)])
        return bool(target) and _normalize(final) == target
    return False


def _to_float(s: str) -> float | None:
    """A number: "1,234.5", "12%", "3/4", "\\frac{3}{4}", "6.5e-27", "6.5\\times10^{-27}", "12.5 cm"; else None."""
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", _normalize(s)).replace("\\%", "").replace("%", "")
    frac = re.fullmatch(r"\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}|(-?[\d.]+)/(-?[\d.]+)", s)
    if frac:
        num, den = (float(x) for x in (frac.group(1, 2) if frac.group(1) else frac.group(3, 4)))
        return num / den if den else None
    sci = re.fullmatch(r"(-?[\d.]+)(?:e|\\times10\^\{?|\\cdot10\^\{?)(-?\d+)\}?", s)
    if sci:
        return float(sci.group(1)) * 10.0 ** int(sci.group(2))
    numbers = re.findall(r"-?\d*\.?\d+", s)
    return float(numbers[0]) if len(numbers) == 1 else None


def numeric_equal(pred: str, gold: str, precision: int | None = None, answer_kind: str = "float") -> bool:
    """Free-form numbers (MathVista): integers equal as integers; floats equal after rounding both to
    ``precision`` decimal places (the benchmark's field), else within 1e-6 relative; math-verify otherwise."""
    p, g = _to_float(pred), _to_float(gold)
    if p is None or g is None:
        return math_equal(pred, gold)
    if answer_kind == "integer":
        return float(p).is_integer() and int(p) == int(round(g))
    if precision is not None:
        return round(p, int(precision)) == round(g, int(precision))
    return math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9)


def text_equal(pred: str, gold: str) -> bool:
    """Short text answers: equal after normalization (case, spaces, LaTeX text wrappers)."""
    return bool(pred) and _normalize(pred) == _normalize(gold)


def answer_type(data_source: str, extra_info: dict | None) -> str:
    """The checker of a row: ``extra_info["answer_type"]``, else the data source's default kind."""
    kind = (extra_info or {}).get("answer_type") or DEFAULT_KIND.get(data_source)
    if kind is None:
        raise KeyError(f"no built-in scorer for data_source {data_source!r}: known {sorted(DEFAULT_KIND)}")
    if kind not in ANSWER_TYPES:
        raise ValueError(f"extra_info.answer_type={kind!r} for {data_source!r}: use one of {ANSWER_TYPES}")
    return kind


def final_answer(data_source: str, solution: str) -> str:
    """``extract_final``; for ZeroBench without a ``\\boxed{}``, its own "{answer}" format first."""
    if data_source == "zerobench" and last_boxed(solution) is None:
        braced = last_braced(_THINK.sub("", solution))
        if braced is not None:
            return braced
    return extract_final(solution)


def score(data_source: str, solution: str, ground_truth, extra_info: dict | None = None) -> float:
    """1.0 when the response's final answer is correct, else 0.0 (see the module docstring)."""
    gold = str(ground_truth)
    info = extra_info or {}
    kind = answer_type(data_source, info)
    if kind == "choice":
        ok = choice_equal(solution, gold, info.get("choices"))
    elif kind == "numeric":
        precision = info.get("precision")
        precision = None if precision is None or (isinstance(precision, float) and math.isnan(precision)) else precision
        ok = numeric_equal(final_answer(data_source, solution), gold, precision, info.get("numeric_kind") or "float")
    elif kind == "text":
        ok = text_equal(final_answer(data_source, solution), gold)
    else:
        ok = math_equal(final_answer(data_source, solution), gold)
    return 1.0 if ok else 0.0
