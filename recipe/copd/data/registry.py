"""The data sets ``python -m recipe.copd.data NAME`` converts: the converter, its data source and default split.

Training sets write the presets' branch data sources (``text``, ``image``, ``video``); evaluation sets each write
their own data source (the benchmark's name), which ``recipe.copd.scorers`` scores and ``recipe.copd.eval``
reports as one row of Table 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recipe.copd.data import image, text, video


@dataclass(frozen=True)
class Spec:
    convert: Callable  # (rows, data_source, split, root=...) -> verl rows
    data_source: str  # written into every row (override with --data-source)
    split: str | None  # the split read by default (None: every data file of the input)
    group: str  # text | image | video: the Table 1 group of an evaluation set, the branch of a training set
    role: str  # train | eval
    hub: str  # where the public copy lives (its layout is what the converter reads)


DATASETS: dict[str, Spec] = {
    # training sets, one per branch of the presets
    "dapo_math": Spec(text.verl_math, "text", None, "text", "train", "BytedTsinghua-SIA/DAPO-Math-17k"),
    "deepscaler": Spec(text.problem_answer, "text", None, "text", "train", "agentica-org/DeepScaleR-Preview-Dataset"),
    "math": Spec(text.problem_answer, "text", "train", "text", "train", "hendrycks MATH (e.g. MATH-lighteval)"),
    "geometry3k": Spec(image.geometry3k, "image", "train", "image", "train", "hiyouga/geometry3k"),
    "video_r1": Spec(video.video_r1, "video", None, "video", "train", "Video-R1/Video-R1-data"),
    # evaluation sets of Table 1 (the paper's group averages)
    "aime24": Spec(text.problem_answer, "aime24", None, "text", "eval", "HuggingFaceH4/aime_2024"),
    "aime25": Spec(text.problem_answer, "aime25", None, "text", "eval", "math-ai/aime25"),
    "hmmt25": Spec(text.problem_answer, "hmmt25", None, "text", "eval", "MathArena/hmmt_feb_2025"),
    "math500": Spec(text.problem_answer, "math500", "test", "text", "eval", "HuggingFaceH4/MATH-500"),
    "minerva_math": Spec(text.problem_answer, "minerva_math", "test", "text", "eval", "math-ai/minervamath"),
    "mmmu": Spec(image.mmmu, "mmmu", "validation", "image", "eval", "MMMU/MMMU"),
    "mmmu_pro": Spec(image.mmmu, "mmmu_pro", "test", "image", "eval", "MMMU/MMMU_Pro"),
    "mathvista": Spec(image.mathvista, "mathvista", "testmini", "image", "eval", "AI4Math/MathVista"),
    "mathvision": Spec(image.mathvision, "mathvision", "test", "image", "eval", "MathLLMs/MathVision"),
    "zerobench": Spec(
        image.zerobench, "zerobench", "zerobench_subquestions", "image", "eval", "jonathan-roberts1/zerobench"
    ),  # fmt: skip
    "wemath": Spec(image.wemath, "wemath", "testmini", "image", "eval", "We-Math/We-Math"),
    "mathverse": Spec(image.mathverse, "mathverse", "testmini", "image", "eval", "AI4Math/MathVerse"),
    "mvbench": Spec(video.mvbench, "mvbench", None, "video", "eval", "OpenGVLab/MVBench"),
    "videomathqa": Spec(video.videomathqa, "videomathqa", "test", "video", "eval", "MBZUAI/VideoMathQA"),
}

GROUPS = ("image", "text", "video")  # Table 1's column order of the averages


def benchmarks(group: str | None = None) -> list[str]:
    """The evaluation sets, in Table 1's order, optionally of one group."""
    return [n for n, s in DATASETS.items() if s.role == "eval" and (group is None or s.group == group)]
