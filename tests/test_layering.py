"""Layers point one way: `recipe` may import `copd` and `verl_patches`; those two never import `recipe`.

Read from the source (every import statement, also the ones inside functions), so a lazy upward import fails too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"copd": ("recipe",), "verl_patches": ("recipe",)}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_the_recipe(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "upward imports: " + "; ".join(bad)


def test_verl_patches_tests_do_not_import_the_recipe():
    bad = []
    for path in sorted((ROOT / "tests" / "verl_patches").rglob("*.py")):
        bad += [f"{path.name}:{line} {m}" for line, m in _imported_modules(path) if m.split(".")[0] == "recipe"]
    assert not bad, "; ".join(bad)
