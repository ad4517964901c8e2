"""The access log as DICOM audit messages, to a file or to a syslog receiver.

Each row of the ledger's access log (:meth:`forensics.ledger.Ledger.accesses`) becomes one
audit message of DICOM PS3.15 Annex A.5 [1]_ (the XML of the IHE ATNA profile, which hospitals feed
into their Audit Record Repository):

=====================  ==========================================  ===============
action                 EventID (DCM)                               EventActionCode
=====================  ==========================================  ===============
``detect``, ``trace``  110112 Query                                E (execute)
``ledger list``        110112 Query                                E
``ledger export``      110106 Export                               R (read)
``ledger audit``       110106 Export                               R
``gateway transfer``   110104 DICOM Instances Transferred           R
=====================  ==========================================  ===============

An ``EventTypeCode`` (code system ``leaktrace``) names the leaktrace action, so a repository
can tell ``detect`` from ``trace``. ``EventOutcomeIndicator`` is 0 (success) for every outcome
but ``error`` and ``failed``, which are 4 (minor failure) with the detail as
``EventOutcomeDescription``. Active participants (``RoleIDCode`` 110153 Source, 110152
Destination, 110154 Destination Media): the requestor (``UserID``: the operator or OS user;
the gateway's AE title, also as ``AlternativeUserID`` ``AETITLES=...``) and the other side
(leaktrace answering a query, the file or ``stdout`` an export went to, the receiving AE
title). Participant objects: the leak, identified by its SHA-256 (ID type code ``leak-sha256``
of code system ``leaktrace``: DICOM has none for a file digest), with the query as
``ParticipantObjectQuery``; the ledger (by ``ledger_id``) with the export ids; the study
(110180 Study Instance UID) of an instance sent, with its SOP class and SOP Instance UID in
``ParticipantObjectDescription``. Each message also carries, as ``ParticipantObjectDetail``,
the access row's id and ``record_hash``, so a repository's copy can be checked against the
ledger's chain.

Not in the messages: a Patient participant object (A.5.3.4 and A.5.3.6 ask for one), because
the ledger holds no patient identity, by design.

Transport: a file holds one message per line (UTF-8 XML, no declaration). Syslog is
RFC 5424 [3]_ with PRI 85 (facility 10, security/authorization; severity 5, notice), APP-NAME
``leaktrace``, PROCID the process id, MSGID ``IHE+RFC-3881`` and no structured data, as IHE
ITI TF-2 ITI-20 (Record Audit Event) [2]_ asks; the XML follows without a byte order mark. Over UDP
one message per datagram (RFC 5426); over TCP each message is framed by octet counting
(RFC 6587 section 3.4.1, the framing RFC 5425 uses over TLS). TLS (RFC 5425, which ATNA
requires between nodes) is not offered: send to a local relay (rsyslog, syslog-ng) that
forwards over TLS.

References
----------
.. [1] DICOM PS3.15, Annex A.5 "Audit Trail Message Format Profile" (schema: A.5.1; messages:
   A.5.3). https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_A.5
.. [2] IHE IT Infrastructure Technical Framework, Vol. 2, ITI-20 Record Audit Event.
.. [3] RFC 5424, The Syslog Protocol. RFC 5426, Transmission of Syslog Messages over UDP.
   RFC 6587, Transmission of Syslog Messages over TCP. RFC 5425, ... over TLS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from watermark.errors import LeaktraceError

from .store import AccessRecord

__all__ = ["AUDIT_FORMATS", "EVENTS", "audit_message", "audit_xml", "syslog_message",
           "SyslogTarget", "parse_syslog_url", "send_syslog", "AuditError",
           "SYSLOG_PRI", "SYSLOG_MSGID", "SYSLOG_APP_NAME"]

#: Formats of ``leaktrace ledger audit --format``.
AUDIT_FORMATS = ("dicom",)
#: PRI of every syslog message: facility 10 (security/authorization) * 8 + severity 5 (notice).
SYSLOG_PRI = 10 * 8 + 5
SYSLOG_APP_NAME = "leaktrace"
SYSLOG_MSGID = "IHE+RFC-3881"

#: action -> (EventID code, its meaning, EventActionCode)
EVENTS = {
    "detect": ("110112", "Query", "E"),
    "trace": ("110112", "Query", "E"),
    "ledger list": ("110112", "Query", "E"),
    "ledger reidentify": ("110112", "Query", "E"),
    "ledger export": ("110106", "Export", "R"),
    "ledger audit": ("110106", "Export", "R"),
    "gateway transfer": ("110104", "DICOM Instances Transferred", "R"),
}
_SOURCE = ("110153", "Source Role ID")
_DESTINATION = ("110152", "Destination Role ID")
_DESTINATION_MEDIA = ("110154", "Destination Media")
_FAILED = ("error", "failed")


class AuditError(LeaktraceError):
    """A syslog address that cannot be used, or a receiver that cannot be reached."""


def _code(parent: ET.Element, tag: str, code: str, meaning: str,
          system: str = "DCM") -> ET.Element:
    """A coded value (A.5.1 ``CodedValueType``: csd-code, codeSystemName, originalText)."""
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system,
                                       "originalText": meaning})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _detail(parent: ET.Element, kind: str, value) -> None:
    ET.SubElement(parent, "ParticipantObjectDetail", {"type": kind, "value": _b64(str(value))})


def _participant(message: ET.Element, user: str, *, requestor: bool, role: tuple[str, str],
                 host: str | None = None, ae_title: bool = False) -> None:
    attrs = {"UserID": user or "-", "UserIsRequestor": "true" if requestor else "false"}
    if ae_title:
        attrs["AlternativeUserID"] = f"AETITLES={user}"
    if host:
        attrs.update(NetworkAccessPointID=host, NetworkAccessPointTypeCode="1")
    _code(ET.SubElement(message, "ActiveParticipant", attrs), "RoleIDCode", *role)


def audit_message(record: AccessRecord, *, ledger_id: str | None) -> ET.Element:
    """The DICOM audit message (PS3.15 A.5) of one access row.

    Parameters
    ----------
    record : AccessRecord
    ledger_id : str or None
        The ledger's; ``AuditEnterpriseSiteID`` is ``leaktrace/ledger/<ledger_id>``.

    Returns
    -------
    xml.etree.ElementTree.Element
        ``AuditMessage`` with ``EventIdentification``, ``ActiveParticipant`` (two),
        ``AuditSourceIdentification`` and ``ParticipantObjectIdentification``, in the order
        the A.5.1 schema requires (see the module docstring for the codes).
    """
    code, meaning, action_code = EVENTS.get(record.action, EVENTS["detect"])
    what = record.what_dict
    failed = record.outcome in _FAILED
    message = ET.Element("AuditMessage")
    event = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": action_code, "EventDateTime": record.created_utc,
        "EventOutcomeIndicator": "4" if failed else "0"})
    _code(event, "EventID", code, meaning)
    _code(event, "EventTypeCode", record.action.replace(" ", "-"), f"leaktrace {record.action}",
          system="leaktrace")
    if failed:
        ET.SubElement(event, "EventOutcomeDescription").text = record.detail or record.outcome

    gateway = record.action == "gateway transfer"
    _participant(message, record.who, requestor=True, role=_SOURCE, host=record.host,
                 ae_title=gateway)
    if gateway:
        _participant(message, record.peer, requestor=False, role=_DESTINATION, ae_title=True)
    elif code == "110106":
        _participant(message, str(what.get("out") or what.get("syslog") or "stdout"),
                     requestor=False, role=_DESTINATION_MEDIA)
    else:
        _participant(message, "leaktrace", requestor=False, role=_DESTINATION, host=record.host)

    source = ET.SubElement(message, "AuditSourceIdentification", {
        "AuditSourceID": record.host or "-"})
    if ledger_id:
        source.set("AuditEnterpriseSiteID", f"leaktrace/ledger/{ledger_id}")
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4" if gateway else "1"})

    query = json.dumps({"action": record.action, **what}, sort_keys=True, ensure_ascii=False)
    if gateway:
        obj = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": what.get("study_instance_uid") or "-",
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"})
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        marked = what.get("export_id") is not None
        ET.SubElement(obj, "ParticipantObjectName").text = (
            f"copy marked for {what.get('recipient', record.peer)} (export "
            f"{what.get('export_id')})" if marked else "instance passed unmarked")
        details = {k: what.get(k) for k in ("export_id", "delivery_id", "route",
                                            "source_sop_uid")}
    elif "leak_sha256" in what or record.action in ("detect", "trace"):
        obj = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": what.get("leak_sha256") or "-",
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "24"})
        _code(obj, "ParticipantObjectIDTypeCode", "leak-sha256", "SHA-256 of the leaked image",
              system="leaktrace")
        ET.SubElement(obj, "ParticipantObjectQuery").text = _b64(query)
        details = {"leak_name": what.get("leak_name")}
    else:
        attrs = {"ParticipantObjectID": ledger_id or "-", "ParticipantObjectTypeCode": "2",
                 "ParticipantObjectTypeCodeRole": "22"}
        if code == "110106":
            attrs["ParticipantObjectDataLifeCycle"] = "10"  # export
        obj = ET.SubElement(message, "ParticipantObjectIdentification", attrs)
        _code(obj, "ParticipantObjectIDTypeCode", "ledger-id", "leaktrace ledger id",
              system="leaktrace")
        if code == "110106":
            ET.SubElement(obj, "ParticipantObjectName").text = (
                "leaktrace access log" if record.action == "ledger audit"
                else "leaktrace export records")
        else:
            ET.SubElement(obj, "ParticipantObjectQuery").text = _b64(query)
        details = {k: what.get(k) for k in ("export_ids", "access_ids", "count", "format")}
    for kind, value in details.items():
        if value is not None and value != "":
            _detail(obj, kind, value)
    _detail(obj, "outcome", f"{record.outcome}: {record.detail}" if record.detail
            else record.outcome)
    _detail(obj, "access_id", record.id)
    _detail(obj, "access_record_hash", record.record_hash)
    if gateway and what.get("sop_instance_uid"):
        desc = ET.SubElement(obj, "ParticipantObjectDescription")
        sop = ET.SubElement(desc, "SOPClass", {"NumberOfInstances": "1"})
        if what.get("sop_class_uid"):
            sop.set("UID", what["sop_class_uid"])
        ET.SubElement(sop, "Instance", {"UID": what["sop_instance_uid"]})
    return message


def audit_xml(record: AccessRecord, *, ledger_id: str | None) -> bytes:
    """:func:`audit_message` as UTF-8 XML on one line, without an XML declaration."""
    return ET.tostring(audit_message(record, ledger_id=ledger_id), encoding="utf-8",
                       xml_declaration=False)


def _printable(text: str, limit: int) -> str:
    """An RFC 5424 header field: PRINTUSASCII (33-126), at most ``limit``; ``-`` if empty."""
    kept = "".join(ch for ch in text if 33 <= ord(ch) <= 126)[:limit]
    return kept or "-"


def syslog_message(xml: bytes, *, hostname: str | None = None, procid: int | None = None,
                   timestamp: datetime | None = None) -> bytes:
    """One RFC 5424 syslog message carrying an audit message (IHE ITI-20).

    ``<85>1 TIMESTAMP HOSTNAME leaktrace PROCID IHE+RFC-3881 - XML``: PRI
    :data:`SYSLOG_PRI`, version 1, the time of sending (UTC, microseconds), this machine's
    name, APP-NAME :data:`SYSLOG_APP_NAME`, the process id, MSGID :data:`SYSLOG_MSGID`, no
    structured data (``-``), then the XML (UTF-8, no byte order mark).

    Parameters
    ----------
    xml : bytes
    hostname : str, optional
        Default :func:`socket.gethostname`; reduced to printable US-ASCII, at most 255.
    procid : int, optional
        Default :func:`os.getpid`.
    timestamp : datetime, optional
        Default now.
    """
    when = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
    header = " ".join([
        f"<{SYSLOG_PRI}>1",
        when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        _printable(hostname if hostname is not None else socket.gethostname(), 255),
        SYSLOG_APP_NAME,
        _printable(str(procid if procid is not None else os.getpid()), 128),
        SYSLOG_MSGID,
        "-",
    ])
    return header.encode("ascii") + b" " + xml


@dataclass(frozen=True)
class SyslogTarget:
    """Where to send: ``transport`` ``udp`` or ``tcp``, ``host``, ``port``."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_syslog_url(url: str) -> SyslogTarget:
    """``udp://host:port`` or ``tcp://host:port`` (an IPv6 address in brackets).

    Raises
    ------
    AuditError
        Another scheme (``tls://`` included: not supported), no host, or no valid port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp"):
        raise AuditError(f"--syslog {url!r}: use udp://host:port or tcp://host:port (TLS is "
                         "not supported: send to a local relay that forwards over TLS)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.path not in ("", "/"):
        raise AuditError(f"--syslog {url!r}: give a host and a port 1-65535, such as "
                         f"{parts.scheme}://127.0.0.1:514")
    return SyslogTarget(parts.scheme, parts.hostname, port)


def send_syslog(target: SyslogTarget, messages: Iterable[bytes], *,
                timeout: float = 10.0) -> int:
    """Send syslog messages (:func:`syslog_message`) to ``target``; returns how many.

    UDP: one datagram each (RFC 5426). TCP: one connection, each message framed as
    ``LENGTH SP MESSAGE`` (octet counting, RFC 6587 section 3.4.1).

    Raises
    ------
    AuditError
        The host cannot be resolved, the connection is refused or times out, or a message
        is too large for one UDP datagram; the message says how many were sent before.
    """
    sent = 0
    try:
        infos = socket.getaddrinfo(target.host, target.port,
                                   type=socket.SOCK_DGRAM if target.transport == "udp"
                                   else socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            for message in messages:
                if target.transport == "udp":
                    sock.send(message)
                else:
                    sock.sendall(str(len(message)).encode("ascii") + b" " + message)
                sent += 1
    except OSError as exc:
        raise AuditError(f"syslog {target}: {exc.strerror or exc} ({sent} message(s) sent "
                         "before)") from None
    return sent
