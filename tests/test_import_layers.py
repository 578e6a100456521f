"""The package's import graph points one way: no two modules import each other through any path
(function-local imports included), and no module imports from a layer above its own.

Layers, bottom to top (a module may import from its own layer or below):
errors -> utils -> config, structures -> modeling, data, evaluation -> checkpoint, analysis ->
export -> inference -> engine, api, io_video, benchmark. Imports under ``if TYPE_CHECKING:`` are
annotations only and never run, so they are not edges.
"""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "detkit"

LAYERS = [
    ["detkit.errors", "detkit.version"],
    ["detkit.utils"],
    ["detkit.config", "detkit.structures", "detkit.registry", "detkit.layers", "detkit.ops"],
    ["detkit.modeling", "detkit.data", "detkit.evaluation", "detkit.visualization"],
    ["detkit.checkpoint", "detkit.analysis"],
    ["detkit.export"],
    ["detkit.inference"],
    ["detkit.engine", "detkit.api", "detkit.io_video", "detkit.benchmark"],
]


def modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if package else parts)
        out[name] = (path, package)
    return out


def _runtime_nodes(tree):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph():
    mods = modules()

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = defaultdict(set)
    for name, (path, package) in mods.items():
        here = name if package else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            for target in targets:
                if target.startswith("detkit"):
                    found = resolve(target)
                    if found and found != name:
                        edges[name].add(found)
    return mods, edges


def cycles(nodes, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def layer(name):
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    return None if best is None else best[0]


def test_no_two_modules_import_each_other():
    mods, edges = import_graph()
    assert cycles(mods, edges) == []


def test_no_module_imports_from_a_layer_above():
    mods, edges = import_graph()
    upward = [
        f"{a} -> {b}"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    ]
    assert upward == []


def test_utils_import_nothing_but_errors():
    _, edges = import_graph()
    above = {
        f"{a} -> {b}"
        for a, targets in edges.items()
        if a.startswith("detkit.utils")
        for b in targets
        if not b.startswith(("detkit.utils", "detkit.errors"))
    }
    assert above == set()


def test_the_graph_sees_function_local_imports():
    """The check itself sees module-level and function-local imports alike."""
    _, edges = import_graph()
    assert "detkit.checkpoint.detectron2_names" in edges["detkit.checkpoint.reader"]
    assert "detkit.api" in edges["detkit"]  # the lazy ``from .api import Detector`` in a function
