"""Image reasoning sets in their Hub layouts (parquet with embedded images unless noted)."""

from __future__ import annotations

import ast
import math
import re

from recipe.copd.data.common import (
    CHOICE_INSTRUCTION,
    MATH_INSTRUCTION,
    DataError,
    field,
    image_bytes,
    info,
    letter_of,
    make_row,
    options_block,
    strip_letter,
)


def _as_list(value, i: int, name: str) -> list:
    """A list field that some layouts store as its Python repr (MMMU's ``options``)."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError) as err:
            raise DataError(f"row {i}: field {name}: not a list: {value[:60]!r}") from err
    return list(value)


def _qa_row(data_source, i, split, question, images, answer, options=(), instruction=None, **meta):
    """A multiple-choice row when there are options (gold as a letter), else a math row."""
    options = [str(o) for o in options]
    if options:
        text = f"{question.strip()}\n\n{options_block(options)}\n\n{instruction or CHOICE_INSTRUCTION}"
        choices = [strip_letter(o, k) for k, o in enumerate(options)]
        gold = letter_of(answer, options, i)
        return make_row(data_source, "vision", text, gold, info("choice", i, split, choices, **meta), images=images)
    text = f"{question.strip()}\n\n{instruction or MATH_INSTRUCTION}"
    return make_row(data_source, "vision", text, str(answer), info("math", i, split, **meta), images=images)


def geometry3k(rows, data_source, split, root=None, **_):
    """hiyouga/geometry3k: ``images`` (list), ``problem`` (with ``<image>``), ``answer``."""
    out = []
    for i, row in enumerate(rows):
        images = [image_bytes(im, i, "images", root) for im in _as_list(field(row, i, "images"), i, "images")]
        out.append(_qa_row(data_source, i, split, str(field(row, i, "problem")), images, field(row, i, "answer")))
    return out


def _numbered_images(row, i, root):
    """MMMU's ``image_1`` ... ``image_7`` columns (the unused ones are null)."""
    keys = sorted((k for k in row if re.fullmatch(r"image_\d+", k) and row[k] is not None), key=lambda k: int(k[6:]))
    return [image_bytes(row[k], i, k, root) for k in keys]


def mmmu(rows, data_source, split, root=None, **_):
    """MMMU/MMMU and MMMU/MMMU_Pro (standard): ``question``, ``options`` (a list or its repr), ``image_1``..``image_7``,
    ``answer`` (a letter; MMMU's open questions have no options). MMMU_Pro "vision": ``image``, ``options``, ``answer``
    (the question is inside the image)."""
    out = []
    for i, row in enumerate(rows):
        options = _as_list(field(row, i, "options", required=False), i, "options")
        if "question" in row:
            images, question = _numbered_images(row, i, root), str(field(row, i, "question"))
            if not images:
                raise DataError(f"row {i}: field image_1: missing (MMMU rows have at least one image)")
        else:  # MMMU-Pro vision: the whole question is a screenshot
            images = [image_bytes(field(row, i, "image"), i, "image", root)]
            question = "Answer the question shown in the image."
        meta = {k: row[k] for k in ("id", "subject", "subfield", "question_type", "topic_difficulty") if k in row}
        out.append(_qa_row(data_source, i, split, question, images, field(row, i, "answer"), options, **meta))
    return out


def mathvista(rows, data_source, split, root=None, **_):
    """AI4Math/MathVista: ``query`` (the official prompt), ``decoded_image`` (or ``image`` path), ``choices``,
    ``answer`` (an option's text for multi_choice), ``question_type``, ``answer_type``, ``precision``."""
    out = []
    for i, row in enumerate(rows):
        image = image_bytes(field(row, i, "decoded_image", "image"), i, "decoded_image", root)
        question = str(field(row, i, "query", "question"))
        answer, qtype = str(field(row, i, "answer")), field(row, i, "question_type", required=False)
        choices = _as_list(field(row, i, "choices", required=False), i, "choices")
        meta = {"pid": row.get("pid"), "question_type": qtype, "unit": row.get("unit")}
        if qtype == "multi_choice" or (choices and qtype is None):
            letter = letter_of(answer, choices, i)
            text = f"{question.strip()}\n\n{CHOICE_INSTRUCTION}"
            extra = info("choice", i, split, choices, **meta)
            out.append(make_row(data_source, "vision", text, letter, extra, images=[image]))
            continue
        kind = str(field(row, i, "answer_type", required=False) or "float")
        precision = row.get("precision")
        precision = None if precision is None or (isinstance(precision, float) and math.isnan(precision)) else precision
        answer_type = {"integer": "numeric", "float": "numeric", "text": "text"}.get(kind, "math")
        text = f"{question.strip()}\n\nPut your final answer within \\boxed{{}}."
        extra = info(answer_type, i, split, precision=precision if kind == "float" else None, numeric_kind=kind, **meta)
        out.append(make_row(data_source, "vision", text, answer, extra, images=[image]))
    return out


def mathvision(rows, data_source, split, root=None, **_):
    """MathLLMs/MathVision: ``question``, ``options`` (empty for free-form), ``decoded_image`` (or ``image``
    path), ``answer`` (a letter when there are options)."""
    out = []
    for i, row in enumerate(rows):
        image = image_bytes(field(row, i, "decoded_image", "image"), i, "decoded_image", root)
        options = _as_list(field(row, i, "options", required=False), i, "options")
        meta = {k: row.get(k) for k in ("id", "subject", "level")}
        q = str(field(row, i, "question"))
        out.append(_qa_row(data_source, i, split, q, [image], field(row, i, "answer"), options, **meta))
    return out


def zerobench(rows, data_source, split, root=None, **_):
    """jonathan-roberts1/zerobench (split ``zerobench_subquestions`` for "ZeroBench (sub)"): ``question_text``,
    ``question_images_decoded`` (list; or ``question_images`` paths), ``question_answer``."""
    out = []
    for i, row in enumerate(rows):
        ims = field(row, i, "question_images_decoded", "question_images")
        images = [image_bytes(im, i, "question_images_decoded", root) for im in _as_list(ims, i, "question_images")]
        q, a = str(field(row, i, "question_text")), field(row, i, "question_answer")
        out.append(_qa_row(data_source, i, split, q, images, a, question_id=row.get("question_id")))
    return out


def _wemath_options(value, i) -> list[str]:
    """We-Math's ``option`` is one string, "A. 1; B. 2; C. 3"; a list is taken as is."""
    if isinstance(value, str):
        return [o.strip() for o in re.split(r";\s*(?=[A-H][\.\:])", value) if o.strip()]
    return _as_list(value, i, "option")


def wemath(rows, data_source, split, root=None, **_):
    """We-Math/We-Math (testmini): ``question``, ``option`` ("A. ...; B. ..."), ``image_path`` (an image),
    ``answer`` (a letter)."""
    out = []
    for i, row in enumerate(rows):
        image = image_bytes(field(row, i, "image_path", "image"), i, "image_path", root)
        options = _wemath_options(field(row, i, "option", "options"), i)
        meta = {k: row.get(k) for k in ("ID", "key", "knowledge concept")}
        q = str(field(row, i, "question"))
        out.append(_qa_row(data_source, i, split, q, [image], field(row, i, "answer"), options, **meta))
    return out


def mathverse(rows, data_source, split, root=None, **_):
    """AI4Math/MathVerse (testmini): ``query_cot`` (or ``question``), ``image``, ``answer`` (a letter for
    ``question_type`` multi-choice; the options are inside the question text or the image)."""
    out = []
    for i, row in enumerate(rows):
        image = image_bytes(field(row, i, "image"), i, "image", root)
        question = str(field(row, i, "query_cot", "question"))
        answer, qtype = str(field(row, i, "answer")), str(field(row, i, "question_type", required=False) or "")
        meta = {k: row.get(k) for k in ("sample_index", "problem_version", "question_type")}
        if qtype == "multi-choice":
            letter = answer.strip().strip("()").strip().upper()
            text = f"{question.strip()}\n\n{CHOICE_INSTRUCTION}"
            out.append(make_row(data_source, "vision", text, letter, info("choice", i, split, **meta), images=[image]))
        else:
            out.append(_qa_row(data_source, i, split, question, [image], answer, **meta))
    return out
