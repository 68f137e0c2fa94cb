"""The layout stays livable: DESIGN.md names real paths and every module, and no module grows past
MAX_LINES (split by job, re-exporting public names where they are imported today)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "DESIGN.md"
MAX_LINES = 600
# Package files that only gather names or start a module; DESIGN.md names their folder's modules.
UNNAMED = {"__init__.py", "__main__.py"}


def _modules() -> dict[str, int]:
    """``{path relative to the repo: lines}`` of every module of the jaxtune package."""
    return {p.relative_to(REPO).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted((REPO / "jaxtune").rglob("*.py"))}


def _named_paths(text: str) -> set[str]:
    """Paths DESIGN.md names: backticked ``a/b.py``, ``folder/``, ``x.md`` and bare ``*.py`` words."""
    quoted = {m for m in re.findall(r"`([\w./-]+)`", text) if "/" in m or re.search(r"\.(py|md|sh)$", m)}
    bare = set(re.findall(r"(?<![\w/.`])([\w/]+\.py)\b", text))
    return quoted | bare


def _exists(path: str) -> bool:
    """A path from the repository root, or a bare module name of the jaxtune package."""
    return (REPO / path).exists() or ("/" not in path and (REPO / "jaxtune" / path).exists())


def test_design_names_only_paths_that_exist():
    missing = sorted(p for p in _named_paths(DESIGN.read_text(encoding="utf-8")) if not _exists(p))
    assert not missing, f"DESIGN.md names {missing}, which do not exist: update DESIGN.md"


def test_design_names_every_module():
    text = DESIGN.read_text(encoding="utf-8")
    unnamed = sorted(p for p in _modules() if f"`{p}`" not in text
                     and not (Path(p).name in UNNAMED and p != "jaxtune/__init__.py"))
    assert not unnamed, (f"DESIGN.md does not say what {unnamed} hold(s): add one line each under "
                         "'Where each concept lives'")


def test_no_module_over_the_line_limit():
    too_long = {p: n for p, n in _modules().items() if n > MAX_LINES}
    assert not too_long, (f"module(s) over {MAX_LINES} lines: {too_long}; split each by job (see DESIGN.md), "
                          "re-exporting its public names where they are imported")

