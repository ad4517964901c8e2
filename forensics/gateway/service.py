"""Running the gateway as a service, and its first-run check (``leaktrace gateway``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from watermark.errors import LeaktraceError
from watermark.keys import key_path as key_path_of, load_key

from ..export import site_key_for
from ..ledger import Ledger, default_ledger_path, ledger_exists
from ..ledger.db import is_server_url, parse_postgres_url
from .config import GatewayConfig
from .node import Gateway, echo, prepare_store

__all__ = ["CheckResult", "check", "configure_logging", "serve"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@dataclass
class CheckResult:
    """What ``gateway --check`` found: lines to print and the nodes that did not answer."""

    lines: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every node answered C-ECHO, 1 otherwise."""
        return 1 if self.unreachable else 0


def check(config: GatewayConfig, *, ledger_path, key_path) -> CheckResult:
    """Check the key, the ledger and the store, then C-ECHO the PACS and every recipient.

    Raises
    ------
    LeaktraceError
        The key or the ledger cannot be used (a configuration error: exit 2).
    """
    out = CheckResult()
    path = default_ledger_path() if ledger_path is None else ledger_path
    if not is_server_url(path):
        path = Path(path).expanduser()
    if ledger_exists(path) or (not is_server_url(path) and path.exists()):  # a folder: refused
        with Ledger(path, create=False) as book:
            exports = book.last_export_id()
            key = _key_for(book, key_path)
            pending = len(book.deliveries("pending"))
            failed = len(book.deliveries("failed"))
            shown = book.path
        out.lines.append(f"ledger: {shown} ({exports} exports, {pending} deliveries pending, "
                         f"{failed} failed)")
    else:
        key = _key_for(None, key_path)
        shown = parse_postgres_url(path).display if is_server_url(path) else path
        out.lines.append(f"ledger: {shown} (does not exist yet; created at the first export)")
    out.lines.append(f"key: fingerprint {key.fingerprint}" if key is not None else
                     f"key: {key_path_of(key_path)} does not exist yet; the gateway creates it "
                     "when it starts (the ledger has no exports)")
    prepare_store(config)
    out.lines.append(f"store: {config.store} (writable)")
    for role, node in [("pacs", config.pacs)] + [("recipient", r) for r in config.recipients]:
        if not node.listens:
            out.lines.append(f"{role} {node.ae_title}: no address (queries and retrieves "
                             "with C-GET only; not echoed)")
            continue
        problem = echo(config.ae_title, node)
        label = f"{role} {node.ae_title} at {node.address}"
        if problem:
            out.unreachable.append(node.ae_title)
            out.lines.append(f"{label}: NOT REACHABLE: {problem}")
        else:
            out.lines.append(f"{label}: C-ECHO ok")
    return out


def _key_for(book: Ledger | None, key_path):
    """The key ``serve`` would use, without creating one: None when its file does not exist
    and the ledger has no exports (the gateway then creates it), else as
    :func:`forensics.export.site_key_for` (LedgerKeyError for an unseen or missing key)."""
    if not key_path_of(key_path).exists() and (book is None or book.export_count() == 0):
        return None
    if book is None:
        return load_key(key_path)
    return site_key_for(book, key_path)[0]


def configure_logging(config: GatewayConfig) -> logging.Handler:
    """One line per association and per instance to the configured log file, else stderr.
    pynetdicom's own log stays quiet below ERROR (it would log every PDU at INFO)."""
    if config.log is not None:
        config.log.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(config.log, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("leaktrace.gateway")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    return handler


def serve(config: GatewayConfig, *, ledger_path, key, workers: int = 1) -> None:
    """Serve until SIGINT or SIGTERM, then stop listening, end the associations and raise
    KeyboardInterrupt (the command line exits 130).

    Raises
    ------
    LeaktraceError
        The store, the ledger or the listening address cannot be used.
    """
    gateway = Gateway(config, ledger_path=ledger_path, key=key, workers=workers)
    stopping = threading.Event()

    def stop(signum, frame):
        stopping.set()

    # pynetdicom's blocking server swallows KeyboardInterrupt; serve in its threads and wait
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            gateway.start(block=False)
        except OSError as exc:
            raise LeaktraceError(f"cannot listen on {config.host}:{config.port} "
                                 f"({exc.strerror or exc})") from None
        while not stopping.wait(1.0):
            pass
    finally:
        gateway.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logging.getLogger("leaktrace.gateway").info("stopped")
    raise KeyboardInterrupt
