"""The import graph of naiad/ keeps its layers: nothing imports upward, no circles.

The layer table is the one ARCHITECTURE.md shows (checked below too). Every
module of the package belongs to the layer of its longest matching entry; a
module may import modules of its own layer or of any layer below. Imports
made only for type annotations (under ``if TYPE_CHECKING:``) do not run and
are not counted; lazy imports inside functions are.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

# top to bottom; each entry is a module or a package (with everything under it)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("application", ("naiad", "naiad.__main__", "naiad.cli", "naiad.server", "naiad.embedded",
                     "naiad.tools", "naiad.ray")),
    ("frontends", ("naiad.frontends",)),
    ("data plane", ("naiad.dataplane",)),
    ("repository", ("naiad.repository",)),
    ("scheduling", ("naiad.scheduling",)),
    ("backends", ("naiad.backends",)),
    ("observability", ("naiad.observability",)),
    ("protocol", ("naiad.protocol",)),
    ("core", ("naiad.core", "naiad.options", "naiad.version")),
]

ROOT = Path(__file__).resolve().parents[1]


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "naiad":
                if module == "naiad" and best_len < len(prefix):
                    best, best_len = index, len(prefix)
                continue
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("naiad", exclude_type_checking_imports=True, cache_dir=None)


def _edges(graph) -> list[tuple[str, str]]:
    return sorted((importer, imported) for importer in graph.modules
                  for imported in graph.find_modules_directly_imported_by(importer))


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph.modules if layer_of(m) < 0)
    assert not unplaced, f"add these to the layer table (here and in ARCHITECTURE.md): {unplaced}"


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = []
    for importer, imported in _edges(graph):
        if layer_of(imported) < layer_of(importer):
            for d in graph.get_import_details(importer=importer, imported=imported):
                upward.append(f"{importer}:{d['line_number']} ({LAYERS[layer_of(importer)][0]}) "
                              f"imports {imported} ({LAYERS[layer_of(imported)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circles(graph):
    circles = []
    for importer, imported in _edges(graph):
        chain = graph.find_shortest_chain(importer=imported, imported=importer)
        if chain:
            circles.append(" -> ".join((importer,) + tuple(chain)))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_violations():
    """The rules above catch what they are meant to (a graph built by hand)."""
    g = grimp.ImportGraph()
    for m in ("naiad.core.model", "naiad.frontends.http", "naiad.scheduling.a",
              "naiad.scheduling.b"):
        g.add_module(m)
    g.add_import(importer="naiad.core.model", imported="naiad.frontends.http")
    g.add_import(importer="naiad.scheduling.a", imported="naiad.scheduling.b")
    g.add_import(importer="naiad.scheduling.b", imported="naiad.scheduling.a")
    edges = _edges(g)
    assert [e for e in edges if layer_of(e[1]) < layer_of(e[0])] == [
        ("naiad.core.model", "naiad.frontends.http")]
    assert g.find_shortest_chain(importer="naiad.scheduling.b", imported="naiad.scheduling.a")
    assert layer_of("naiad.core") == layer_of("naiad.options") == len(LAYERS) - 1
    assert layer_of("naiad") == 0 and layer_of("naiad.frontends.grpc") == 1


def test_architecture_md_shows_the_same_table():
    """ARCHITECTURE.md's layer table lists these layers, in this order, with these modules."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| *(\d+) *\| *([a-z ]+?) *\| *([^|]+?) *\|", text, re.M)
    documented = [(name, tuple(sorted(re.findall(r"`([\w.]+)`", mods))))
                  for _, name, mods in rows]
    assert documented == [(name, tuple(sorted(mods))) for name, mods in LAYERS]
