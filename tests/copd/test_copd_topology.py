"""Topologies of Phase II: (student, teacher) edges and their validation."""

import pytest

from copd.topology import pairs, students_of, teachers_of, validate


def test_pair_is_both_directions():
    assert pairs(["text", "image"], "pair") == [("text", "image"), ("image", "text")]


def test_hub_learns_from_every_spoke_and_spokes_from_hub_only():
    edges = pairs(["image", "text", "video"], "hub", hub="text")
    assert edges == [("text", "image"), ("text", "video"), ("image", "text"), ("video", "text")]
    assert teachers_of(edges, "text") == ["image", "video"]
    assert teachers_of(edges, "video") == ["text"]
    assert students_of(edges, "text") == ["image", "video"]
    assert students_of(edges, "image") == ["text"]
    validate(["image", "text", "video"], edges)


def test_all_is_every_ordered_pair():
    edges = pairs(["a", "b", "c"], "all")
    assert edges == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert len(edges) == 3 * 2


def test_explicit_edges_keep_order():
    assert pairs(["s", "t"], "edges", edges=[["s", "t"]]) == [("s", "t")]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pairs(["a", "b", "c"], "pair"), "exactly 2"),
        (lambda: pairs(["a", "b"], "hub", hub="z"), "hub='z'"),
        (lambda: pairs(["a", "b"], "hub"), "hub=None"),
        (lambda: pairs(["a", "b"], "edges"), "needs edges"),
        (lambda: pairs(["a", "b"], "edges", edges=[["a", "b", "c"]]), "pair"),
        (lambda: pairs(["a", "b"], "ring"), "unknown"),
    ],
)
def test_pairs_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("branches", "edges", "frozen", "message"),
    [
        (["a", "b"], [("a", "a"), ("b", "a")], (), "self-edge"),
        (["a", "b"], [("a", "z")], (), "unknown branch 'z'"),
        (["a", "b"], [("a", "b"), ("a", "b")], (), "duplicate edge"),
        (["a", "b", "c"], [("a", "b")], (), r"\['c'\] are on no edge"),
        (["a", "a"], [], (), "repeat"),
        (["a", "b"], [("b", "a")], ("z",), "not branches"),
        (["a", "b"], [("a", "b"), ("b", "a")], ("b",), "frozen branch 'b' is a student"),
    ],
)
def test_validate_errors(branches, edges, frozen, message):
    with pytest.raises(ValueError, match=message):
        validate(branches, edges, frozen=frozen)


def test_validate_accepts_frozen_teacher_and_single_branch():
    validate(["student", "expert"], [("student", "expert")], frozen=("expert",))
    validate(["solo"], [])  # K = 1: nothing to reach
