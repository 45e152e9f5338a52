"""Who distils from whom in Phase II: (student, teacher) edges between branches.

"pair" is the paper's K=2 mutual OPD; "hub" is its K>2 hub-and-spoke (the hub learns from every spoke, each
spoke from the hub only); "all" is full pairwise distillation; "edges" lists the edges explicitly (e.g. a
one-way static OPD baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

KINDS = ("pair", "hub", "all", "edges")

Edge = tuple[str, str]  # (student, teacher)


def pairs(
    branches: Sequence[str],
    kind: str,
    hub: str | None = None,
    edges: Sequence[Sequence[str]] | None = None,
) -> list[Edge]:
    """(student, teacher) edges of a topology, in a deterministic order that follows `branches`."""
    names = list(branches)
    if kind == "pair":
        if len(names) != 2:
            raise ValueError(f"topology 'pair' needs exactly 2 branches, got {len(names)}: use 'hub' or 'all' for K>2")
        return [(names[0], names[1]), (names[1], names[0])]
    if kind == "hub":
        if hub not in names:
            raise ValueError(f"hub={hub!r} is not a branch: set hub to one of {names}")
        spokes = [b for b in names if b != hub]
        return [(hub, s) for s in spokes] + [(s, hub) for s in spokes]
    if kind == "all":
        return [(s, t) for s in names for t in names if s != t]
    if kind == "edges":
        if edges is None:
            raise ValueError("topology 'edges' needs edges: pass a list of [student, teacher] pairs")
        return [_edge(e) for e in edges]
    raise ValueError(f"topology kind={kind!r} is unknown: use one of {KINDS}")


def teachers_of(edges: Sequence[Edge], student: str) -> list[str]:
    """Teachers of `student`, in edge order."""
    return [t for s, t in edges if s == student]


def students_of(edges: Sequence[Edge], teacher: str) -> list[str]:
    """Students taught by `teacher`, in edge order."""
    return [s for s, t in edges if t == teacher]


def validate(branches: Sequence[str], edges: Sequence[Edge], frozen: Sequence[str] = ()) -> None:
    """Raise ValueError unless `edges` is a sound topology over `branches`.

    Checks: unique branch names, frozen names exist, edge names exist, no self-edge, no duplicate edge,
    frozen branches only as teachers (they are never updated), and with K > 1 every branch is on an edge.
    """
    names = list(branches)
    if len(set(names)) != len(names):
        raise ValueError(f"branch names repeat in {names}: give every branch a unique name")
    unknown_frozen = sorted(set(frozen) - set(names))
    if unknown_frozen:
        raise ValueError(f"frozen branches {unknown_frozen} are not branches: use names from {names}")
    seen: set[Edge] = set()
    for student, teacher in edges:
        for name in (student, teacher):
            if name not in names:
                raise ValueError(f"edge ({student!r}, {teacher!r}) names unknown branch {name!r}: use one of {names}")
        if student == teacher:
            raise ValueError(f"self-edge ({student!r}, {teacher!r}): a branch cannot distil from itself")
        if (student, teacher) in seen:
            raise ValueError(f"duplicate edge ({student!r}, {teacher!r}): list each (student, teacher) once")
        if student in frozen:
            raise ValueError(f"frozen branch {student!r} is a student in ({student!r}, {teacher!r}): it can only teach")
        seen.add((student, teacher))
    on_edge = {name for edge in edges for name in edge}
    isolated = [b for b in names if b not in on_edge]
    if len(names) > 1 and isolated:
        raise ValueError(f"branches {isolated} are on no edge: add an edge for each or drop the branch")


def _edge(edge: Sequence[str]) -> Edge:
    if isinstance(edge, str) or len(edge) != 2:
        raise ValueError(f"edge {edge!r} must be a [student, teacher] pair")
    return (str(edge[0]), str(edge[1]))
