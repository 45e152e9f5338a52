"""Video sets: Video-R1's JSON, MVBench's per-task JSON files, VideoMathQA's parquet. Videos stay files on disk
(verl's dataset reads the paths); a folder of frames becomes a list of frame paths."""

from __future__ import annotations

import os
import re

from recipe.copd.data.common import (
    CHOICE_INSTRUCTION,
    MATH_INSTRUCTION,
    DataError,
    MediaIndex,
    field,
    image_bytes,
    info,
    letter_of,
    make_row,
    options_block,
    strip_letter,
)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
# Video-R1 problem_type -> our answer type; OCR and free-form are scored by normalized exact match here (Video-R1
# itself trains them with WER / ROUGE rewards).
_VIDEO_R1_TYPES = {"multiple choice": "choice", "numerical": "numeric", "regression": "numeric",
                   "ocr": "text", "free-form": "text"}  # fmt: skip


def video_r1(rows, data_source, split, root=None, **_):
    """Video-R1/Video-R1-data (``Video-R1-260k.json``): ``problem``, ``problem_type``, ``options`` ("A. ..."),
    ``solution`` ("<answer>B</answer>"), ``data_type`` (video | image), ``path`` (relative to the data root)."""
    media = MediaIndex(root)
    out = []
    for i, row in enumerate(rows):
        ptype = str(field(row, i, "problem_type")).lower()
        if ptype not in _VIDEO_R1_TYPES:
            raise DataError(f"row {i}: field problem_type: {ptype!r} is not one of {sorted(_VIDEO_R1_TYPES)}")
        kind = _VIDEO_R1_TYPES[ptype]
        solution = str(field(row, i, "solution"))
        m = _ANSWER.search(solution)
        answer = (m.group(1) if m else solution).strip()
        path = str(field(row, i, "path"))
        if str(field(row, i, "data_type", required=False) or "video") == "image":
            media_kw = {"images": [image_bytes(path, i, "path", root)]}
        else:
            media_kw = {"videos": [media.video(path, i, "path")]}
        options = list(field(row, i, "options", required=False) or []) if kind == "choice" else []
        question = str(field(row, i, "problem"))
        meta = {"problem_id": row.get("problem_id"), "problem_type": ptype, "source": row.get("data_source")}
        if kind == "choice":
            text = f"{question.strip()}\n\n{options_block(options)}\n\n{CHOICE_INSTRUCTION}"
            choices = [strip_letter(o, k) for k, o in enumerate(options)]
            extra = info("choice", i, split, choices, **meta)
            answer = letter_of(answer, options, i) if options else answer
        else:
            text = f"{question.strip()}\n\n{MATH_INSTRUCTION}"
            extra = info(kind, i, split, **meta)
        out.append(make_row(data_source, "video", text, answer, extra, **media_kw))
    return out


def _choice_video_row(data_source, i, split, question, video, options, answer, **meta):
    text = f"{question.strip()}\n\n{options_block(options)}\n\n{CHOICE_INSTRUCTION}"
    choices = [strip_letter(o, k) for k, o in enumerate(options)]
    gold = letter_of(answer, options, i)
    return make_row(data_source, "video", text, gold, info("choice", i, split, choices, **meta), videos=[video])


def mvbench(rows, data_source, split, root=None, **_):
    """OpenGVLab/MVBench: ``json/<task>.json`` rows of ``video`` (a file or frame-folder name under ``video/``),
    ``question``, ``candidates``, ``answer`` (the correct candidate's text). Videos are looked up by name under the
    data root (``--media-root``, default: the folder above ``json/``)."""
    media = MediaIndex(root)
    out = []
    for i, row in enumerate(rows):
        video = media.video(str(field(row, i, "video")), i, "video")
        candidates = [str(c) for c in field(row, i, "candidates")]
        meta = {"task": row.get("__task__")}
        out.append(_choice_video_row(data_source, i, split, str(field(row, i, "question")), video, candidates,
                                     field(row, i, "answer"), **meta))  # fmt: skip
    return out


def videomathqa(rows, data_source, split, root=None, **_):
    """VideoMathQA (MBZUAI): its parquet rows (``videoID``, ``question``, ``options``, ``answer``, ``category``)
    with the videos as ``<videoID>.mp4`` under the media root. The layout of the video folder is not documented in
    anything read here, so a plain JSONL of ``video`` (a path), ``question``, ``options`` (list, optional) and
    ``answer`` (a letter, an option's text, or a value when there are no options) is accepted too."""
    media = MediaIndex(root)
    out = []
    for i, row in enumerate(rows):
        ref = str(field(row, i, "video", "videoID"))
        video = media.video(ref if os.path.splitext(ref)[1] else ref + ".mp4", i, "video")
        options = list(field(row, i, "options", required=False) or [])
        question, answer = str(field(row, i, "question")), field(row, i, "answer")
        meta = {"category": row.get("category"), "question_id": row.get("question_id")}
        if options:
            out.append(_choice_video_row(data_source, i, split, question, video, options, answer, **meta))
        else:
            text = f"{question.strip()}\n\n{MATH_INSTRUCTION}"
            out.append(make_row(data_source, "video", text, str(answer), info("math", i, split, **meta),
                                videos=[video]))  # fmt: skip
    return out
