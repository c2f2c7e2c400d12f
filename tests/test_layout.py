"""The layout's one rule: imports run one way, from jobs/ down through
generation and training, to model, to data, to the floor (charlm's top-level
modules); nothing imports upward or sideways between training and generation."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each part of charlm may import from charlm, besides itself.
MAY_IMPORT = {
    "floor": set(),
    "data": {"floor"},
    "model": {"floor", "data"},
    "training": {"floor", "data", "model"},
    "generation": {"floor", "data", "model"},
    "evaluation": {"floor", "data", "model"},
    "tuning": {"floor", "data", "model", "training"},
    "cluster": {"floor", "data", "model"},
}


def part_of(module: str) -> str:
    """charlm.x (a top-level module) is the floor; charlm.<folder>.x its folder."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 else "floor"


def charlm_imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlm"):
            if node.module in ("charlm",) or node.module.count(".") == 1 and \
                    os.path.isdir(os.path.join(ROOT, *node.module.split("."))):
                found |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("charlm")}
    return found


def modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "charlm")):
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
                out[rel.replace(os.sep, ".")] = os.path.join(folder, name)
    return out


def test_imports_run_one_way() -> None:
    wrong = []
    for module, path in modules().items():
        part = part_of(module)
        for target in charlm_imports(path):
            other = part_of(target) if target.count(".") >= 1 else "floor"
            if target == "charlm" or other == part:
                continue
            if other not in MAY_IMPORT[part]:
                wrong.append(f"{module} ({part}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_every_folder_is_a_known_part() -> None:
    folders = {name for name in os.listdir(os.path.join(ROOT, "charlm"))
               if os.path.isfile(os.path.join(ROOT, "charlm", name, "__init__.py"))}
    assert folders == set(MAY_IMPORT) - {"floor"}
