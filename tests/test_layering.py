"""The house's arrows (LAYOUT.md), read from the source: every import of every module of oodgate/ (function-level
ones included), parsed with ast. No circle between packages, no arrow pointing up, no torch on the serving side,
and package __init__ files that only re-export lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "oodgate"

#: the layers, bottom up; a package may import its own layer's packages only where SAME_LAYER says so
LAYERS = [
    {"errors", "files", "progress", "_version", "_lazy"},
    {"data", "models", "detectors"},
    {"calibration", "exporter", "runtime", "evaluation", "serving"},
    {"cli", "demo", "__main__", "oodgate"},
]
SAME_LAYER = {
    ("files", "errors"), ("progress", "errors"), ("cli", "demo"),
    ("models", "data"), ("detectors", "data"),
    ("exporter", "calibration"), ("exporter", "runtime"), ("exporter", "evaluation"), ("evaluation", "runtime"),
    ("calibration", "evaluation"), ("serving", "runtime"),
}
#: packages that never import torch (nor onnxscript), directly or through what they import, in any function
TORCH_FREE_PACKAGES = {"runtime", "evaluation", "serving", "data", "errors", "files", "progress", "_version", "_lazy"}
#: modules that import without torch (their module-level imports, followed transitively, never reach it)
TORCH_FREE_MODULES = {"oodgate.detectors.threshold", "oodgate.detectors.clip", "oodgate.detectors.mos_groups",
                      "oodgate.detectors.registry", "oodgate.calibration.artifact", "oodgate.cli", "oodgate",
                      "oodgate.detectors", "oodgate.calibration", "oodgate.exporter", "oodgate.models"}
HEAVY = ("torch", "onnxscript", "onnx", "onnxruntime", "tensorrt", "numpy", "PIL", "sklearn", "matplotlib", "typer")


def module_name(path: Path) -> str:
    parts = ["oodgate", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}  # imports for type checkers only never run
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub where one exists
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            out += [(t, node.lineno, id(node) in top_level) for t in (subs or [target])]
    return out


def internal(target: str) -> str | None:
    """The oodgate module an import refers to (the longest known prefix), or None for third-party imports."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in MODULES:
            return cand
    return None


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "oodgate"


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


EDGES = {m: sorted({t for t in (internal(x) for x, _, _ in imports_of(m)) if t and t != m}) for m in MODULES}


def test_every_package_is_placed_in_a_layer():
    unplaced = sorted({package_of(m) for m in MODULES} - set().union(*LAYERS))
    assert not unplaced, f"packages missing from LAYERS (add them where they belong): {unplaced}"


def test_no_arrow_points_up_or_sideways():
    bad = []
    for m in MODULES:
        src = package_of(m)
        for x, line, _ in imports_of(m):
            t = internal(x)
            if t is None:
                continue
            dst = package_of(t)
            if dst == src or dst == "oodgate" and t != "oodgate":
                continue
            if t == "oodgate" and src != "oodgate":
                bad.append(f"{m}:{line} imports the top-level package (import from the defining module)")
            elif layer_of(dst) > layer_of(src) or (layer_of(dst) == layer_of(src) and (src, dst) not in SAME_LAYER):
                bad.append(f"{m}:{line} -> {t} ({src} may not import {dst})")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for m, targets in EDGES.items():
        for t in targets:
            if package_of(t) != package_of(m) and t != "oodgate":
                graph.setdefault(package_of(m), set()).add(package_of(t))
    assert not _cycles(graph), _cycles(graph)


def test_no_circle_between_modules():
    """Also inside a package (e.g. runtime's providers / session / tensorrt), function-level imports included."""
    graph = {m: {t for t in ts if not MODULES[t].name == "__init__.py"} for m, ts in EDGES.items()}
    assert not _cycles(graph), _cycles(graph)


def _reaches_torch(module: str, seen: set[str], top_only: bool) -> list[str] | None:
    """The import chain from ``module`` to torch/onnxscript, following oodgate modules, or None."""
    if module in seen:
        return None
    seen.add(module)
    for x, line, top in imports_of(module):
        if top_only and not top:
            continue
        if x.split(".")[0] in ("torch", "onnxscript", "torchvision", "timm"):
            return [f"{module}:{line} imports {x}"]
        t = internal(x)
        if t is not None and t != module:
            chain = _reaches_torch(t, seen, top_only)
            if chain:
                return [f"{module}:{line} -> {t}", *chain]
    return None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if package_of(m) in TORCH_FREE_PACKAGES))
def test_serving_side_never_imports_torch(module):
    chain = _reaches_torch(module, set(), top_only=False)
    assert chain is None, "\n".join(chain)


@pytest.mark.parametrize("module", sorted(TORCH_FREE_MODULES))
def test_torch_free_modules_import_without_torch(module):
    chain = _reaches_torch(module, set(), top_only=True)
    assert chain is None, "\n".join(chain)


def test_cli_imports_torch_only_inside_commands_that_need_it():
    heavy_at_top = [x for x, _, top in imports_of("oodgate.cli") if top and internal(x) not in (None, "oodgate.errors")]
    assert not heavy_at_top, heavy_at_top


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"))
def test_package_init_only_re_exports_lazily(package):
    tree = ast.parse(MODULES[package].read_text())
    allowed = {"__future__", "oodgate._lazy", "oodgate._version", "oodgate.errors"}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, line, _ in imports_of(package):
                if line == node.lineno:
                    assert target in allowed, f"{package}:{line} imports {target} at module level"
        elif isinstance(node, ast.Expr):
            is_doc = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            is_lazy = (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                       and node.value.func.id == "lazy_exports")
            assert is_doc or is_lazy, f"{package}:{node.lineno}: only the docstring and lazy_exports(...) run here"
        else:
            assert isinstance(node, (ast.Assign, ast.AnnAssign)), (
                f"{package}:{node.lineno}: a {type(node).__name__} in a package __init__ (code belongs in a module)")


def test_importing_the_packages_imports_nothing_heavy():
    import subprocess
    import sys

    packages = sorted(m for m, p in MODULES.items() if p.name == "__init__.py")
    code = (f"import sys\nfor p in {packages!r}:\n    __import__(p)\n    bad = [m for m in {HEAVY!r} if m in sys.modules]"
            "\n    assert not bad, (p, bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lazy_names_resolve_to_what_users_import():
    import oodgate
    from oodgate.calibration.calibrate import calibrate
    from oodgate.exporter.export import export
    from oodgate.runtime.session import Session

    import oodgate.calibration.calibrate  # noqa: F401 - the submodule of the same name must not shadow the function
    import oodgate.exporter.export  # noqa: F401

    assert oodgate.calibrate is calibrate and oodgate.calibration.calibrate is calibrate
    assert oodgate.export is export and oodgate.exporter.export is export
    assert oodgate.Session is Session and oodgate.runtime.Session is Session
    assert oodgate.data.Preprocess.__name__ == "Preprocess" and oodgate.metrics.auroc([1.0], [0.0]) == 1.0
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        oodgate.runtime.nope  # noqa: B018
