"""The design's import arrows (design.md "Layers"), checked on the source with ``ast``.

Every ``import``/``from ... import`` counts, wherever it is (module top, function body,
``if TYPE_CHECKING:``): a lazy import still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nfbuilder"
ROOT_API = "nfbuilder"  # ``import nfbuilder`` re-exports the dsl: it counts as the dsl

# layer -> the only layers it may import
ONLY = {
    "topology": {"topology"},
    "dsl": {"dsl", "codec", "records"},
    "plan": {"plan", "topology"},
    "emit": {"emit", "plan", "topology"},
    # the loader resolves the configs that read the command line (dsl.args)
    "loader": {"loader", "topology", "dsl"},
    "codec": {"codec"},
    "records": {"records"},
    "_proto": {"_proto"},
}
# layer -> layers it must never import
NEVER = {
    "runtime": {"dsl", ROOT_API, "emit", "local", "cli"},
    "local": {"dsl", ROOT_API, "cli"},
    # the in-process harness runs the runtime's core; it must not need the servers' neighbours
    "testing": {"dsl", ROOT_API, "emit", "local", "cli"},
    "_harness": {"dsl", ROOT_API, "emit", "local", "cli"},
}


def layer_of_module(path: Path) -> str:
    """``nfbuilder/plan/graph.py`` -> ``plan``; ``nfbuilder/loader.py`` -> ``loader``."""
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return ROOT_API if rel.stem == "__init__" else rel.stem


def is_subpackage_or_module(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def package_of(path: Path) -> list[str]:
    """Dotted package parts of the module at ``path`` (for relative imports)."""
    # nfbuilder/plan/x.py and nfbuilder/plan/__init__.py both resolve "." to nfbuilder.plan
    return ["nfbuilder", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]


def imported_layers(path: Path, source: str) -> list[tuple[int, str, str]]:
    """(line, import as written, layer imported) for each import of nfbuilder in ``source``,
    the text of the module at ``path``."""
    tree = ast.parse(source, str(path))
    found: list[tuple[int, str, str]] = []

    def add(line: int, text: str, dotted: str, names: list[str]) -> None:
        parts = dotted.split(".")
        if parts[0] != "nfbuilder":
            return
        if len(parts) > 1:
            found.append((line, text, parts[1]))
            return
        for name in names or [""]:  # ``from nfbuilder import plan`` imports the plan layer
            found.append((line, text, name if is_subpackage_or_module(name) else ROOT_API))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, f"import {alias.name}", alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            module = node.module or ""
            if node.level:
                base = package_of(path)
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
            add(node.lineno, text, module, names)
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def violations(path: Path, source: str | None = None) -> list[str]:
    """One line per import of ``path`` (its text, or ``source`` as if it were) that crosses."""
    layer = layer_of_module(path)
    out = []
    text_of_module = path.read_text() if source is None else source
    for line, text, target in imported_layers(path, text_of_module):
        if layer in ONLY and target not in ONLY[layer]:
            allowed = ", ".join(sorted(ONLY[layer]))
            out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r} — {layer} may import "
                       f"only {allowed} of nfbuilder, not {target}")
        elif layer in NEVER and target in NEVER[layer]:
            out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r} — {layer} must never "
                       f"import {target}")
    return out


def test_every_layer_is_found() -> None:
    layers = {layer_of_module(p) for p in modules()}
    assert set(ONLY) | {"dsl", "runtime"} <= layers, layers


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_design_arrows(path: Path) -> None:
    problems = violations(path)
    assert not problems, "imports crossing the design's layers:\n" + "\n".join(problems)


# ------------------------------------------------------------ the checker itself


@pytest.mark.parametrize(
    "rel, source, expected",
    [
        ("plan/x.py", "from nfbuilder.emit.manifest import emit\n",
         "plan may import only plan, topology of nfbuilder, not emit"),
        ("emit/x.py", "def f():\n    from nfbuilder import computation\n",
         "emit may import only emit, plan, topology of nfbuilder, not nfbuilder"),
        ("emit/x.py", "from ..dsl import builder\n", "not dsl"),
        ("topology.py", "import nfbuilder.codec\n", "topology may import only topology"),
        ("runtime/x.py", "from nfbuilder import cli\n", "runtime must never import cli"),
        ("local/x.py", "from nfbuilder.dsl.errors import WallarooParameterError\n",
         "local must never import dsl"),
    ],
)
def test_checker_reports_module_and_import(rel: str, source: str, expected: str) -> None:
    # The source is parsed as if it lived at nfbuilder/<rel>; nothing is written.
    problems = violations(PACKAGE / rel, source)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"nfbuilder/{rel}:")
    assert expected in problems[0]
    assert source.strip().splitlines()[-1].strip() in problems[0]


def test_checker_accepts_allowed_imports() -> None:
    source = "from nfbuilder.plan import plan\nfrom . import names\nimport nfbuilder.topology\n"
    assert violations(PACKAGE / "plan" / "x.py", source) == []
