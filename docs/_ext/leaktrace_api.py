"""Sphinx extension: write the API reference pages from the package tree.

At ``builder-inited`` it walks ``watermark`` and ``forensics`` and writes
``reference/api/<package>.rst``: one section per public module (no name component starting
with ``_``), in the order of :data:`ORDER` then alphabetically, each an ``automodule``. A
module with ``__all__`` lists its members explicitly, so that the names a public module or
package re-exports from a private one (``forensics/ledger/_schema.py`` behind
``forensics.ledger``) are documented where users import them, and names that only repeat
another public module's are left to that module. The pages are generated (not committed), so a
module that is added, moved or made private changes the reference without an edit here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

PACKAGES = {
    "watermark": ("watermark: the marking core",
                  "Arrays in, arrays out: reading a film, rendering it as a viewer shows it, the "
                  "keyed mark, the payload code, blind and informed detection and their p-values. "
                  "The package re-exports its main names: ``from watermark import embed, detect``."),
    "forensics": ("forensics: the product, the command line and the lab",
                  "File-level export, tracing and the evidence report; the ledger, its "
                  "checkpoints and the access log; the DICOM gateway; the command line; and the "
                  "lab a researcher uses (the leak simulations, the benchmark and its peers)."),
}

#: Modules shown first, in the order data flows (the rest follow alphabetically).
ORDER = ["watermark", "watermark.dicomio", "watermark.display", "watermark.keys",
         "watermark.payload", "watermark.dwt", "watermark.sync", "watermark.stats",
         "watermark.detect", "watermark.informed", "watermark.imageio",
         "forensics", "forensics.export", "forensics.trace", "forensics.register",
         "forensics.report", "forensics.ledger"]


def public_modules(package: str) -> list[str]:
    """Every importable module of ``package`` with no private name component."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), n))


def _is_public_module(name: str) -> bool:
    return name.split(".")[0] in PACKAGES and not any(p.startswith("_") for p in name.split("."))


def _members(module) -> list[str] | None:
    """Explicit member list for a module with ``__all__`` (``None``: let autodoc choose)."""
    names = getattr(module, "__all__", None)
    if names is None:
        return None
    keep = []
    for name in names:
        if name.startswith("__"):
            continue
        obj = getattr(module, name, None)
        home = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
        if home and home != module.__name__ and _is_public_module(home):
            continue  # documented in its own public module
        keep.append(name)
    return keep


def _private_reexports(module) -> list[str]:
    """Public classes and functions a package (not a plain module, which may just use a
    private helper) takes from a private leaktrace module."""
    if not hasattr(module, "__path__"):
        return []
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        home = getattr(obj, "__module__", "") or ""
        if (home != module.__name__ and home.split(".")[0] in PACKAGES
                and not _is_public_module(home)):
            found.append(name)
    return found


def _page(package: str) -> str:
    title, intro = PACKAGES[package]
    out = [title, "=" * len(title), "", intro, "", ".. contents:: Modules", "   :local:",
           "   :depth: 1", ""]
    for name in public_modules(package):
        module = importlib.import_module(name)
        members = _members(module)
        heading = f"``{name}``"
        out += [heading, "-" * len(heading), "", f".. automodule:: {name}"]
        if members is None:
            out.append("   :members:")
            # without __all__, autodoc skips imported names: add those re-exported from a
            # private module (a package's face over its _modules)
            for extra in _private_reexports(module):
                obj = getattr(module, extra)
                kind = ("autoexception" if inspect.isclass(obj) and issubclass(obj, BaseException)
                        else "autoclass" if inspect.isclass(obj) else "autofunction")
                out += ["", f".. {kind}:: {name}.{extra}"]
                if kind != "autofunction":
                    out.append("   :members:")
        elif members:
            out.append("   :members: " + ", ".join(members))
        else:
            out.append("   :no-members:")
        out.append("")
    return "\n".join(out)


def write_api_reference(out: Path) -> list[Path]:
    """Write ``<package>.rst`` for each package of :data:`PACKAGES` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for package in PACKAGES:
        target = out / f"{package}.rst"
        text = _page(package)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def _generate(app) -> None:
    write_api_reference(Path(app.srcdir) / "reference" / "api")


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
