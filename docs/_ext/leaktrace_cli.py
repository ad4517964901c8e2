"""Sphinx extension: write the CLI reference from the typer app, one page per command.

At ``builder-inited`` (before Sphinx reads the sources) it turns :data:`forensics.cli.app`
into its click command (``typer.main.get_command``) and writes ``reference/cli/<name>.md``
for every command and group: the summary, the usage line, every argument and option with
its metavar, default and help, and the command's own text (exit codes included), as
``leaktrace COMMAND --help`` has them. The files are generated, not committed
(``docs/reference/cli/`` is in ``.gitignore``), so the reference cannot drift from the code.

sphinx-click's ``.. click::`` directive is not used: typer >= 0.16 carries its own copy of
click, whose commands are not instances of the ``click`` package's classes.
"""

from __future__ import annotations

import re
from pathlib import Path

_PUNCT = re.compile(r"([\\*_\[\]<>#|~])")


def _text(s: str) -> str:
    """Help text as Markdown: ``code`` spans kept as code, everything else escaped."""
    s = s.replace("\\[", "[")  # rich markup escapes in typer help
    parts = s.split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: no code spans
        parts = [s.replace("`", "'")]
    out = []
    for i, part in enumerate(parts):
        out.append(f"`{part}`" if i % 2 else _PUNCT.sub(r"\\\1", part))
    return "".join(out)


def _code(s: str) -> str:
    ticks = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _walk(cmd, ctx, path):
    yield path, cmd, ctx
    for name in sorted(getattr(cmd, "commands", {}) or {}):
        sub = cmd.commands[name]
        if getattr(sub, "hidden", False):
            continue
        sub_ctx = sub.context_class(sub, info_name=name, parent=ctx)
        yield from _walk(sub, sub_ctx, (*path, name))


def _page(path, cmd, ctx) -> str:
    title = " ".join(path)
    lines = [f"# {_code(title)}", ""]
    summary = cmd.get_short_help_str(limit=200)
    if summary:
        lines += [_text(summary), ""]
    usage = " ".join([title, *cmd.collect_usage_pieces(ctx)])
    lines += ["```text", f"Usage: {usage}", "```", ""]
    subs = sorted(n for n, c in (getattr(cmd, "commands", {}) or {}).items()
                  if not getattr(c, "hidden", False))
    if subs:
        lines += ["## Commands", ""]
        for name in subs:
            slug = "-".join((*path[1:], name))
            lines.append(f"- [{_code(' '.join((*path, name)))}]({slug}.md): "
                         f"{_text(cmd.commands[name].get_short_help_str(limit=200))}")
        lines.append("")
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    if args:
        lines += ["## Arguments", ""]
        for p in args:
            record = p.get_help_record(ctx)
            if record is not None:
                lines.append(f"- {_code(record[0])}: {_text(record[1])}")
        lines.append("")
    if opts:
        lines += ["## Options", ""]
        for p in opts:
            record = p.get_help_record(ctx)
            if record is None:
                continue
            names, help_ = record
            lines.append(f"- {_code(names)}: {_text(help_)}")
        lines.append("")
    body = (cmd.help or "").strip()
    if body:
        paragraphs = body.split("\n\n")[1:]  # the first is the summary above
        if paragraphs:
            lines += ["## Description", ""]
            lines += [_text(par) + "\n" for par in paragraphs]
    if len(path) == 1:  # the root page holds the table of contents of the others
        lines += ["```{toctree}", ":hidden:", ":glob:", "", "*", "```", ""]
    if cmd.epilog:
        lines += ["## Example", "", "```text", cmd.epilog.replace("\\[", "[").strip("\n"),
                  "```", ""]
    return "\n".join(lines)


def write_cli_reference(out: Path) -> list[Path]:
    """Write one Markdown page per command of the ``leaktrace`` app into ``out``."""
    import typer.main

    from forensics.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="leaktrace")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, cmd, sub_ctx in _walk(root, ctx, ("leaktrace",)):
        slug = "-".join(path[1:]) or "index"
        target = out / f"{slug}.md"
        text = _page(path, cmd, sub_ctx)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")  # unchanged files keep their mtime
        written.append(target)
    for stale in set(out.glob("*.md")) - set(written):
        stale.unlink()
    return written


def _generate(app) -> None:
    write_cli_reference(Path(app.srcdir) / "reference" / "cli")


def setup(app):
    app.connect("builder-inited", _generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
