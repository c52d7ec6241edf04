"""The floors of the package, checked on the source: no import runs from a lower floor to a higher
one, and no module grows past ``MAX_LINES`` without saying why at its top.

Floors, lowest first (docs/ARCHITECTURE.md): the top-level modules (checkpoint, decision, files,
taxonomy, models, ood, ...) and ``data`` -> ``inference`` -> ``evaluation`` -> ``export`` ->
``training`` -> ``site`` -> ``commands`` (and ``cli``); ``serve`` sits beside ``site`` and only they
and ``commands`` may import it. Every import counts, also one inside a function (those run too, just
later). The Rooms table of docs/ARCHITECTURE.md must say the same as ``FORBIDDEN``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "wastenet"
MAX_LINES = 450
#: A module longer than MAX_LINES says why in its docstring's first paragraph, on a line starting so.
LONG_MARKER = "Long because:"

#: what each floor may not import (wastenet sub-packages)
FORBIDDEN = {
    "base": {"data", "inference", "evaluation", "export", "training", "serve", "site", "commands"},
    "data": {"inference", "evaluation", "export", "training", "serve", "site", "commands"},
    "inference": {"evaluation", "export", "training", "serve", "site", "commands"},
    "evaluation": {"export", "training", "serve", "site", "commands"},
    "training": {"serve", "site", "commands"},
    "export": {"training", "serve", "site", "commands"},
    "serve": {"training", "commands"},   # it runs an adaptation as a process (`wastenet adapt --from-log`)
    "site": {"commands"},                # the site loop: versions, and learning from the log (above training)
}
#: top-level modules that are not on the base floor: the entry points and the package's lazy API
ENTRY_POINTS = {"__init__", "__main__", "cli"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _floor(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        return None if rel.stem in ENTRY_POINTS else "base"
    return rel.parts[0]


def _dotted(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ["wastenet", *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, function bodies included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path)[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from wastenet import training` imports a sub-package too
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if module == "wastenet"]
    return found


def floor_violations(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        floor = _floor(path)
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] != "wastenet" or len(parts) < 2:
                continue
            target = parts[1]
            rel = path.relative_to(SRC)
            if target == "commands" and rel.parts[0] != "commands" and rel.stem != "cli":
                out.append(f"{rel}:{line} imports {module} (only cli and commands/ import commands/)")
            elif floor in FORBIDDEN and target in FORBIDDEN[floor]:
                out.append(f"{rel}:{line} imports {module} ({floor} is below {target})")
    return out


def long_modules(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        first = doc.split("\n\n")[0]
        if not any(line.strip().startswith(LONG_MARKER) for line in first.splitlines()):
            out.append(f"{path.relative_to(SRC)}: {n} lines, and its docstring's first paragraph has no "
                       f"'{LONG_MARKER}' line")
    return out


def test_no_import_runs_up_a_floor():
    bad = floor_violations(_modules())
    assert not bad, "imports from a lower floor to a higher one:\n" + "\n".join(bad)


#: Long modules still to split (issue 20): each entry goes when its module is split or says why.
#: A module on this list that is no longer long fails the test below, so the list only shrinks.
STILL_TO_SPLIT: set[str] = set()


def test_no_module_is_long_without_saying_why():
    bad = long_modules(_modules())
    named = {b.split(":")[0] for b in bad}
    assert named <= STILL_TO_SPLIT, "\n".join(b for b in bad if b.split(":")[0] not in STILL_TO_SPLIT)
    assert not STILL_TO_SPLIT - named, f"no longer long, drop from STILL_TO_SPLIT: {sorted(STILL_TO_SPLIT - named)}"


def private_imports(paths: list[Path]) -> list[str]:
    """``from wastenet.X import _name``: a module reaching into another one's private helpers."""
    out = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("wastenet")):
                out += [f"{path.relative_to(SRC)}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


#: Modules that still import another module's private helpers (owned by other rooms): the list only shrinks.
STILL_PRIVATE: set[str] = set()


def test_no_module_imports_another_ones_private_helpers():
    named = {b.split(":")[0] for b in private_imports(_modules())}
    assert named <= STILL_PRIVATE, "\n".join(b for b in private_imports(_modules()) if b.split(":")[0] not in STILL_PRIVATE)
    assert not STILL_PRIVATE - named, f"no longer private, drop from STILL_PRIVATE: {sorted(STILL_PRIVATE - named)}"


DOC = SRC.parents[1] / "docs" / "ARCHITECTURE.md"
ROOMS = set(FORBIDDEN) | {"commands"}


def documented_rooms(text: str) -> dict[str, set[str]]:
    """The Rooms table of docs/ARCHITECTURE.md: ``{room: rooms it may import}``."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].strip("`") in ROOMS:
            out[cells[0].strip("`")] = ROOMS if cells[2] == "every room" else {c.strip() for c in cells[2].split(",")}
    return out


def test_the_architecture_page_says_what_each_room_may_import():
    rooms = documented_rooms(DOC.read_text(encoding="utf-8"))
    assert set(rooms) == ROOMS
    for room, may in rooms.items():
        allowed = ROOMS - FORBIDDEN.get(room, set()) - ({"commands"} if room != "commands" else set())
        assert may | {room} == allowed, f"{room}: the page says {sorted(may)}, FORBIDDEN allows {sorted(allowed)}"


# ---------------------------------------------------------------- the checks can fail
def _write(tmp: Path, rel: str, text: str) -> Path:
    p = tmp / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_the_floor_check_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    inside = _write(tmp_path, "inference/a.py", "def f():\n    from wastenet.training.loop import train\n")
    relative = _write(tmp_path, "data/b.py", "from ..evaluation import metrics\n")
    package = _write(tmp_path, "evaluation/c.py", "from wastenet import training\n")
    command = _write(tmp_path, "serve/d.py", "import wastenet.commands.serve\n")
    fine = _write(tmp_path, "training/e.py", "from wastenet.evaluation import runner\nimport numpy\n")
    bad = floor_violations([inside, relative, package, command, fine])
    assert [b.split(":")[0] for b in bad] == ["inference/a.py", "data/b.py", "evaluation/c.py", "serve/d.py"]


def test_the_length_check_takes_a_reason_only_in_the_first_paragraph(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    body = "x = 1\n" * MAX_LINES
    later = _write(tmp_path, "a.py", f'"""A module.\n\n{LONG_MARKER} one state machine.\n"""\n{body}')
    first = _write(tmp_path, "b.py", f'"""A module.\n{LONG_MARKER} one state machine.\n\nMore."""\n{body}')
    silent = _write(tmp_path, "c.py", f'"""A module."""\n{body}')
    short = _write(tmp_path, "d.py", '"""A module."""\nx = 1\n')
    assert [b.split(":")[0] for b in long_modules([later, first, silent, short])] == ["a.py", "c.py"]


def test_the_private_import_check_sees_private_names_only(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    bad = _write(tmp_path, "inference/a.py", "from wastenet.inference.predictor import Classifier, _to_pil\n")
    fine = _write(tmp_path, "inference/b.py", "from wastenet.errors import ConfigError as _E\nfrom __future__ import annotations\n")
    assert [b.split(":")[0] for b in private_imports([bad, fine])] == ["inference/a.py"]


@pytest.mark.parametrize("floor,target", [("data", "training"), ("inference", "evaluation"),
                                          ("evaluation", "training"), ("base", "inference")])
def test_the_floors_forbid_what_the_issue_names(floor, target):
    assert target in FORBIDDEN[floor]
