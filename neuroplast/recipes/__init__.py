"""The recipes installed with neuroplast: TOML files of ``neuroplast train`` options.

``neuroplast recipes`` lists them, ``neuroplast train --recipe NAME`` runs one (options typed
after it override it), and :func:`recipe_path` gives the file, to read or copy as the start of
one's own (``neuroplast train --config FILE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
"""The folder holding the installed ``<name>.toml`` recipe files."""


@dataclass(frozen=True)
class Recipe:
    """An installed recipe: its name (the file name without ``.toml``), file and summary."""

    name: str
    path: Path
    description: str


def recipe_names() -> list[str]:
    """The names of the installed recipes, sorted."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The file of the installed recipe ``name`` (``.toml`` may be given or left out).

    Raises ``ValueError`` naming the installed recipes when there is none of that name.
    """
    stem = name.removesuffix(".toml")
    if stem not in recipe_names():
        raise ValueError(f"unknown recipe '{name}'; installed recipes: "
                         f"{', '.join(recipe_names())} (`neuroplast recipes` describes them; "
                         "--config FILE runs a recipe file of your own)")
    return RECIPE_DIR / f"{stem}.toml"


def recipe_description(path: str | Path) -> str:
    """A recipe's one-line summary: the first sentence of the comment that opens the file.

    The sentence ends at the first ``.``, ``:`` or ``;`` followed by a space or the end,
    outside parentheses; a file that opens without a comment has an empty summary.
    """
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    depth = 0
    for index, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(depth - 1, 0)
        elif (depth == 0 and char in ".:;"
              and (index + 1 == len(text) or text[index + 1] == " ")):
            return text[:index]
    return text


def list_recipes() -> list[Recipe]:
    """Every installed recipe with its summary, sorted by name."""
    return [Recipe(name, RECIPE_DIR / f"{name}.toml",
                   recipe_description(RECIPE_DIR / f"{name}.toml")) for name in recipe_names()]
