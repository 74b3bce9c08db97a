"""The import graph the architecture contracts constrain, as text: package-level edges and any cycle.

    .venv/bin/python benchmarks/import_graph.py        (or `make import-graph`)

Built with grimp, the graph library import-linter's contracts (pyproject.toml [tool.importlinter]) run
on, so it counts what they count: every import statement, lazy and `if TYPE_CHECKING:` ones included.
Prints, with the number of module-to-module imports behind each edge:
1. the edges between the product's top-level modules and subpackages (echolm_middleware.doors -> .core);
2. the edges from the lab and from integrations/ into the product;
3. the third-party packages each part of the product imports;
4. cycles: between sibling modules at every depth of the product (what the acyclic_siblings contract
   checks), and between single modules (a chain of imports that comes back to where it started).
Exits 1 when there is a cycle.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import grimp

PRODUCT, LAB, CHECKOUT_NAMES = "echolm_middleware", "echolm_lab", "integrations"
# integrations/ is not installed (the wheel leaves it out): grimp finds it from the checkout's root, as
# `lint-imports` does from the directory it runs in.
CHECKOUT = Path(__file__).resolve().parents[1]


def part_of(module: str) -> str:
    """The top-level module or subpackage a module belongs to (`echolm_middleware.core.engine` -> `...core`)."""
    return ".".join(module.split(".")[:2])


def is_ours(module: str) -> bool:
    return module.split(".")[0] in {PRODUCT, LAB, CHECKOUT_NAMES}


def part_edges(graph: grimp.ImportGraph) -> Counter[tuple[str, str]]:
    """(importer part, imported part) -> how many module-to-module imports make the edge."""
    edges: Counter[tuple[str, str]] = Counter()
    for module in graph.modules:
        if not is_ours(module) or module in {PRODUCT, LAB, CHECKOUT_NAMES}:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if is_ours(imported) and part_of(imported) != part_of(module):
                edges[part_of(module), part_of(imported)] += 1
    return edges


def third_party_by_part(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    """Each product part -> the packages outside ours and outside the standard library that it imports."""
    found: dict[str, set[str]] = {}
    for module in graph.find_descendants(PRODUCT):
        external = {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if not is_ours(imported) and imported not in sys.stdlib_module_names
        }
        found.setdefault(part_of(module), set()).update(external)
    return found


def sibling_cycles(graph: grimp.ImportGraph) -> dict[str, set[tuple[str, str]]]:
    """Package -> the imports grimp would remove to make its children acyclic (none when it is already)."""
    packages = [PRODUCT, *sorted(m for m in graph.find_descendants(PRODUCT) if graph.find_children(m))]
    return {
        package: breakers
        for package in packages
        if len(graph.find_children(package)) >= 2 and (breakers := graph.nominate_cycle_breakers(package))
    }


def module_cycles(graph: grimp.ImportGraph) -> set[tuple[str, ...]]:
    """Each chain of product imports that returns to its first module, shortest first per module."""
    cycles: set[tuple[str, ...]] = set()
    for module in graph.find_descendants(PRODUCT) | {PRODUCT}:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycle = (module, *back)
                start = cycle.index(min(cycle[:-1]))
                cycles.add(cycle[start:-1] + cycle[:start] + (cycle[start],))
    return cycles


def lines(title: str, rows: Iterable[str]) -> list[str]:
    rows = list(rows)
    return [title, *(f"  {row}" for row in rows or ["(none)"]), ""]


def main() -> int:
    sys.path.insert(0, str(CHECKOUT))
    graph = grimp.build_graph(PRODUCT, LAB, CHECKOUT_NAMES, include_external_packages=True)
    edges = part_edges(graph)
    third_party = third_party_by_part(graph)
    siblings = sibling_cycles(graph)
    modules = module_cycles(graph)

    def edge_rows(importer_root: str) -> list[str]:
        return [
            f"{importer} -> {imported} ({count})"
            for (importer, imported), count in sorted(edges.items())
            if importer.split(".")[0] == importer_root and imported.split(".")[0] == PRODUCT
        ]

    out = [f"{len(graph.modules)} modules (third-party packages counted once each)", ""]
    out += lines("Product: edges between its parts (module imports behind each)", edge_rows(PRODUCT))
    out += lines("Lab -> product", edge_rows(LAB))
    out += lines("integrations/ -> product", edge_rows(CHECKOUT_NAMES))
    lab_from_product = [f"{a} -> {b}" for (a, b) in sorted(edges) if a.startswith(PRODUCT) and b.startswith(LAB)]
    out += lines("Product -> lab (must stay empty)", lab_from_product)
    out += lines(
        "Third-party packages each part of the product imports (lazy imports included; what"
        " backends._lazy.require('name', extra) loads is a string to importlib, not an import, and is not here)",
        (f"{part}: {', '.join(sorted(names)) or '-'}" for part, names in sorted(third_party.items())),
    )
    out += lines(
        "Cycles between sibling modules (imports that would break them)",
        (f"{package}: {sorted(breakers)}" for package, breakers in sorted(siblings.items())),
    )
    out += lines("Cycles between single modules", (" -> ".join(cycle) for cycle in sorted(modules)))
    print("\n".join(out).rstrip())
    return 1 if siblings or modules else 0


if __name__ == "__main__":
    sys.exit(main())
