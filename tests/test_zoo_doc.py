"""README's claim about the full-size model zoo is what docs/ZOO.md (written by ``python bench/zoo.py``) shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos")
ADASCALE = ("adascale_a", "adascale_l")


def zoo_cells() -> dict[tuple[str, str], str]:
    """(model, method) -> status of every full-size (224) cell in docs/ZOO.md."""
    cells = {}
    for line in (ROOT / "docs" / "ZOO.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) > 4 and parts[1] == "224":
            cells[(parts[0], parts[2])] = parts[3]
    return cells


def claim(cells: dict[tuple[str, str], str]) -> str:
    """The sentence README must contain, derived from the table."""
    families = list(dict.fromkeys(m for m, _ in cells))
    single = [f for f in families if all(cells.get((f, m)) == "ok" for m in SINGLE_PASS)]
    ada = [f for f in families if all(cells.get((f, m)) == "ok" for m in ADASCALE)]
    failed = sum(1 for s in cells.values() if s != "ok")
    return (f"At full size (224 × 224) docs/ZOO.md has {len(cells)} cells, {failed} failed: every single-pass "
            f"method ok on {len(single)} of {len(families)} families; AdaSCALE-A and -L ok on "
            f"{', '.join(ada) if ada else 'none'}.")


def test_readme_states_the_full_size_zoo_as_docs_zoo_shows_it() -> None:
    cells = zoo_cells()
    assert cells, "docs/ZOO.md has no full-size cell: run python bench/zoo.py"
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    assert claim(cells) in readme, claim(cells)


def test_the_claim_changes_when_a_cell_fails() -> None:
    cells = zoo_cells()
    broken = dict(cells)
    broken[next(iter(cells))] = "FAIL"
    assert claim(broken) != claim(cells)
