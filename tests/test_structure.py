"""The package's shape: no import cycles, and one module that tells strategies apart.

Read statically (ast and text), so these run in well under a second and import nothing.

Imports are counted wherever they stand, at module level and inside functions: a function-level
import is how bit_keras stays fast to start (`bit_keras list` loads no TensorFlow), not a
licence to point back up the pipeline. `from pkg import name` counts as an import of
`pkg.name` when that is a module, else of `pkg`; a package's own `__init__` (loaded first
anyway) is not counted as a dependency of its submodules.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "bit_keras"

# The one mutual dependency keras-hub's design asks for: an image converter names the backbone
# class it belongs to (`backbone_cls`, how keras-hub finds it in a preset), and BiT's backbone
# preset carries a converter (`BiTBackbone.save_to_preset`), so keras-hub's
# `ImageClassifier.from_preset(DIR, num_classes=...)` has a preprocessor.
ALLOWED_CYCLES = [{"bit_keras.backbone", "bit_keras.preprocessing"}]


def _module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root=PACKAGE) -> dict:
    """{module: set of bit_keras modules it imports}, from the source text."""
    files = {_module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                edges.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                             for alias in node.names)
        graph[name] = {edge for edge in edges if edge in files and edge != name}
    return graph


def cycles(graph) -> list:
    """The strongly connected components of more than one module (Tarjan), each a set."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_function_level_imports(tmp_path):
    package = tmp_path / "bit_keras"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "sources.py").write_text("def load():\n    from bit_keras.vtab import data\n")
    (package / "vtab").mkdir()
    (package / "vtab" / "__init__.py").write_text("")
    (package / "vtab" / "data.py").write_text("from ..data.sources import load\n")
    (package / "leaf.py").write_text("from bit_keras import data\n")
    assert cycles(import_graph(package)) == [{"bit_keras.data.sources", "bit_keras.vtab.data"}]


def test_bit_keras_has_no_import_cycles():
    found = [component for component in cycles(import_graph()) if component not in ALLOWED_CYCLES]
    assert not found, f"import cycles in bit_keras: {[sorted(component) for component in found]}"
    for allowed in ALLOWED_CYCLES:   # an allowance that no longer applies goes
        assert allowed in cycles(import_graph()), f"{sorted(allowed)} is no longer a cycle: drop it from ALLOWED_CYCLES"


def test_only_the_distribute_module_tells_strategies_apart():
    """Strategy kinds (by class name), the CPU split and the JAX stand-in live in bit_keras/distribute.py."""
    markers = ("type(strategy).__name__", "MultiWorkerMirroredStrategy", "TPUStrategy", "_DefaultDistribution",
               "split_cpu(", "_NoStrategy")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "distribute.py" and path.parent == PACKAGE:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if any(marker in code for marker in markers) and not code.lstrip().startswith(('"', "'", "`")):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
