"""The layout by purpose: the product never imports the lab (leak simulations, the benchmark
and its peers, other projects' programs), and no module imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["forensics.export", "forensics.deidentify", "forensics.burnedin", "forensics.trace",
           "forensics.register", "forensics.report", "forensics.ledger", "forensics.gateway"]
LAB = ("forensics.leaks", "forensics.bench", "forensics.external", "forensics.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every forensics/watermark module ``path`` imports, at any depth of its code (the lazy
    imports inside functions too), resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("forensics", "watermark")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for top in ("forensics", "watermark")
               for p in (ROOT / top).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _inside(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_product_never_imports_the_lab():
    graph = _graph()
    reached, todo = set(), [m for m in graph if _inside(m, PRODUCT) or _inside(m, ["watermark"])]
    offenders = []
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        for target in graph[module]:
            if _inside(target, LAB):
                offenders.append(f"{module} imports {target}")
            todo.append(target)
    assert offenders == []
    assert "forensics.ledger.store" in reached and "forensics.gateway.node" in reached


def test_importing_the_product_loads_no_lab_module():
    """At run time too: what the gateway and an investigator's trace import."""
    code = ("import sys, forensics.export, forensics.trace, forensics.report, forensics.gateway, "
            "forensics.ledger.checkpoint, forensics.ledger.audit\n"
            f"print(sorted(m for m in sys.modules if m.startswith({LAB!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_marking_core_imports_nothing_of_forensics():
    graph = _graph()
    assert {f"{m} imports {t}" for m, ts in graph.items() if m.startswith("watermark")
            for t in ts if t.startswith("forensics")} == set()


def test_no_import_cycle_between_modules_at_import_time():
    """Only the imports at a module's top level count (a lazy import inside a function may
    point back); the package ``__init__`` re-exporting its own modules is not a cycle."""
    modules = {_module_name(p): p for top in ("forensics", "watermark")
               for p in (ROOT / top).rglob("*.py")}
    top_level: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)]
                          if t in modules}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
                found |= {t for t in names if t in modules}
        top_level[name] = {t for t in found if t != name}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in top_level.get(node, ()):
                if nxt == start and not _is_package_of(start, path):
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    def _is_package_of(start: str, path: list[str]) -> bool:
        # a submodule importing its package's __init__, which imports the submodule back
        return any(p != start and (start.startswith(p + ".") or p.startswith(start + "."))
                   for p in path)

    cycles = [c for c in (cycle_from(m) for m in top_level) if c]
    assert cycles == []
