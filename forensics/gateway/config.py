"""The gateway's configuration: one TOML file (read with :mod:`tomllib`), checked as a whole.

::

    [gateway]
    ae_title = "LEAKTRACE"          # the AE title workstations call for query/retrieve
    listen = "127.0.0.1:11112"      # host:port the gateway listens on
    store = "/var/lib/leaktrace/gateway"   # originals kept for `trace`, and the spool
    pass_unmarked = ["SR", "PR", "KO"]     # modalities forwarded unmarked (and recorded)
    log = "/var/log/leaktrace/gateway.log" # optional; default stderr

    [pacs]
    ae_title = "ORTHANC"
    address = "127.0.0.1:4242"

    [[recipients]]
    ae_title = "DRX_WS"
    address = "127.0.0.1:11113"
    name = "Dr. X (cardiology, St. Elsewhere)"

    [[recipients]]                  # no address: queries and retrieves with C-GET only
    ae_title = "VIEWER_2"
    name = "Reading room 2"

    [[recipients]]                  # gets de-identified copies (PS3.15 Annex E), as embed
    ae_title = "TEACHING"           # --deidentify --deid-option ... does
    address = "10.0.0.7:104"
    name = "Teaching file, University X"
    deidentify = true
    deid_options = ["clean-pixel-data", "retain-patient-characteristics"]

AE titles follow DICOM PS3.5 section 6.2 (VR AE): 1 to 16 characters of the default
character repertoire, no backslash or control characters, not only spaces; leading and
trailing spaces are not significant. A recipient's ``name`` is the name recorded in the ledger
for every copy marked for it (the same as ``embed --recipient``). A recipient with
``deidentify = true`` gets every copy de-identified before it is marked, with the
``deid_options`` named as ``embed --deid-option`` names them; its C-FIND queries are refused
(the PACS's answers carry the identities the copies no longer have), so it receives what
the PACS routes to it or what it retrieves by UID.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from watermark.errors import LeaktraceError

from ..ledger import normalise_recipient

__all__ = ["GatewayConfig", "Node", "Recipient", "ConfigError", "load_config",
           "parse_config", "default_store"]


class ConfigError(LeaktraceError):
    """The gateway's configuration file is missing, not TOML, or inconsistent."""


@dataclass(frozen=True)
class Node:
    """A DICOM application entity on the network: AE title, host and TCP port."""

    ae_title: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, or "" for a recipient configured without an address."""
        return f"{self.host}:{self.port}" if self.host else ""

    @property
    def listens(self) -> bool:
        """Whether the node has an address to send to (a C-GET-only workstation has none)."""
        return bool(self.host)


@dataclass(frozen=True)
class Recipient(Node):
    """A party the gateway marks copies for; ``name`` is the ledger's recipient name."""

    name: str = ""
    deidentify: bool = False
    deid_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    """A checked gateway configuration (see the module docstring for the file)."""

    path: Path
    ae_title: str
    host: str
    port: int
    pacs: Node
    recipients: tuple[Recipient, ...]
    store: Path
    pass_unmarked: frozenset[str] = field(default_factory=frozenset)
    log: Path | None = None

    def recipient(self, ae_title: str) -> Recipient | None:
        """The recipient with this AE title (spaces around it ignored), or None."""
        ae_title = ae_title.strip()
        return next((r for r in self.recipients if r.ae_title == ae_title), None)


def default_store() -> Path:
    """``$XDG_DATA_HOME/leaktrace/gateway`` (``~/.local/share/leaktrace/gateway``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "leaktrace" / "gateway"


def load_config(path: str | os.PathLike) -> GatewayConfig:
    """Read and check a gateway configuration file.

    Raises
    ------
    ConfigError
        The file cannot be read, is not TOML, or a value is missing or wrong; the message
        names the file and the key (``recipients[2].address``) and says what is expected.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the gateway configuration "
                          f"({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(doc, path=path)


def parse_config(doc: dict, *, path: Path = Path("gateway.toml")) -> GatewayConfig:
    """Check a parsed configuration (a dict as :func:`tomllib.loads` returns it).

    Raises
    ------
    ConfigError
        As :func:`load_config`.
    """
    def fail(where: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: {where}: {problem}")

    def table(name: str) -> dict:
        value = doc.get(name)
        if not isinstance(value, dict):
            raise fail(f"[{name}]", "missing (see `leaktrace gateway --help` for an example)")
        return value

    def text(tbl: dict, where: str, key: str, *, required: bool = True) -> str | None:
        value = tbl.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{where}.{key}", "missing or empty (a text value is expected)")
        return value

    def node(tbl: dict, where: str, key: str = "address") -> tuple[str, int]:
        value = text(tbl, where, key)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise fail(f"{where}.{key}", f"{value!r} is not host:port with a port 1..65535")
        return host.strip("[]"), int(port)

    gw = table("gateway")
    known = {"ae_title", "listen", "store", "pass_unmarked", "log"}
    for unknown in sorted(set(gw) - known):
        raise fail(f"gateway.{unknown}", "unknown key (known: " + ", ".join(sorted(known)) + ")")
    ae_title = _ae_title(text(gw, "gateway", "ae_title"), fail, "gateway.ae_title")
    host, port = node(gw, "gateway", "listen")
    pacs_tbl = table("pacs")
    pacs = Node(_ae_title(text(pacs_tbl, "pacs", "ae_title"), fail, "pacs.ae_title"),
                *node(pacs_tbl, "pacs"))
    raw = doc.get("recipients")
    if not isinstance(raw, list) or not raw:
        raise fail("[[recipients]]", "no recipient configured; add at least one "
                                     "[[recipients]] table with ae_title, address and name")
    recipients: list[Recipient] = []
    for i, item in enumerate(raw, start=1):
        where = f"recipients[{i}]"
        if not isinstance(item, dict):
            raise fail(where, "must be a table with ae_title, address and name")
        allowed = {"ae_title", "address", "name", "deidentify", "deid_options"}
        for unknown in sorted(set(item) - allowed):
            raise fail(f"{where}.{unknown}", "unknown key (known: "
                                             + ", ".join(sorted(allowed)) + ")")
        deidentify, deid_options = _deid(item, where, fail)
        title = _ae_title(text(item, where, "ae_title"), fail, f"{where}.ae_title")
        raw_name = text(item, where, "name")
        try:
            name = normalise_recipient(raw_name)
        except LeaktraceError as exc:
            raise fail(f"{where}.name", str(exc)) from None
        if title in (ae_title, pacs.ae_title):
            raise fail(f"{where}.ae_title", f"{title!r} is also the gateway's or the PACS's "
                                            "AE title; every AE title must be distinct")
        for other in recipients:
            if other.ae_title == title:
                raise fail(f"{where}.ae_title", f"{title!r} is configured twice")
            if other.name == name:
                raise fail(f"{where}.name", f"{name!r} is configured twice (for "
                                            f"{other.ae_title!r} and {title!r})")
        # no address: a workstation that only queries and retrieves with C-GET (it listens
        # for nothing, so it cannot be a C-MOVE destination or a route)
        where_to = node(item, where) if "address" in item else ("", 0)
        recipients.append(Recipient(title, *where_to, name=name, deidentify=deidentify,
                                    deid_options=deid_options))
    if pacs.ae_title == ae_title:
        raise fail("pacs.ae_title", "the PACS and the gateway need different AE titles")
    passed = gw.get("pass_unmarked", [])
    if not isinstance(passed, list) or not all(isinstance(m, str) and m.strip() for m in passed):
        raise fail("gateway.pass_unmarked", "must be a list of modalities, e.g. [\"SR\", \"PR\"]")
    store = text(gw, "gateway", "store", required=False)
    log = text(gw, "gateway", "log", required=False)
    return GatewayConfig(path=path, ae_title=ae_title, host=host, port=port, pacs=pacs,
                         recipients=tuple(recipients),
                         store=Path(store).expanduser() if store else default_store(),
                         pass_unmarked=frozenset(m.strip().upper() for m in passed),
                         log=Path(log).expanduser() if log else None)


def _deid(item: dict, where: str, fail) -> tuple[bool, tuple[str, ...]]:
    """A recipient's ``deidentify`` (bool) and ``deid_options`` (list of option names)."""
    from ..burnedin import engine_available
    from ..deidentify import OCR_INSTALL, check_options

    deidentify = item.get("deidentify", False)
    if not isinstance(deidentify, bool):
        raise fail(f"{where}.deidentify", "must be true or false")
    options = item.get("deid_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise fail(f"{where}.deid_options", 'must be a list of option names, e.g. '
                                            '["clean-pixel-data"]')
    if options and not deidentify:
        raise fail(f"{where}.deid_options", "given without deidentify = true")
    try:
        options = check_options(options)
    except LeaktraceError as exc:
        raise fail(f"{where}.deid_options", str(exc).replace("--deid-option ", "")) from None
    if "clean-pixel-data" in options and engine_available() is None:
        raise fail(f"{where}.deid_options", "clean-pixel-data needs an OCR engine to find "
                                            f"burned-in text, and none is installed ({OCR_INSTALL})")
    return deidentify, options


def _ae_title(value: str, fail, where: str) -> str:
    """Check an AE title (PS3.5 section 6.2, VR AE) and return it without surrounding spaces."""
    title = value.strip()
    if len(value) > 16 or not title:
        raise fail(where, f"{value!r}: an AE title has 1 to 16 characters")
    bad = [c for c in title if c == "\\" or not 0x20 <= ord(c) < 0x7F]
    if bad:
        raise fail(where, f"{value!r}: an AE title has no backslash, control or non-ASCII "
                          f"characters (found {bad[0]!r})")
    return title
