"""Tiny copies of each data set in its public layout (file names, columns, media), written by the tests.

Each ``write_<name>(root) -> input path`` writes a few rows the way the Hub / the authors' release has them:
parquet with embedded images (``datasets.Image``), JSON/JSONL, mp4 files and frame folders.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
from PIL import Image

MATH_ROWS = [("What is $1+1$?", "2"), ("Compute $\\frac{1}{2}+\\frac{1}{4}$.", "\\frac{3}{4}"), ("What is 3*3?", "9")]


def png(color=(200, 30, 30), size=(8, 8)) -> Image.Image:
    img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def mp4(path: Path, frames: int = 4) -> Path:
    """A 16x16 mp4 of ``frames`` frames (PyAV, mpeg4)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * k, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _parquet(rows: dict, path: Path, features: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = None
    if features:
        base = datasets.Dataset.from_dict({k: v for k, v in rows.items() if k not in features}).features
        feats = datasets.Features({**base, **features})
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    return path


def _jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- text
def write_dapo_math(root: Path) -> Path:
    instr = "Solve the following math problem step by step. The last line of your response should be of the form "
    rows = {
        "data_source": ["math_dapo"] * 3,
        "prompt": [[{"role": "user", "content": f"{instr}Answer: $Answer\n\n{q}"}] for q, _ in MATH_ROWS],
        "ability": ["MATH"] * 3,
        "reward_model": [{"ground_truth": a, "style": "rule-lighteval/MATH_v2"} for _, a in MATH_ROWS],
        "extra_info": [{"index": str(i)} for i in range(3)],
    }
    return _parquet(rows, root / "dapo_math" / "data" / "dapo-math-17k.parquet").parent.parent


def write_deepscaler(root: Path) -> Path:
    rows = [{"problem": q, "answer": a, "solution": f"... \\boxed{{{a}}}"} for q, a in MATH_ROWS]
    path = root / "deepscaler" / "deepscaler.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows))
    return path


def write_math(root: Path) -> Path:
    rows = {"problem": [q for q, _ in MATH_ROWS], "solution": [f"So it is $\\boxed{{{a}}}$." for _, a in MATH_ROWS],
            "level": ["Level 1"] * 3, "type": ["Algebra"] * 3}  # fmt: skip
    return _parquet(rows, root / "math" / "data" / "train-00000-of-00001.parquet").parent.parent


def write_aime24(root: Path) -> Path:  # HuggingFaceH4/aime_2024
    rows = {"id": [60, 61, 62], "problem": [q for q, _ in MATH_ROWS], "solution": ["..."] * 3,
            "answer": [a for _, a in MATH_ROWS], "url": ["u"] * 3, "year": [2024] * 3}  # fmt: skip
    return _parquet(rows, root / "aime24" / "data" / "train-00000-of-00001.parquet").parent.parent


def write_aime25(root: Path) -> Path:  # math-ai/aime25: test.jsonl
    rows = [{"problem": q, "answer": a, "id": str(i)} for i, (q, a) in enumerate(MATH_ROWS)]
    return _jsonl(rows, root / "aime25" / "test.jsonl").parent


def write_hmmt25(root: Path) -> Path:  # MathArena/hmmt_feb_2025
    rows = {"problem_idx": [1, 2, 3], "problem": [q for q, _ in MATH_ROWS], "answer": [a for _, a in MATH_ROWS],
            "problem_type": [["Algebra"]] * 3}  # fmt: skip
    return _parquet(rows, root / "hmmt25" / "data" / "train-00000-of-00001.parquet").parent.parent


def write_math500(root: Path) -> Path:  # HuggingFaceH4/MATH-500: test.jsonl
    rows = [{"problem": q, "solution": f"\\boxed{{{a}}}", "answer": a, "subject": "Algebra", "level": 1,
             "unique_id": f"test/algebra/{i}.json"} for i, (q, a) in enumerate(MATH_ROWS)]  # fmt: skip
    return _jsonl(rows, root / "math500" / "test.jsonl").parent


def write_minerva_math(root: Path) -> Path:  # math-ai/minervamath: test.jsonl of question, answer
    return _jsonl([{"question": q, "answer": a} for q, a in MATH_ROWS], root / "minerva" / "test.jsonl").parent


# ---------------------------------------------------------------- image
IMG = datasets.Image()


def write_geometry3k(root: Path) -> Path:
    rows = {"images": [[png()], [png((0, 90, 0))]], "problem": ["<image>Find x.", "<image>Find y."],
            "answer": ["3", "2\\sqrt{3}"]}  # fmt: skip
    path = root / "geometry3k" / "data" / "train-00000-of-00001.parquet"
    return _parquet(rows, path, {"images": datasets.Sequence(IMG)}).parent.parent


def write_mmmu(root: Path) -> Path:  # MMMU/MMMU: <Subject>/validation-*.parquet, options as a repr string
    rows = {"id": ["validation_Math_1", "validation_Math_2"],
            "question": ["<image 1> Which shape is red?", "<image 1> How many sides? <image 2>"],
            "options": ["['circle', 'square', 'triangle']", "[]"], "explanation": ["", ""],
            "image_1": [png(), png()], "image_2": [None, png((0, 0, 200))], "img_type": ["['Diagrams']"] * 2,
            "answer": ["B", "4"], "topic_difficulty": ["Easy"] * 2, "question_type": ["multiple-choice", "open"],
            "subfield": ["Geometry"] * 2}  # fmt: skip
    return _parquet(
        rows, root / "mmmu" / "Math" / "validation-00000-of-00001.parquet", {"image_1": IMG, "image_2": IMG}
    ).parent.parent  # noqa: E501


def write_mmmu_pro(root: Path) -> Path:  # MMMU/MMMU_Pro: "standard (10 options)" and "vision" configs
    rows = {"id": ["test_1"], "question": ["<image 1> Pick the red one."], "options": ["['blue', 'red', 'green']"],
            "explanation": [""], "image_1": [png()], "img_type": ["['Photos']"], "answer": ["B"],
            "topic_difficulty": ["Easy"], "subject": ["Art"]}  # fmt: skip
    _parquet(rows, root / "mmmu_pro" / "standard (10 options)" / "test-00000-of-00001.parquet", {"image_1": IMG})
    return root / "mmmu_pro" / "standard (10 options)"


def write_mathvista(root: Path) -> Path:  # AI4Math/MathVista: data/testmini-*.parquet
    rows = {"pid": ["1", "2", "3"], "question": ["Which color?", "Length?", "Count?"],
            "image": ["images/1.jpg", "images/2.jpg", "images/3.jpg"], "decoded_image": [png(), png(), png()],
            "choices": [["red", "blue"], None, None], "unit": [None, "cm", None], "precision": [None, 1.0, None],
            "answer": ["red", "1.5", "3"], "question_type": ["multi_choice", "free_form", "free_form"],
            "answer_type": ["text", "float", "integer"],
            "query": ["Hint: answer with the letter.\nQuestion: Which color?\nChoices:\n(A) red\n(B) blue",
                      "Question: Length?", "Question: Count?"]}  # fmt: skip
    return _parquet(
        rows, root / "mathvista" / "data" / "testmini-00000-of-00001-abc.parquet", {"decoded_image": IMG}
    ).parent.parent  # noqa: E501


def write_mathvision(root: Path) -> Path:  # MathLLMs/MathVision: data/test-*.parquet
    rows = {"id": ["1", "2"], "question": ["<image1> Which?", "<image1> How many?"], "options": [["1", "2"], []],
            "image": ["images/1.jpg", "images/2.jpg"], "decoded_image": [png(), png()], "answer": ["A", "5"],
            "solution": [None, None], "level": [1, 2], "subject": ["counting"] * 2}  # fmt: skip
    return _parquet(
        rows, root / "mathvision" / "data" / "test-00000-of-00001.parquet", {"decoded_image": IMG}
    ).parent.parent  # noqa: E501


def write_zerobench(root: Path) -> Path:  # jonathan-roberts1/zerobench: zerobench_subquestions split
    rows = {"question_id": ["1_1", "1_2"], "question_text": ["How many dots?", "Sum?"],
            "question_images_decoded": [[png()], [png(), png()]], "question_answer": ["7", "12"],
            "question_images": [["images/1.png"], ["images/1.png", "images/2.png"]],
            "image_attribution": ["own", "own"]}  # fmt: skip
    path = root / "zerobench" / "data" / "zerobench_subquestions-00000-of-00001.parquet"
    return _parquet(rows, path, {"question_images_decoded": datasets.Sequence(IMG)}).parent.parent


def write_wemath(root: Path) -> Path:  # We-Math/We-Math testmini
    rows = {"ID": ["1@3steps_1"], "split": ["testmini"], "knowledge concept": ["Area"], "question": ["Area?"],
            "option": ["A. 1; B. 2; C. 3; D. 4; E. No correct answer"], "answer": ["C"], "image_path": [png()],
            "key": ["3steps_1"], "question number": [1]}  # fmt: skip
    return _parquet(rows, root / "wemath" / "testmini-00000-of-00001.parquet", {"image_path": IMG}).parent


def write_mathverse(root: Path) -> Path:  # AI4Math/MathVerse testmini
    rows = {"sample_index": ["1", "2"], "problem_index": ["1", "1"], "problem_version": ["Text Dominant"] * 2,
            "question": ["Angle? Choices: A:30 B:60", "Length?"], "image": [png(), png()], "answer": ["B", "5"],
            "question_type": ["multi-choice", "free-form"], "metadata": [{"split": "testmini"}] * 2,
            "query_wo": ["q", "q"], "query_cot": ["Angle? Choices: A:30 B:60", "Length?"],
            "question_for_eval": ["q", "q"]}  # fmt: skip
    return _parquet(rows, root / "mathverse" / "testmini-00000-of-00001.parquet", {"image": IMG}).parent


# ---------------------------------------------------------------- video
def write_video_r1(root: Path) -> Path:  # Video-R1-260k.json + media under the data root
    base = root / "video_r1"
    mp4(base / "LLaVA-Video-178K" / "v1.mp4")
    (base / "CLEVRER").mkdir(parents=True)
    png().save(base / "CLEVRER" / "img.png")
    rows = [
        {"problem_id": 1, "problem": "What moves?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. a cat", "B. a car"], "process": "<think>..</think>", "solution": "<answer>B</answer>",
         "path": "./LLaVA-Video-178K/v1.mp4", "data_source": "LLaVA-Video-178K"},
        {"problem_id": 2, "problem": "How many?", "data_type": "image", "problem_type": "numerical",
         "options": [], "process": "", "solution": "<answer>3</answer>", "path": "./CLEVRER/img.png",
         "data_source": "CLEVRER"},
    ]  # fmt: skip
    (base / "Video-R1-260k.json").write_text(json.dumps(rows))
    return base / "Video-R1-260k.json"


def write_mvbench(root: Path) -> Path:  # json/<task>.json + video/<source>/... (a file and a frame folder)
    base = root / "mvbench"
    mp4(base / "video" / "star" / "Charades_v1_480" / "ABC.mp4")
    frames = base / "video" / "tvqa" / "frames_fps3_hq" / "clip_1"
    frames.mkdir(parents=True)
    for k in range(3):
        png((10 * k, 0, 0)).save(frames / f"{k:05d}.jpg")
    (base / "json").mkdir()
    (base / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "ABC.mp4", "question": "What did the person do first?", "candidates": ["Sat.", "Stood."],
         "answer": "Stood."}]))  # fmt: skip
    (base / "json" / "episodic_reasoning.json").write_text(json.dumps([
        {"video": "clip_1", "question": "Who speaks?", "candidates": ["Ross", "Joey", "Chandler"], "answer": "Ross",
         "start": 0.0, "end": 1.0}]))  # fmt: skip
    return base


def write_videomathqa(root: Path) -> Path:  # parquet of videoID/question/options/answer + videos/<videoID>.mp4
    base = root / "videomathqa"
    mp4(base / "videos" / "vid1.mp4")
    rows = {"videoID": ["vid1"], "question_id": [1], "category": ["counting"], "question": ["How many squares?"],
            "options": [["(A) 2", "(B) 4"]], "answer": ["B"], "steps": [""], "length": ["short"]}  # fmt: skip
    return _parquet(rows, base / "mcq" / "test-00000-of-00001.parquet").parent


WRITERS = {name[len("write_") :]: fn for name, fn in dict(globals()).items() if name.startswith("write_")}
