"""The built-in scorers on the benchmarks' own answer formats, and the router that picks them."""

import pytest

from recipe.copd import reward, scorers

# (response, ground truth, correct?): MATH-500 / AIME / Minerva answer styles
MATH = [
    ("so the answer is \\boxed{204}", "204", True),  # AIME: integer 0-999
    ("$\\boxed{\\dfrac{14}{3}}$", "\\frac{14}{3}", True),  # MATH-500: \dfrac vs \frac
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # MATH-500 polar coordinates
    ("\\boxed{[-2, 7]}", "[-2,7]", True),  # interval
    ("\\boxed{(-2, 7]}", "[-2,7]", False),  # a different interval
    ("\\boxed{\\frac12}", "0.5", True),  # fraction vs decimal
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", True),  # set order
    ("\\boxed{3}", "4", False),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),  # MATH-500 keeps some answers as text
    ("\\boxed{6.5 \\times 10^{-27}}", "6.5e-27", True),  # Minerva: scientific notation
    ("\\boxed{6.6 \\times 10^{-27}}", "6.5e-27", False),
    ("\\boxed{1,000}", "1000", True),  # thousands separator
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("step...\nAnswer: 34", "34", True),  # DAPO-Math's "Answer: $Answer" line
    ("The final answer is $\\frac{1}{3}$.", "1/3", True),
    ("<think>first \\boxed{5}</think> so \\boxed{6}", "6", True),  # the think block's draft is ignored
    ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}", False),  # unbalanced: cut off mid-answer
]


@pytest.mark.parametrize("response,gold,ok", MATH)
def test_math(response, gold, ok):
    assert scorers.score("math500", response, gold) == float(ok)


OPTIONS = ["Rocket launch", "Missile test", "Air show", "Parade"]
CHOICE = [
    ("(B)", True), ("B.", True), ("B", True), ("b", True), ("The answer is B", True), ("\\boxed{B}", True),
    ("<think>A?</think><answer>B</answer>", True),  # Video-R1's answer tag
    ("Missile test", True),  # the option text
    ("Answer: (B) Missile test", True), ("I think it is B) Missile test", True),
    ("The answer is B because A is wrong", True), ("Option B", True),
    ("C", False), ("The answer is (A).", False), ("Rocket launch", False), ("", False),
]  # fmt: skip


@pytest.mark.parametrize("response,ok", CHOICE)
def test_choice(response, ok):
    assert scorers.score("mvbench", response, "B", {"answer_type": "choice", "choices": OPTIONS}) == float(ok)


NUMERIC = [  # MathVista: precision = decimal places of float answers; integer answers compared as integers
    ("\\boxed{1.23}", "1.2", 1, "float", True),
    ("\\boxed{1.3}", "1.2", 1, "float", False),
    ("\\boxed{3.0}", "3", None, "integer", True),
    ("\\boxed{3.5}", "3", None, "integer", False),
    ("The length is 12.5 cm", "12.5", 1, "float", True),
    ("<answer>3.50</answer>", "3.5", 2, "float", True),  # Video-R1 numerical
    ("\\boxed{45\\%}", "45", None, "integer", True),
]


@pytest.mark.parametrize("response,gold,precision,kind,ok", NUMERIC)
def test_numeric(response, gold, precision, kind, ok):
    info = {"answer_type": "numeric", "precision": precision, "numeric_kind": kind}
    assert scorers.score("mathvista", response, gold, info) == float(ok)


def test_text_answers_and_last_boxed():
    assert scorers.score("zerobench", "\\boxed{Blue car}", "blue car", {"answer_type": "text"}) == 1.0
    assert scorers.last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert scorers.last_boxed("no box") is None
    assert scorers.last_boxed("so $\\boxed 5$") == "5" and scorers.last_boxed("\\fbox{7} then {x}") == "7"


ZEROBENCH = [  # ZeroBench's own prompt: "give the final answer in curly braces, like this: {final answer}"
    ("Counting the rows: 3 x 4. So the answer is {12}.", "12", True),
    ("x = \\frac{1}{2}, therefore {0.5}", "1/2", True),  # \frac's arguments are not the answer
    ("{Blue car}", "blue car", True),
    ("\\boxed{7}, not {8}", "7", True),  # a boxed answer wins
    ("we get \\frac{3}{4}", "3/4", False),  # only LaTeX arguments: no braced answer, and no boxed one
    ("<think>{1}</think> so {2}", "2", True),
    ("a^{2} and b_{3}", "3", False),
]


@pytest.mark.parametrize("response,gold,ok", ZEROBENCH)
def test_zerobench_curly_brace_answers(response, gold, ok):
    assert scorers.score("zerobench", response, gold, {"answer_type": "text" if "car" in gold else "math"}) == ok


def test_every_known_source_has_a_kind_and_unknown_sources_fail_loudly():
    for source in ("text", "image", "video"):
        assert source in scorers.DEFAULT_KIND
    with pytest.raises(KeyError, match="no built-in scorer"):
        scorers.score("nope", "\\boxed{1}", "1")


def test_router_prefers_routes_then_built_ins_then_verl(tmp_path):
    route = tmp_path / "r.py"
    route.write_text("def compute_score(ds, s, gt, extra_info=None):\n    return 0.25\n")
    routes = {"text": {"path": str(route), "name": "compute_score"}}
    assert reward.compute_score("text", "\\boxed{1}", "1", None, routes=routes) == 0.25
    assert reward.compute_score("text", "\\boxed{1}", "1", None) == 1.0  # built-in math scorer
    assert reward.compute_score("image", "\\boxed{B}", "B", {"answer_type": "choice"}) == 1.0
    assert reward.compute_score("openai/gsm8k", "#### 4", "4") == 1.0  # verl's default_compute_score
