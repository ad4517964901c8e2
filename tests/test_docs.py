"""The documentation site (docs/): it builds warning-free, offline, and says what the code does.

The build test runs ``sphinx-build -W --keep-going`` into a temporary folder, as CI does; it
is skipped when the ``docs`` extra is not installed, except under CI (``.ci/run`` installs
``.[test,peers,docs]``), where it fails instead. The other tests read the sources and need no
Sphinx: the JSON reference names every field the commands print, the CLI reference covers
every command of the typer app, and the README's links into the docs resolve. The API and CLI
references are generated at each build (docs/_ext/), so they follow the code.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import running_in_ci

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

DOCS_PACKAGES = {"sphinx": "sphinx", "numpydoc": "numpydoc", "myst_parser": "myst-parser",
                 "myst_nb": "myst-nb"}


def _require_docs_extra() -> None:
    missing = [dist for mod, dist in DOCS_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    message = (f"{', '.join(missing)} not installed: the docs build needs the docs extra "
               "(pip install -e '.[docs]')")
    if running_in_ci():
        pytest.fail(message + " [CI is set, so this fails instead of skipping]", pytrace=False)
    pytest.skip(message)


def test_sphinx_build_is_warning_free_and_offline(tmp_path):
    """The whole site, API reference and generated CLI reference included, with -W."""
    _require_docs_extra()
    out = tmp_path / "html"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # no proxy that could be reached: a build that tried the network would fail or warn here
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:] or run.stdout[-4000:]
    assert "WARNING" not in run.stderr, run.stderr[-4000:]
    # the pages each user is sent to, the references and the rendered notebook are there
    for page in ("index", "hospital-it/install", "hospital-it/embed", "hospital-it/gateway",
                 "hospital-it/ledger", "hospital-it/keys", "hospital-it/transfer-syntaxes",
                 "investigator/trace", "investigator/report", "investigator/p-values",
                 "investigator/audit", "researcher/benchmarks", "researcher/leaks",
                 "researcher/api", "researcher/walkthrough", "researcher/reproducing",
                 "reference/json", "reference/exit-codes", "reference/cli/embed",
                 "reference/cli/ledger-verify", "reference/api/watermark",
                 "reference/api/forensics", "about/design", "about/results", "about/limits",
                 "about/credits"):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "reference/api/watermark.html").read_text(encoding="utf-8")
    assert 'id="watermark.dwt.embed"' in api and 'id="watermark.detect.detect"' in api
    from leaktrace_api import public_modules  # every public module has its section

    for package in ("watermark", "forensics"):
        html = (out / f"reference/api/{package}.html").read_text(encoding="utf-8")
        assert [m for m in public_modules(package) if f'id="module-{m}"' not in html] == []
    assert "forensics.ledger" in public_modules("forensics")
    notebook = (out / "researcher/walkthrough.html").read_text(encoding="utf-8")
    assert "trace_leak" in notebook and "detect_leak" in notebook  # its code cells, shown
    # no intersphinx inventory fetched, no remote asset referenced by the theme
    assert not list(out.rglob("*.inv.*"))
    assert "https://" not in (out / "index.html").read_text(encoding="utf-8").split("<body")[0]


def test_cli_reference_has_a_page_per_command_with_its_options(tmp_path):
    """docs/_ext/leaktrace_cli.py turns the typer app into one page per command."""
    import typer.main

    from forensics.cli import app
    from leaktrace_cli import write_cli_reference

    pages = {p.stem: p.read_text(encoding="utf-8") for p in write_cli_reference(tmp_path)}
    root = typer.main.get_command(app)
    expected = {"index"}
    for name, cmd in root.commands.items():
        expected.add(name)
        for sub in getattr(cmd, "commands", {}):
            expected.add(f"{name}-{sub}")
    assert set(pages) == expected
    assert "--recipient" in pages["embed"] and "--skip-existing" in pages["embed"]
    assert "Exit codes" in pages["embed"] and "Usage: leaktrace embed" in pages["embed"]
    assert "--checkpoint" in pages["ledger-verify"]
    assert '[gateway]' in pages["gateway"]  # the example's rich escapes are undone
    for name, cmd in root.commands["ledger"].commands.items():
        assert f"(ledger-{name}.md)" in pages["ledger"]


def _documented_fields() -> set[str]:
    text = (DOCS / "reference" / "json.md").read_text(encoding="utf-8")
    return set(re.findall(r"`([a-z_0-9]+)`", text))


def _dict_keys(func) -> set[str]:
    """The string keys of every dict literal in ``func``'s source."""
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {k.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def test_json_reference_names_every_field_the_commands_print():
    """Each key the ``--json`` objects hold (from the code that builds them) is in json.md."""
    from forensics import register, trace
    from forensics.cli import hospital, investigator
    from forensics.ledger.checkpoint import CheckpointCheck
    from forensics.ledger import ChainCheck, ExportRecord

    fields = _documented_fields()
    printed = (_dict_keys(trace.LeakReport.as_dict) | _dict_keys(trace._source_dict)
               | _dict_keys(register.Alignment.as_dict) | _dict_keys(hospital._print_embed_json)
               | _dict_keys(hospital.embed) | _dict_keys(investigator._answer)
               | _dict_keys(hospital.ledger_list) | _dict_keys(hospital.ledger_verify))
    printed -= {"export_ids", "count"}  # what ledger list writes into the access log, not its JSON
    for cls in (ExportRecord, ChainCheck, CheckpointCheck):
        printed |= {f.name for f in dataclasses.fields(cls)}
    assert printed - fields == set()


def test_readme_links_into_the_docs_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 15
    assert [link for link in links if not (ROOT / link).is_file()] == []
