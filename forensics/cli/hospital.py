"""Hospital IT's commands: ``embed``, ``gateway`` and the ledger's administration (``ledger list``,
``verify``, ``checkpoint``, ``witness``, ``migrate``, ``export``, ``audit``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from watermark.errors import CheckpointError, LeaktraceError
from watermark.keys import key_path, load_key

from ..ledger.access import id_ranges, operator_name
from ..export import (already_exported, check_outputs, collect_sources, export_many, ExportOutcome,
                      site_key_for)
from watermark._files import atomic_write
from ..ledger import AccessEvent, EXPORT_FORMATS, export_table, Ledger, normalise_recipient
from ..deidentify import check_options, precheck_all
from .common import (app, err, _fail, _interrupted, KeyOpt, ledger_app, LedgerOpt, OperatorOpt,
                     _record_access, _who)


@app.command()
def embed(
    sources: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    recipient: Annotated[str, typer.Option("--recipient", help="Who receives these copies (any name without control characters; registered in the ledger).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder; created if missing.")],
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", metavar="", help="Leave alone each output that is already the copy this ledger recorded for this source and recipient (a batch run again after an interruption or by cron); they are listed as skipped, not failed.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace existing output files (never one written earlier in the same run).")] = False,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object with every outcome on stdout.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Processes marking files in parallel (0: one per CPU core). This process still writes every output and records it in the ledger.")] = 1,
    new_key: Annotated[bool, typer.Option("--new-key", metavar="", help="Change the site key on purpose: export with a key the ledger's earlier exports were not made with (created if its file does not exist). Without it such a key, or a missing key file beside a ledger that holds exports, is refused (exit 2).")] = False,
    deidentify: Annotated[bool, typer.Option("--deidentify", metavar="", help="De-identify each copy (DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile) before it is marked: keyed pseudonyms and UIDs per recipient, private elements removed; the ledger keeps the mapping (leaktrace ledger reidentify). A film whose (0028,0301) Burned In Annotation is YES or missing is refused (exit 2) unless --deid-option clean-pixel-data is given.")] = False,
    deid_option: Annotated[Optional[list[str]], typer.Option("--deid-option", metavar="NAME", help="A PS3.15 option for --deidentify (repeatable): retain-longitudinal-modified-dates, retain-patient-characteristics, retain-device-identity, retain-institution-identity, clean-descriptors, clean-pixel-data (burned-in text found by offline OCR and blanked; needs the 'ocr' extra).")] = None,
) -> None:
    """Mark films for a recipient, write the marked copies and record them in the ledger.

    Each DICOM file in SOURCES is marked for RECIPIENT, written to OUT and recorded. Files
    that are already leaktrace-marked copies are refused: mark the original. A ledger
    that holds exports accepts only the key they were made with, unless --new-key is given.

    Exit codes: 0 every file exported (or skipped with --skip-existing), 1 at least one file
    failed (the others were still exported) or no file was found, 2 nothing done (bad
    arguments, output folder, key or ledger), 130 interrupted.
    """
    def fatal(message: str, code: int = 2) -> typer.Exit:
        if as_json:
            print(json.dumps({"recipient": name, "ledger": str(book.path) if book else None,
                              "exported": [], "failed": [], "error": message}))
        return _fail(message, code)

    name, book = None, None
    try:
        name = normalise_recipient(recipient)
    except LeaktraceError as exc:
        raise fatal(f"bad arguments: --recipient: {exc}") from None
    if out.exists() and not out.is_dir():
        raise fatal(f"bad arguments: --out {out}: exists and is not a folder")
    if workers < 0:
        raise fatal(f"bad arguments: --workers {workers}: must be 0 (one per CPU core) or more")
    if skip_existing and overwrite:
        raise fatal("bad arguments: --skip-existing leaves existing outputs alone and "
                    "--overwrite replaces them; give one of them")
    deid_options = tuple(deid_option or ())
    if deid_options and not deidentify:
        raise fatal("bad arguments: --deid-option is an option of --deidentify; give both")
    try:
        deid_options = check_options(deid_options)
    except LeaktraceError as exc:
        raise fatal(f"bad arguments: {exc}") from None
    try:
        path = key_path(key)
        # an unreadable key file stops the command before a new ledger is created
        site_key = load_key(path) if path.exists() or path.is_symlink() else None
        book = Ledger(ledger)
    except LeaktraceError as exc:
        raise fatal(str(exc)) from None
    with book:
        try:
            known = book.key_usage()
            if site_key is None:  # created on a first run only (or with --new-key)
                site_key, created = site_key_for(book, path, new_key=new_key)
            else:
                created = False
            changed = book.check_key(site_key, new_key=new_key)
            problem = book.write_problem()
        except LeaktraceError as exc:
            raise fatal(str(exc)) from None
        if problem:  # before any file is read and marked, not once per file after
            raise fatal(f"{book.path}: cannot record exports in this ledger ({problem}); "
                        "nothing was exported")
        if created:
            err.print(f"created a new site key at {escape(str(path))} (fingerprint "
                      f"{site_key.fingerprint}); keep it safe and private, and back it up "
                      "with the ledger")
        if changed:
            err.print(f"[yellow]warning:[/] --new-key: the ledger at {escape(str(book.path))} "
                      f"has {sum(known.values())} export(s) made with key(s) "
                      f"{', '.join(known)}; these exports are made with key "
                      f"{site_key.fingerprint}, so it holds {len(known) + 1} key fingerprints "
                      "from now on and a leak is traced only with the key that marked it: keep "
                      "every key file (see 'Back up and escrow the site key' in docs/hospital-it/keys.md)",
                      markup=True)
        pairs = list(collect_sources(sources, out))
        if not pairs:
            raise fatal("no DICOM files found under " + ", ".join(map(str, sources)), code=1)
        try:
            check_outputs(pairs)
        except LeaktraceError as exc:
            raise fatal(f"{exc}; nothing was exported") from None
        skipped, changed = [], []
        if skip_existing:
            to_do = []
            for pair in pairs:
                try:
                    record = already_exported(book, *pair, name)
                except LeaktraceError as exc:  # the recorded copy was changed since
                    changed.append(ExportOutcome(*pair, error=str(exc)))
                    continue
                if record is not None:
                    skipped.append(record)
                else:
                    to_do.append(pair)
            pairs = to_do
        if deidentify:  # fail closed before anything is read and marked
            try:
                precheck_all((source for source, _ in pairs), deid_options)
            except LeaktraceError as exc:
                raise fatal(str(exc)) from None
        created_out = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fatal(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
        problem = _not_writable(out)
        if problem:  # before any file is read and marked, not once per file after
            raise fatal(f"{out}: cannot write in the output folder ({problem}); nothing was "
                        "exported")
        before = book.last_export_id()
        done: list = []  # outcomes reported so far

        def advance(outcome) -> None:
            done.append(outcome)
            bar.advance(task)

        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, disable=len(pairs) < 2) as bar:
                task = bar.add_task("marking", total=len(pairs))
                outcomes = export_many(pairs, recipient=name, ledger=book, key=site_key,
                                       overwrite=overwrite, progress=advance, workers=workers,
                                       new_key=new_key, deidentify=deidentify,
                                       deid_options=deid_options)
        except KeyboardInterrupt:
            # the ledger says which files were exported: one recorded just before Ctrl-C may
            # not have been reported yet (its features for `trace` were being computed)
            outputs = {str(o.resolve()) for _, o in pairs}
            records = [r for r in book.exports_after(before) if r.output_path in outputs]
            failed = [o for o in done if o.error]
            message = _embed_interrupted(len(records), len(failed), len(pairs), overwrite)
            if as_json:
                _print_embed_json(name, book, records, failed, error=message, interrupted=True)
            raise _interrupted(message) from None
    outcomes = changed + outcomes
    failed = [o for o in outcomes if o.error]
    if created_out and not any(o.record for o in outcomes):
        _remove_empty_folders(out)  # every file failed: leave no empty --out behind
    for o in failed:
        err.print(f"[red]failed:[/] {escape(o.error)}")
    err.print(f"{len(outcomes) - len(failed)} of {len(outcomes) + len(skipped)} file(s) marked "
              f"for {escape(repr(name))} in {escape(str(out))} (ledger {escape(str(book.path))})"
              + (f"; {len(skipped)} already exported, skipped" if skip_existing else ""))
    if as_json:
        extra = {"skipped": [r.as_dict() for r in skipped]} if skip_existing else {}
        if deidentify:
            extra |= {"deidentified": True, "deid_options": list(deid_options)}
        _print_embed_json(name, book, [o.record for o in outcomes if o.record], failed, **extra)
    if failed or not (outcomes or skipped):
        raise typer.Exit(1)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Put ``path`` in front of a :class:`CheckpointError` that does not name it yet (a
    checkpoint file that is not a signed note, say)."""
    try:
        yield
    except CheckpointError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {exc}") from None


def _remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file (deepest first); a
    folder that holds anything is left as it is."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def _not_writable(folder: Path) -> str:
    """Why a file cannot be created in ``folder`` ("" when it can): tried for real, since
    permissions alone do not say (a read-only mount, or root for whom modes do not count)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".leaktrace-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return ""


def _print_embed_json(name: str, book: Ledger, records: list, failed: list, **extra) -> None:
    """``embed --json``'s one object: the export records made, the files that failed, and
    ``extra`` fields (``error``, ``interrupted``)."""
    print(json.dumps({"recipient": name, "ledger": str(book.path),
                      "exported": [r.as_dict() for r in records],
                      "failed": [{"source": str(o.source), "error": o.error} for o in failed],
                      **extra}))


def _embed_interrupted(exported: int, failed: int, total: int, overwrite: bool) -> str:
    """The line ``embed`` prints when Ctrl-C stops it: what was exported and what a re-run does."""
    processed = exported + failed
    line = (f"after {processed} of {total} file(s): {exported} exported and recorded in the ledger"
            + (f", {failed} failed" if failed else "") + "; the others were not exported")
    if not exported:
        return line + "; run the same command again to export them"
    if overwrite:
        return line + (f"; the same command run again exports all {total}, replacing and "
                       f"recording again the {exported} already exported")
    return line + (f"; run the same command again with --skip-existing to export the other "
                   f"{total - exported} and leave the {exported} already exported alone")


GATEWAY_EXAMPLE = """
Example gateway.toml:

    \\[gateway]
    ae_title = "LEAKTRACE"
    listen = "127.0.0.1:11112"
    store = "/var/lib/leaktrace/gateway"
    pass_unmarked = \\["SR"]

    \\[pacs]
    ae_title = "ORTHANC"
    address = "127.0.0.1:4242"

    \\[\\[recipients]]
    ae_title = "DRX_WS"
    address = "127.0.0.1:11113"
    name = "Dr. X (cardiology, St. Elsewhere)"
"""


@app.command(epilog=GATEWAY_EXAMPLE)
def gateway(
    config: Annotated[Path, typer.Option("--config", help="The gateway's TOML configuration (see below).")],
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes marking in parallel (0: one per CPU core). With 1, concurrent associations mark one at a time; the ledger records one at a time either way.")] = 1,
    check_only: Annotated[bool, typer.Option("--check", metavar="", help="Check the configuration, the key and the ledger, C-ECHO the PACS and every recipient, and exit: 0 all reachable, 1 some not, 2 a configuration error.")] = False,
) -> None:
    """Run the DICOM gateway that marks every instance leaving the PACS for a recipient.

    Routes (the PACS C-STOREs to a recipient's AE title on the gateway's port), and C-FIND,
    C-MOVE and C-GET for recipients; each instance is marked for the party that receives it
    and recorded before it is sent.

    Exit codes: 130 stopped by Ctrl-C or SIGTERM, 2 it cannot start (configuration, key,
    ledger, address). With --check: 0 every node answered C-ECHO, 1 some did not, 2 a
    configuration, key or ledger error.
    """
    from ..gateway import load_config
    from ..gateway.service import check, configure_logging, serve

    if workers < 0:
        raise _fail(f"bad arguments: --workers {workers}: must be 0 (one per CPU core) or more")
    try:
        cfg = load_config(config)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    if check_only:
        try:
            result = check(cfg, ledger_path=ledger, key_path=key)
        except LeaktraceError as exc:
            raise _fail(str(exc)) from None
        for line in result.lines:
            print(line)
        raise typer.Exit(result.exit_code)
    try:
        with Ledger(ledger) as book:  # the same key rules as embed (no --new-key here)
            site_key, created = site_key_for(book, key)
        if created:
            err.print(f"created a new site key at {site_key.path} (fingerprint "
                      f"{site_key.fingerprint}); keep it "
                      "safe and private, and back it up with the ledger")
        configure_logging(cfg)
        serve(cfg, ledger_path=ledger, key=site_key, workers=workers)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _interrupted("the gateway stopped; every instance sent was recorded first, and "
                           "a delivery still pending is listed by the next --check") from None


@ledger_app.command("list")
def ledger_list(ledger: LedgerOpt = None,
                as_json: Annotated[bool, typer.Option("--json", metavar="", help="JSON on stdout.")] = False,
                operator: OperatorOpt = None) -> None:
    """List the recipients and exports of the ledger (opened read-only).

    The listing is recorded in the ledger's access log (who, which exports); when it cannot
    be, a warning says so and the list is still printed.

    Exit codes: 0 listed, 2 the ledger cannot be read.
    """
    try:
        who = operator_name(operator)
    except LeaktraceError as exc:
        if as_json:
            print(json.dumps({"recipients": [], "exports": [], "error": f"bad arguments: {exc}",
                              "access_recorded": False}))
        raise _fail(f"bad arguments: {exc}") from None
    try:
        with Ledger(ledger, create=False) as book:
            recipients, exports = book.recipients(), book.exports()
    except LeaktraceError as exc:
        recorded = _record_access(ledger, AccessEvent(who, "ledger list", {}, "error", str(exc)))
        if as_json:
            print(json.dumps({"recipients": [], "exports": [], "error": str(exc),
                              "access_recorded": recorded}))
        raise _fail(str(exc)) from None
    recorded = _record_access(ledger, AccessEvent(
        who, "ledger list", {"export_ids": id_ranges(e.id for e in exports),
                             "count": len(exports)}, "listed"))
    if as_json:
        print(json.dumps({"recipients": [{"number": n, "name": s} for n, s in recipients.items()],
                          "exports": [e.as_dict() for e in exports],
                          "access_recorded": recorded}))
        return
    for n, name in recipients.items():
        print(f"recipient {n}: {name}")
    for e in exports:
        print(f"export {e.id}: {e.created_utc} {e.recipient_name} <- {e.source_path} -> {e.output_path}")


ExpectHeadOpt = Annotated[Optional[str], typer.Option(
    "--expect-head", metavar="HASH",
    help="A chain head noted earlier (printed by `ledger verify` and `ledger export`) and kept "
         "outside the ledger: it must still be in the chain, else the newest records were "
         "deleted or the chain rewritten (exit 1). Records added after it are fine.")]


CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", metavar="FILE",
    help="A signed checkpoint written earlier by `ledger checkpoint` (and perhaps cosigned by "
         "`ledger witness`), kept outside the ledger: the ledger's first N records (N: the "
         "checkpoint's size) must still have its Merkle root and its signature must verify, "
         "else exit 1 (truncated, rewritten, or a bad signature). Records added after it are fine.")]


PublicKeyOpt = Annotated[Optional[str], typer.Option(
    "--public-key", metavar="VKEY|FILE",
    help="The checkpoint signer's public key: the verifier key string <name>+<id>+<key> printed "
         "by `ledger checkpoint`, or a file holding it. Default: checkpoint.key.pub beside the "
         "site key.")]


WitnessKeyOpt = Annotated[Optional[list[str]], typer.Option(
    "--witness-key", metavar="VKEY|FILE",
    help="With --checkpoint: a witness's public key whose cosignature the checkpoint must carry "
         "(repeat for several witnesses).")]


SigningKeyOpt = Annotated[Optional[Path], typer.Option(
    "--signing-key", metavar="PATH",
    help="Ed25519 checkpoint signing key (never the site key); created on first use, with its "
         "public key in PATH.pub. Default: checkpoint.key beside the site key "
         "($LEAKTRACE_KEY's folder, else $XDG_CONFIG_HOME/leaktrace).")]


KeyNameOpt = Annotated[Optional[str], typer.Option(
    "--key-name", metavar="NAME",
    help="Name of a signing key created now (no spaces, no '+'; default <host name>/leaktrace). "
         "An existing key keeps its name.")]


def _verifier(value: str | None):
    """The public key given, else the one beside the default signing key."""
    from ..ledger.note import default_signing_key_path, read_verifier

    if value is None:
        default = default_signing_key_path().with_name(default_signing_key_path().name + ".pub")
        if not default.exists():
            raise CheckpointError(f"no public key given and none at {default}: give the "
                                  "signer's with --public-key (printed by `ledger checkpoint`)")
        value = str(default)
    return read_verifier(value)


@ledger_app.command("verify")
def ledger_verify(ledger: LedgerOpt = None, expect_head: ExpectHeadOpt = None,
                  checkpoint: CheckpointOpt = None, public_key: PublicKeyOpt = None,
                  witness_key: WitnessKeyOpt = None,
                  as_json: Annotated[bool, typer.Option("--json", metavar="", help="One JSON object on stdout: ok, problems, n_records, head_hash, ledger_id, anchor; with --checkpoint also checkpoint (ok, size, problems, signatures...).")] = False) -> None:
    """Check the ledger's hash chain, its recipient names, and a signed checkpoint.

    The access log's own chain (who looked) is checked too. With --checkpoint, also that the
    ledger extends a signed checkpoint. Prints the chain
    head: note it elsewhere and give it back with --expect-head to detect deleted newest
    records (a signed checkpoint does more).

    Exit codes: 0 intact, 1 broken (each problem is named), 2 the ledger, checkpoint or
    public key cannot be read.
    """
    from ..ledger.checkpoint import verify_checkpoint
    from ..ledger.note import read_verifier

    if checkpoint is None and (public_key is not None or witness_key):
        raise _fail("bad arguments: --public-key and --witness-key go with --checkpoint")
    cp_check = None
    try:
        if checkpoint is not None:
            log_key = _verifier(public_key)
            witnesses = [read_verifier(w) for w in witness_key or []]
            try:
                data = checkpoint.read_bytes()
            except OSError as exc:
                raise CheckpointError(f"{checkpoint}: cannot read the checkpoint "
                                      f"({exc.strerror or exc})") from None
        with Ledger(ledger, create=False) as book:
            check = book.check(expect_head)
            access = book.check_access()
            if checkpoint is not None:
                with _naming(checkpoint):
                    cp_check = verify_checkpoint(book, data, log_key, witness_keys=witnesses)
    except LeaktraceError as exc:
        if as_json:
            print(json.dumps({"ok": False, "problems": [], "error": str(exc)}))
        raise _fail(str(exc)) from None
    result = check.as_dict()
    if cp_check is not None:
        result["checkpoint"] = cp_check.as_dict()
        result["problems"] = check.problems + [f"checkpoint: {p}" for p in cp_check.problems]
        result["ok"] = check.ok and cp_check.ok
    result["access"] = {k: v for k, v in access.as_dict().items() if k in
                        ("ok", "problems", "n_records", "head_hash")}
    if not access.ok:  # the access log's own chain (who looked) was tampered with
        result["problems"] = result["problems"] + [f"access log: {p}" for p in access.problems]
        result["ok"] = False
    if as_json:
        print(json.dumps(result))
    else:
        for p in result["problems"]:
            print(p)
        print(f"{check.n_records} export record(s): "
              + ("chain intact" if check.ok else f"{len(check.problems)} problem(s)"))
        print(f"head_hash: {check.head_hash}")
        print(f"{access.n_records} access record(s): "
              + ("chain intact" if access.ok else f"{len(access.problems)} problem(s)")
              + f", head_hash {access.head_hash}")
        if check.anchor and check.anchor["found"]:
            print(f"expected head found ({check.anchor['records_since']} record(s) added since)")
        if cp_check is not None:
            signed = ", ".join(f"{s['name']} {s['state']}" for s in cp_check.signatures)
            if cp_check.ok:
                print(f"checkpoint: the ledger extends it ({cp_check.size} record(s) covered, "
                      f"{cp_check.records_since} added since; signatures: {signed})")
            else:
                print(f"checkpoint: FAILED ({len(cp_check.problems)} problem(s); signatures: "
                      f"{signed})")
    raise typer.Exit(0 if result["ok"] else 1)


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Write the signed checkpoint here (atomically; an existing file is replaced). Keep a copy where the ledger's writers cannot change it.")],
    ledger: LedgerOpt = None, signing_key: SigningKeyOpt = None, key_name: KeyNameOpt = None,
) -> None:
    """Sign a checkpoint of the ledger (its size and Merkle root) with the signing key.

    The number of export records and their Merkle root (RFC 6962) as a C2SP tlog-checkpoint,
    signed with the Ed25519 signing key (created on first use). The checkpoint goes to --out
    and stdout (and is kept beside the key, in checkpoints/), the public key to stderr.

    Exit codes: 0 written, 1 the ledger check found problems or the ledger does not extend
    the last checkpoint this key signed of it (nothing signed), 2 the ledger, key or output
    cannot be used.
    """
    from ..ledger.checkpoint import check_against_last, last_checkpoint_path, sign_checkpoint
    from ..ledger.note import load_or_create_signer

    if out.is_dir():
        raise _fail(f"bad arguments: --out {out}: is a folder")
    try:
        with Ledger(ledger, create=False) as book:
            check = book.check()
            if not check.ok:
                for p in check.problems:
                    err.print(f"[red]problem:[/] {escape(p)}")
                raise _fail(f"the ledger at {book.path} has {len(check.problems)} problem(s); "
                            "no checkpoint was signed (a signature would vouch for them)", 1)
            signer, created = load_or_create_signer(signing_key, key_name)
            last = check_against_last(book, signer)
            if last is not None and not last.ok:
                for p in last.problems:
                    err.print(f"[red]problem:[/] {escape(p)}")
                raise _fail(f"the ledger does not extend the last checkpoint this key signed of "
                            f"it ({last.size} record(s), kept in "
                            f"{last_checkpoint_path(signer, book.ledger_id)}); no checkpoint "
                            "was signed (a log must never sign two inconsistent checkpoints)", 1)
            note, cp = sign_checkpoint(book, signer)
            kept = last_checkpoint_path(signer, book.ledger_id)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    target = out  # named in the error, not atomic_write's temporary file beside it
    try:
        atomic_write(out, note.encode("utf-8"), mode=0o644)
        if kept is not None:
            target = kept
            kept.parent.mkdir(mode=0o700, exist_ok=True)
            atomic_write(kept, note.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise _fail(f"{target}: cannot write the checkpoint ({exc.strerror or exc})") from None
    sys.stdout.write(note)
    if created:
        err.print(f"[yellow]created the checkpoint signing key[/] {escape(str(signer.path))} "
                  f"(public key in {escape(str(signer.path))}.pub): back it up and escrow it "
                  "like the site key")
    err.print(f"checkpoint of {cp.size} export record(s) written to {escape(str(out))}, signed by "
              f"{escape(signer.name)}")
    err.print(f"public key: {escape(signer.verifier.vkey)}")


@ledger_app.command("witness")
def ledger_witness(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", metavar="FILE", help="The signed checkpoint another site sent.")],
    signing_key: Annotated[Path, typer.Option("--signing-key", metavar="PATH", help="This (witnessing) site's own Ed25519 signing key; created on first use, with its public key in PATH.pub.")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Write the cosigned checkpoint here (atomically).")],
    public_key: PublicKeyOpt = None, key_name: KeyNameOpt = None,
) -> None:
    """Witness another site's checkpoint: verify its signature, then add this site's.

    The signature is verified with that site's public key (--public-key), then this site's
    signature line is added (a plain Ed25519 note signature; C2SP signed notes allow extra
    lines).

    Exit codes: 0 cosigned, 1 the checkpoint's signature is missing or does not verify
    (nothing written), 2 a file or key cannot be used.
    """
    from ..ledger.checkpoint import read_checkpoint, witness
    from ..ledger.note import check_signatures, load_or_create_signer

    if out.is_dir():
        raise _fail(f"bad arguments: --out {out}: is a folder")
    try:
        log_key = _verifier(public_key)
        try:
            data = checkpoint.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{checkpoint}: cannot read the checkpoint "
                                  f"({exc.strerror or exc})") from None
        with _naming(checkpoint):
            cp, note = read_checkpoint(data)
        state = check_signatures(note, [log_key])[log_key]
        if state != "valid":
            raise _fail(f"{checkpoint}: the signature of {log_key.name} (key "
                        f"{log_key.key_id:08x}) is {state}: not cosigned", 1)
        signer, created = load_or_create_signer(signing_key, key_name)
        cosigned = witness(data, log_key=log_key, signer=signer)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    try:
        atomic_write(out, cosigned.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise _fail(f"{out}: cannot write the checkpoint ({exc.strerror or exc})") from None
    sys.stdout.write(cosigned)
    if created:
        err.print(f"[yellow]created the witness signing key[/] {escape(str(signer.path))} "
                  f"(public key in {escape(str(signer.path))}.pub)")
    err.print(f"checkpoint of {escape(cp.origin)} ({cp.size} record(s)) cosigned by "
              f"{escape(signer.name)}, written to {escape(str(out))}")
    err.print(f"witness public key: {escape(signer.verifier.vkey)}")


@ledger_app.command("migrate")
def ledger_migrate(
    to: Annotated[str, typer.Option("--to", metavar="PATH|URL", help="The new ledger: a PostgreSQL site postgresql://user@host:port/db?site=NAME (created if missing) or a new SQLite file; it must be empty.")],
    ledger: LedgerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="One JSON object on stdout: from, to, ledger_id, copied (rows per table), n_records, head_hash, access_head_hash, ok.")] = False,
) -> None:
    """Copy a ledger, row for row, into a new empty one (e.g. a SQLite file into a PostgreSQL
    site), keeping its ledger id, record ids and hashes; then check that the copy has the
    same chain heads.

    Stop the writers (embed, the gateway) first and point them at the new ledger afterwards:
    the old one is only read and stays as it was, and two writable copies would fork the chain.

    Exit codes: 0 copied and the same, 1 copied but the copy's check differs from the
    source's, 2 a ledger cannot be used (or the new one is not empty).
    """
    try:
        with Ledger(ledger, create=False) as source, Ledger(to) as target:
            before, before_access = source.check(), source.check_access()
            copied = target.copy_from(source)
            after, after_access = target.check(), target.check_access()
            names = (str(source.path), str(target.path), target.ledger_id)
    except LeaktraceError as exc:
        if as_json:
            print(json.dumps({"error": str(exc)}))
        raise _fail(str(exc)) from None
    same = ((after.head_hash, after.n_records, after.problems) ==
            (before.head_hash, before.n_records, before.problems)
            and after_access.head_hash == before_access.head_hash)
    if as_json:
        print(json.dumps({"from": names[0], "to": names[1], "ledger_id": names[2],
                          "copied": copied, "n_records": after.n_records,
                          "head_hash": after.head_hash, "access_head_hash": after_access.head_hash,
                          "ok": same}))
    else:
        print(f"copied {copied['exports']} export record(s), {copied['recipients']} "
              f"recipient(s), {copied['access']} access row(s), {copied['deliveries']} "
              f"deliveries and {copied['sources']} source feature set(s) from {names[0]} to "
              f"{names[1]} (ledger_id {names[2]}); head_hash {after.head_hash}")
    if not same:
        err.print("[bold red]the copy's chain check differs from the source's[/]")
    raise typer.Exit(0 if same else 1)


@ledger_app.command("export")
def ledger_export(
    fmt: Annotated[str, typer.Option("--format", metavar="csv|json", help="csv (one row per export, after '#' lines with the ledger id and chain check) or json.")],
    ledger: LedgerOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write to this file (atomically, readable by its owner only) instead of stdout; an existing file is replaced.")] = None,
    expect_head: ExpectHeadOpt = None, operator: OperatorOpt = None,
) -> None:
    """Write every export record with its hashes and the chain check, as CSV or JSON.

    The ledger id and the chain check come with the records. The key is never in it (only
    key fingerprints).

    Exit codes: 0 written and intact, 1 written but the chain check found problems, 2 the
    ledger or output cannot be used.
    """
    if fmt not in EXPORT_FORMATS:
        raise _fail(f"bad arguments: --format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if out is not None and out.is_dir():
        raise _fail(f"bad arguments: --out {out}: is a folder")
    who = _who(operator)
    what = {"format": fmt, "out": str(out) if out is not None else "stdout"}
    try:
        with Ledger(ledger, create=False) as book:
            text, check = export_table(book, fmt, expect_head=expect_head)
            ids = [r.id for r in book.exports()]
    except LeaktraceError as exc:
        _record_access(ledger, AccessEvent(who, "ledger export", what, "error", str(exc)))
        raise _fail(str(exc)) from None
    what.update(export_ids=id_ranges(ids), count=len(ids))
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            atomic_write(out, text.encode("utf-8"))
        except OSError as exc:
            message = f"{out}: cannot write the export ({exc.strerror or exc})"
            _record_access(ledger, AccessEvent(who, "ledger export", what, "error", message))
            raise _fail(message) from None
    _record_access(ledger, AccessEvent(
        who, "ledger export", what, "exported",
        "chain intact" if check.ok else f"{len(check.problems)} chain problem(s)"))
    for p in check.problems:
        err.print(f"[red]problem:[/] {escape(p)}")
    err.print(f"{check.n_records} export record(s), "
              + ("chain intact" if check.ok else f"{len(check.problems)} problem(s)")
              + f", head_hash {check.head_hash}" + (f", written to {escape(str(out))}" if out else ""))
    raise typer.Exit(0 if check.ok else 1)


@ledger_app.command("audit")
def ledger_audit(
    fmt: Annotated[str, typer.Option("--format", metavar="dicom", help="dicom: DICOM audit messages (PS3.15 Annex A.5, the XML of IHE ATNA), one per access.")] = "dicom",
    ledger: LedgerOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the messages to this file, one per line (atomically; an existing file is replaced). Default: stdout.")] = None,
    syslog: Annotated[Optional[str], typer.Option("--syslog", metavar="URL", help="Send them to a syslog receiver (an Audit Record Repository) instead: udp://host:port (RFC 5426) or tcp://host:port (RFC 6587 octet counting); RFC 5424, MSGID IHE+RFC-3881.")] = None,
    since: Annotated[int, typer.Option("--since", metavar="ID", help="Only the accesses recorded after the one with this id (0: all).")] = 0,
    operator: OperatorOpt = None,
) -> None:
    """Export the access log (who looked) as DICOM audit messages, to a file or to syslog.

    Every recorded detect, trace, ledger list, ledger export, ledger audit and gateway
    transfer becomes one audit message: Query (110112), Export (110106) or DICOM Instances
    Transferred (110104). The access log's hash chain is checked first; this export is
    recorded in it too.

    Exit codes: 0 written or sent and the access log intact, 1 written or sent but its chain
    check found problems, 2 the ledger, output or syslog receiver cannot be used.
    """
    from ..ledger.audit import (AUDIT_FORMATS, AuditError, audit_xml, parse_syslog_url, send_syslog,
                        syslog_message)

    if fmt not in AUDIT_FORMATS:
        raise _fail(f"bad arguments: --format {fmt!r}: use one of {', '.join(AUDIT_FORMATS)}")
    if out is not None and syslog is not None:
        raise _fail("bad arguments: give --out or --syslog, not both")
    if out is not None and out.is_dir():
        raise _fail(f"bad arguments: --out {out}: is a folder")
    if since < 0:
        raise _fail(f"bad arguments: --since {since}: must be 0 or more")
    who = _who(operator)
    try:
        target = parse_syslog_url(syslog) if syslog is not None else None
        with Ledger(ledger, create=False) as book:
            check = book.check_access()
            rows = book.accesses(since=since)
            messages = [audit_xml(r, ledger_id=book.ledger_id) for r in rows]
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    where = str(target) if target is not None else str(out) if out is not None else "stdout"
    what = {"access_ids": id_ranges(r.id for r in rows), "count": len(rows), "format": fmt,
            ("syslog" if target is not None else "out"): where}
    try:
        if target is not None:
            send_syslog(target, (syslog_message(m) for m in messages))
        elif out is not None:
            try:
                atomic_write(out, b"".join(m + b"\n" for m in messages))
            except OSError as exc:
                raise AuditError(f"{out}: cannot write the audit messages "
                                      f"({exc.strerror or exc})") from None
        else:
            sys.stdout.buffer.write(b"".join(m + b"\n" for m in messages))
            sys.stdout.flush()
    except LeaktraceError as exc:
        _record_access(ledger, AccessEvent(who, "ledger audit", what, "error", str(exc)))
        raise _fail(str(exc)) from None
    _record_access(ledger, AccessEvent(
        who, "ledger audit", what, "sent" if target is not None else "exported",
        "access log intact" if check.ok else f"{len(check.problems)} access log problem(s)"))
    for p in check.problems:
        err.print(f"[red]problem:[/] {escape(p)}")
    sent_ids = f"(access {what['access_ids']}) " if rows else ""
    err.print(f"{len(rows)} audit message(s) {sent_ids}" + ("sent to" if target is not None else
                                                   "written to") + f" {escape(where)}; access log "
              + ("chain intact" if check.ok else f"{len(check.problems)} problem(s)")
              + f", head_hash {check.head_hash}")
    raise typer.Exit(0 if check.ok else 1)
