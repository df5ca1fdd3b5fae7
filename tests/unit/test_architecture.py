"""The package's shape: no import circles, and each layer imports only from the layers below it.

Every ``import`` and ``from ... import`` of a tlexp module is read from the source (at module level,
inside functions, and under ``TYPE_CHECKING`` alike: a circle that only typing sees is still a
circle for the next reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "tlexp"
# Lower number = lower layer. A module may import its own layer and the layers below it.
LAYERS = {
    "core": 0,         # errors, config location, caches, process rank
    "tracking": 1,     # MLflow runs, stores, run queries, sweep parents
    "analysis": 2,     # compare, statistics, plots, reports (reads the store)
    "data": 2,         # domains, loaders, splits, scenarios, training data
    "evaluation": 3,   # metrics, evaluator, k-shot, the evaluation plan
    "models": 4,       # backbones, losses, recommenders
    "training": 5,     # the one training loop, trainers, transfer, pretraining
    "strategies": 6,   # what moves from source to target
    "pipeline": 7,     # the stage order, building a run's model, sweeps
    "serving": 8,      # recommend
    "cli": 9,          # entry points
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def tlexp_imports(path: Path) -> set[str]:
    """Every tlexp module ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tlexp"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "tlexp":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_path(sub) is not None else base)
    return found


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in tlexp_imports(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_circle_under_tlexp():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_each_layer_imports_only_from_below():
    edges = graph()
    packages = {module.split(".")[1] for module in edges if module.count(".") >= 1}
    loose = sorted(p for p in packages if p not in LAYERS and not (PACKAGE / p).is_dir())
    assert loose == [], f"modules at the package root: {loose} (put each in its layer's folder)"
    assert packages <= set(LAYERS), f"folders without a layer: {sorted(packages - set(LAYERS))}"
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert upward == []


def test_a_strategy_never_reads_the_run_config():
    """Strategies get typed settings and inputs: no DictConfig, no Hydra, no ``cfg``."""
    offenders = []
    for path in (PACKAGE / "strategies").glob("*.py"):
        text = path.read_text()
        for needle in ("DictConfig", "import hydra", "from hydra import", "compose(", "cfg."):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []
