"""Shrunk fixtures of the presets' three data sources, made offline, in verl parquet (``recipe.copd.data``'s rows).

- ``text``: one-line arithmetic ("3+4=?"), a math answer (scored by ``recipe.copd.scorers``' math checker).
- ``image``: a 64 x 64 picture of 1-4 drawn shapes of one colour; "how many?" (math answer).
- ``video``: a 4-frame 64 x 64 clip of a square of one colour moving right; "which colour?" as a 4-way multiple
  choice (letter answer).

Each row has its ``data_source`` (``text`` / ``image`` / ``video``, the presets' names) and a verifiable answer.
Images are PNG bytes (``{"bytes": ...}``, as ``recipe.copd.data`` writes them); a clip is a list of frames as
``data:image/png;base64`` strings, so each parquet file is self-contained. Pixel bounds travel with the media so
verl's vision utilities keep the tiny sizes (4 image tokens per picture, 8 video tokens per clip with
``copd.tiny.qwen3vl``). Everything is a function of the seed.
"""

from __future__ import annotations

import base64
import io
import os
import random

from recipe.copd.data.common import info, make_row, write_parquet

SOURCES = ("text", "image", "video")
SIZE = 64  # pixels per side
PIXELS = {"min_pixels": SIZE * SIZE, "max_pixels": SIZE * SIZE}  # 64 x 64 stays 64 x 64 (patch 16, merge 2)
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
LETTERS = "ABCD"
ANSWER_HINT = "Answer in \\boxed{}."


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def text_row(rng: random.Random, i: int, split: str) -> dict:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.choice("+*")
    answer = a + b if op == "+" else a * b
    return make_row("text", "math", f"{a}{op}{b}=? {ANSWER_HINT}", str(answer), info("math", i, split))


def shapes_image(rng: random.Random, count: int, colour: str):
    """``count`` non-overlapping filled shapes (circle or square) of ``colour`` on white, one per quadrant."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    half = SIZE // 2
    for q in rng.sample(range(4), count):
        x0, y0 = (q % 2) * half + rng.randint(2, 8), (q // 2) * half + rng.randint(2, 8)
        box = (x0, y0, x0 + 18, y0 + 18)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def image_row(rng: random.Random, i: int, split: str) -> dict:
    count, colour = rng.randint(1, 4), rng.choice(list(COLOURS))
    png = _png(shapes_image(rng, count, colour))
    row = make_row("image", "image", f"How many shapes? {ANSWER_HINT}", str(count), info("math", i, split), [png])
    row["images"] = [{"bytes": png, **PIXELS}]
    return row


def clip_frames(rng: random.Random, colour: str, n_frames: int = 4) -> list[str]:
    """A square of ``colour`` moving right over ``n_frames`` frames, as base64 PNG data URLs."""
    from PIL import Image, ImageDraw

    y, frames = rng.randint(4, SIZE - 24), []
    for t in range(n_frames):
        image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
        x = 4 + t * (SIZE - 28) // max(1, n_frames - 1)
        ImageDraw.Draw(image).rectangle((x, y, x + 20, y + 20), fill=COLOURS[colour])
        frames.append("data:image/png;base64," + base64.b64encode(_png(image)).decode())
    return frames


def video_row(rng: random.Random, i: int, split: str) -> dict:
    names = list(COLOURS)
    colour = rng.choice(names)
    options = " ".join(f"({LETTERS[k]}) {n}" for k, n in enumerate(names))
    video = {"video": clip_frames(rng, colour), "sample_fps": 2.0, **PIXELS}
    extra = info("choice", i, split, names)
    answer = LETTERS[names.index(colour)]
    return make_row("video", "video", f"Colour? {options} {ANSWER_HINT}", answer, extra, videos=[video])


ROW = {"text": text_row, "image": image_row, "video": video_row}


def write_fixtures(out_dir: str, n_train: int = 16, n_val: int = 4, seed: int = 0) -> dict[str, dict[str, str]]:
    """Write ``{source}_{train,val}.parquet`` for every source under ``out_dir``; returns source -> split -> path.

    The presets read ``${COPD_DATA}/{source}_{split}.parquet``: point ``COPD_DATA`` at ``out_dir``.
    """
    paths = {}
    for k, source in enumerate(SOURCES):
        paths[source] = {}
        for split, n in (("train", n_train), ("val", n_val)):
            rng = random.Random(f"{seed}/{source}/{split}/{k}")
            path = os.path.join(out_dir, f"{source}_{split}.parquet")
            write_parquet([ROW[source](rng, i, split) for i in range(n)], path)
            paths[source][split] = path
    return paths
