"""The package's layering: no import cycles among tfadaqat's modules, and no tfadaqat module
imported inside a function (the way a cycle is usually hidden)."""

import ast
import pathlib

import tfadaqat

PACKAGE = pathlib.Path(tfadaqat.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = ("tfadaqat",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _targets(node) -> list:
    """The tfadaqat modules an import statement names (``from tfadaqat import export``
    names the module ``tfadaqat.export``; ``from tfadaqat import keras`` the package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.module and node.level == 0:
        names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                 else node.module for alias in node.names]
    else:
        names = []
    return [name for name in names if name == "tfadaqat" or name.startswith("tfadaqat.")]


def _imports(path: pathlib.Path):
    """``(module-level targets, [(line, target)] of function-level ones)``."""
    tree = ast.parse(path.read_text())
    top = [target for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for target in _targets(node)]
    inner = [(node.lineno, target) for function in ast.walk(tree)
             if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))
             for target in _targets(node)]
    return top, inner


def test_the_scan_sees_the_package():
    # A scan that found nothing would pass the tests below trivially.
    assert {"tfadaqat", "tfadaqat.export", "tfadaqat.export.plan", "tfadaqat.model",
            "tfadaqat.oqat.supernet"} <= set(MODULES)
    top, _ = _imports(MODULES["tfadaqat.export.graph"])
    assert "tfadaqat.export.plan" in top and "tfadaqat.layer_kinds" in top


def test_no_tfadaqat_module_is_imported_inside_a_function():
    found = [f"{name}:{line} imports {target}" for name, path in MODULES.items()
             for line, target in _imports(path)[1]]
    assert found == []


def test_module_imports_form_no_cycle():
    edges = {name: [target for target in _imports(path)[0] if target in MODULES]
             for name, path in MODULES.items()}
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = "open"
        for target in edges[name]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []
