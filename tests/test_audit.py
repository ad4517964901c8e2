"""The access log as DICOM audit messages (PS3.15 A.5), to a file and to real syslog
receivers (UDP and TCP sockets on loopback, started here).

The messages are checked against the A.5.1 audit message schema (RELAX NG compact, read from
the standard's text) by :func:`check_a51`, a hand translation of its rules: element order and
cardinality, required attributes, enumerated values, base64 details. No RELAX NG validator
runs (none is installed, and lxml reads only the XML syntax of RELAX NG, not the compact one).
"""

import base64
import binascii
import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
from typer.testing import CliRunner

from forensics import cli
from forensics.ledger.audit import (EVENTS, SyslogTarget, audit_message, audit_xml, parse_syslog_url,
                             syslog_message)
from forensics.ledger import AccessEvent, Ledger
from watermark.errors import LeaktraceError

runner = CliRunner()

# -- A.5.1, as rules -----------------------------------------------------------------------
_CODED = {"csd-code", "codeSystemName", "displayName", "originalText"}
_REQUIRED_CODED = {"csd-code", "codeSystemName", "originalText"}


def _coded(el):
    assert set(el.attrib) <= _CODED and _REQUIRED_CODED <= set(el.attrib), (el.tag, el.attrib)
    assert len(el) == 0


def _attrs(el, required, optional=()):
    assert set(required) <= set(el.attrib), (el.tag, "missing", set(required) - set(el.attrib))
    assert set(el.attrib) <= set(required) | set(optional), (el.tag, el.attrib)


def _sequence(el, pattern):
    """``el``'s children match ``pattern``: (tag, min, max) in order."""
    tags = [c.tag for c in el]
    i = 0
    for tag, low, high in pattern:
        n = 0
        while i < len(tags) and tags[i] == tag and n < high:
            i, n = i + 1, n + 1
        assert n >= low, (el.tag, tags, f"needs {low} {tag}")
    assert i == len(tags), (el.tag, tags, "unexpected", tags[i:])


def _base64(text):
    binascii.a2b_base64(text.encode())  # raises on bad base64
    assert base64.b64encode(base64.b64decode(text)).decode() == text


def check_a51(message):
    """Assert that ``message`` follows the DICOM PS3.15 A.5.1 audit message schema."""
    many = 10 ** 6
    assert message.tag == "AuditMessage" and not message.attrib
    _sequence(message, [("EventIdentification", 1, 1), ("ActiveParticipant", 1, many),
                        ("AuditSourceIdentification", 1, 1),
                        ("ParticipantObjectIdentification", 0, many)])
    event = message.find("EventIdentification")
    _attrs(event, {"EventDateTime", "EventOutcomeIndicator"}, {"EventActionCode"})
    assert event.get("EventActionCode", "C") in "CRUDE"
    assert event.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    assert datetime.fromisoformat(event.get("EventDateTime")).tzinfo is not None
    _sequence(event, [("EventID", 1, 1), ("EventTypeCode", 0, many),
                      ("EventOutcomeDescription", 0, 1)])
    for c in event:
        if c.tag != "EventOutcomeDescription":
            _coded(c)
    for p in message.findall("ActiveParticipant"):
        _attrs(p, {"UserID", "UserIsRequestor"}, {"AlternativeUserID", "UserName",
                                                  "NetworkAccessPointID",
                                                  "NetworkAccessPointTypeCode"})
        assert p.get("UserIsRequestor") in {"true", "false", "1", "0"}
        assert p.get("NetworkAccessPointTypeCode", "1") in {"1", "2", "3", "4", "5"}
        _sequence(p, [("RoleIDCode", 0, many), ("MediaIdentifier", 0, 1)])
        for c in p.findall("RoleIDCode"):
            _coded(c)
    source = message.find("AuditSourceIdentification")
    _attrs(source, {"AuditSourceID"}, {"AuditEnterpriseSiteID"})
    _sequence(source, [("AuditSourceTypeCode", 0, many)])
    for c in source:
        assert "csd-code" in c.attrib and set(c.attrib) <= _CODED
    for obj in message.findall("ParticipantObjectIdentification"):
        _attrs(obj, {"ParticipantObjectID"}, {"ParticipantObjectTypeCode",
                                              "ParticipantObjectTypeCodeRole",
                                              "ParticipantObjectDataLifeCycle",
                                              "ParticipantObjectSensitivity"})
        assert obj.get("ParticipantObjectTypeCode", "1") in {"1", "2", "3", "4"}
        assert int(obj.get("ParticipantObjectTypeCodeRole", "1")) in range(1, 27)
        assert int(obj.get("ParticipantObjectDataLifeCycle", "1")) in range(1, 16)
        tags = [c.tag for c in obj]
        assert tags[0] == "ParticipantObjectIDTypeCode" and len(tags) >= 2
        assert tags[1] in ("ParticipantObjectName", "ParticipantObjectQuery"), tags
        _sequence(obj, [("ParticipantObjectIDTypeCode", 1, 1), (tags[1], 1, 1),
                        ("ParticipantObjectDetail", 0, many),
                        ("ParticipantObjectDescription", 0, many)])
        _coded(obj[0])
        if tags[1] == "ParticipantObjectQuery":
            _base64(obj[1].text)
        for d in obj.findall("ParticipantObjectDetail"):
            _attrs(d, {"type", "value"})
            _base64(d.get("value"))
        for desc in obj.findall("ParticipantObjectDescription"):
            for sop in desc.findall("SOPClass"):
                _attrs(sop, {"NumberOfInstances"}, {"UID"})
                int(sop.get("NumberOfInstances"))
                for inst in sop:
                    assert inst.tag == "Instance" and set(inst.attrib) == {"UID"}


def _details(obj):
    return {d.get("type"): base64.b64decode(d.get("value")).decode()
            for d in obj.findall("ParticipantObjectDetail")}


# -- the messages --------------------------------------------------------------------------
EVENT_OF = {  # action -> what and outcome recorded
    "detect": ({"leak_sha256": "ab" * 32, "leak_name": "leak.jpg"}, "traced", "recipient 3"),
    "trace": ({"leak_sha256": "cd" * 32, "leak_name": "x.png"}, "error", "x.png: no such file"),
    "ledger list": ({"export_ids": "1-4,7", "count": 5}, "listed", ""),
    "ledger export": ({"export_ids": "1-4,7", "count": 5, "format": "csv", "out": "/tmp/e.csv"},
                      "exported", "chain intact"),
    "gateway transfer": ({"route": "move", "delivery_id": 9, "export_id": 7,
                          "sop_instance_uid": "1.2.826.0.1.3", "sop_class_uid":
                          "1.2.840.10008.5.1.4.1.1.1", "study_instance_uid": "1.2.826.0.1.1",
                          "source_sop_uid": "1.2.826.0.1.2", "recipient": "Dr. X"},
                         "delivered", "0x0000"),
}


@pytest.fixture
def access_log(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as book:
        for action, (what, outcome, detail) in EVENT_OF.items():
            who, peer = ("LEAKTRACE", "DRX_WS") if action == "gateway transfer" else ("ana", "")
            book.record_access(AccessEvent(who, action, what, outcome, detail, peer=peer))
        return path, book.ledger_id, book.accesses()


def test_every_action_gives_a_message_that_follows_the_schema(access_log):
    path, ledger_id, rows = access_log
    for row in rows:
        message = ET.fromstring(audit_xml(row, ledger_id=ledger_id))
        check_a51(message)
        code, meaning, action_code = EVENTS[row.action]
        event = message.find("EventIdentification")
        assert event.find("EventID").attrib == {"csd-code": code, "codeSystemName": "DCM",
                                                "originalText": meaning}
        assert event.get("EventActionCode") == action_code
        assert event.get("EventDateTime") == row.created_utc
        assert message.find("ActiveParticipant").get("UserID") == row.who
        source = message.find("AuditSourceIdentification")
        assert source.get("AuditEnterpriseSiteID") == f"leaktrace/ledger/{ledger_id}"
        details = _details(message.find("ParticipantObjectIdentification"))
        assert details["access_id"] == str(row.id)
        assert details["access_record_hash"] == row.record_hash


def test_query_export_and_transfer_messages_carry_what_was_looked_at(access_log):
    path, ledger_id, rows = access_log
    by_action = {r.action: audit_message(r, ledger_id=ledger_id) for r in rows}
    detect = by_action["detect"]
    assert detect.find("EventIdentification/EventID").get("csd-code") == "110112"
    leak = detect.find("ParticipantObjectIdentification")
    assert leak.get("ParticipantObjectID") == "ab" * 32
    assert leak.get("ParticipantObjectTypeCodeRole") == "24"  # query
    query = json.loads(base64.b64decode(leak.find("ParticipantObjectQuery").text))
    assert query == {"action": "detect", "leak_sha256": "ab" * 32, "leak_name": "leak.jpg"}
    assert _details(leak)["outcome"] == "traced: recipient 3"

    failed = by_action["trace"].find("EventIdentification")
    assert failed.get("EventOutcomeIndicator") == "4"
    assert failed.find("EventOutcomeDescription").text == "x.png: no such file"

    export = by_action["ledger export"]
    assert export.find("EventIdentification/EventID").get("csd-code") == "110106"
    media = export.findall("ActiveParticipant")[1]
    assert media.get("UserID") == "/tmp/e.csv" and media.get("UserIsRequestor") == "false"
    assert media.find("RoleIDCode").get("csd-code") == "110154"
    obj = export.find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == ledger_id
    assert obj.get("ParticipantObjectDataLifeCycle") == "10"
    assert _details(obj)["export_ids"] == "1-4,7" and _details(obj)["count"] == "5"

    transfer = by_action["gateway transfer"]
    assert transfer.find("EventIdentification/EventID").get("csd-code") == "110104"
    sender, receiver = transfer.findall("ActiveParticipant")
    assert (sender.get("UserID"), sender.get("AlternativeUserID"),
            sender.get("UserIsRequestor")) == ("LEAKTRACE", "AETITLES=LEAKTRACE", "true")
    assert sender.find("RoleIDCode").get("csd-code") == "110153"
    assert (receiver.get("UserID"), receiver.get("UserIsRequestor")) == ("DRX_WS", "false")
    assert receiver.find("RoleIDCode").get("csd-code") == "110152"
    study = transfer.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "1.2.826.0.1.1"
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    sop = study.find("ParticipantObjectDescription/SOPClass")
    assert sop.get("UID") == "1.2.840.10008.5.1.4.1.1.1" and sop.get("NumberOfInstances") == "1"
    assert sop.find("Instance").get("UID") == "1.2.826.0.1.3"
    assert _details(study)["export_id"] == "7"


def test_a_tampered_what_still_gives_a_valid_message(tmp_path):
    from forensics.ledger import AccessRecord

    row = AccessRecord(1, "a", "", "h", "detect", "not json", "not_found", "", 
                       "2026-01-01T00:00:00+00:00", "0" * 64, "1" * 64)
    check_a51(audit_message(row, ledger_id=None))


# -- syslog --------------------------------------------------------------------------------
_HEADER = re.compile(rb"<85>1 (\S+) (\S+) leaktrace (\d+) IHE\+RFC-3881 - (<AuditMessage.*)",
                     re.S)


def _parse_syslog(message: bytes):
    m = _HEADER.fullmatch(message)
    assert m, message[:120]
    datetime.fromisoformat(m.group(1).decode().replace("Z", "+00:00"))
    message_xml = ET.fromstring(m.group(4))
    check_a51(message_xml)
    return message_xml


def test_syslog_header_is_rfc_5424_with_the_ihe_msgid():
    line = syslog_message(b"<AuditMessage/>", hostname="host with space\u00e9", procid=42,
                          timestamp=datetime.fromisoformat("2026-12-03T10:00:00.5+01:00"))
    assert line == b"<85>1 2026-12-03T09:00:00.500000Z hostwithspace leaktrace 42 " \
                   b"IHE+RFC-3881 - <AuditMessage/>"


@pytest.mark.parametrize("url, target", [
    ("udp://127.0.0.1:514", SyslogTarget("udp", "127.0.0.1", 514)),
    ("tcp://[::1]:6514", SyslogTarget("tcp", "::1", 6514)),
])
def test_syslog_urls(url, target):
    assert parse_syslog_url(url) == target and str(target) == url


@pytest.mark.parametrize("url", ["tls://h:6514", "udp://h", "tcp://:514", "udp://h:0",
                                 "h:514", "tcp://h:99999"])
def test_bad_syslog_urls_are_refused(url):
    with pytest.raises(LeaktraceError, match="--syslog"):
        parse_syslog_url(url)


def _run(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_audit_to_a_file_parses_back(access_log, tmp_path):
    path, ledger_id, rows = access_log
    out = tmp_path / "audit.xml"
    result = _run("ledger", "audit", "--format", "dicom", "--ledger", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert "5 audit message(s) (access 1-5) written to" in result.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 5
    for line, row in zip(lines, rows):
        message = ET.fromstring(line)
        check_a51(message)
        assert _details(message.find("ParticipantObjectIdentification"))["access_id"] == str(row.id)
    with Ledger(path, create=False) as book:  # the audit export is itself recorded
        last = book.accesses()[-1]
        assert (last.action, last.outcome) == ("ledger audit", "exported")
        assert last.what_dict["access_ids"] == "1-5"
    again = _run("ledger", "audit", "--ledger", path, "--since", "5")
    assert again.exit_code == 0
    [message] = again.stdout.splitlines()  # only the audit export recorded after access 5
    check_a51(ET.fromstring(message))
    assert "ledger-audit" in message


def test_audit_to_a_udp_syslog_receiver(access_log):
    path, ledger_id, rows = access_log
    received = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        result = _run("ledger", "audit", "--ledger", path, "--syslog", f"udp://127.0.0.1:{port}")
        assert result.exit_code == 0, result.output
        for _ in rows:
            received.append(server.recv(65535))
    messages = [_parse_syslog(m) for m in received]
    assert [m.find("ActiveParticipant").get("UserID") for m in messages] == [r.who for r in rows]


def _tcp_receiver():
    """A TCP syslog receiver on loopback: (port, thread, list the received bytes go to)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    chunks = []

    def serve():
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                while data := conn.recv(65536):
                    chunks.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, chunks


def _octet_counted(stream: bytes) -> list[bytes]:
    """Split RFC 6587 octet-counted frames: ``LENGTH SP MESSAGE``..."""
    frames = []
    while stream:
        length, _, rest = stream.partition(b" ")
        n = int(length)
        frames.append(rest[:n])
        assert len(rest) >= n
        stream = rest[n:]
    return frames


def test_audit_to_a_tcp_syslog_receiver(access_log):
    path, ledger_id, rows = access_log
    port, thread, chunks = _tcp_receiver()
    result = _run("ledger", "audit", "--ledger", path, "--syslog", f"tcp://127.0.0.1:{port}",
                  "--operator", "ATNA cron")
    assert result.exit_code == 0, result.output
    thread.join(10)
    frames = _octet_counted(b"".join(chunks))
    assert len(frames) == len(rows)
    messages = [_parse_syslog(f) for f in frames]
    assert [m.find("EventIdentification/EventID").get("csd-code") for m in messages] == [
        "110112", "110112", "110112", "110106", "110104"]
    with Ledger(path, create=False) as book:
        last = book.accesses()[-1]
    assert (last.who, last.action, last.outcome) == ("ATNA cron", "ledger audit", "sent")
    assert last.what_dict["syslog"] == f"tcp://127.0.0.1:{port}"


def test_an_unreachable_tcp_receiver_is_exit_2_and_recorded(access_log):
    path, ledger_id, rows = access_log
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run("ledger", "audit", "--ledger", path, "--syslog", f"tcp://127.0.0.1:{port}")
    assert result.exit_code == 2 and "refused" in result.stderr.lower()
    with Ledger(path, create=False) as book:
        last = book.accesses()[-1]
    assert (last.action, last.outcome) == ("ledger audit", "error")


def test_audit_exit_1_when_the_access_log_was_tampered_with(access_log, tmp_path):
    import sqlite3

    path, ledger_id, rows = access_log
    db = sqlite3.connect(path)
    db.execute("DELETE FROM access WHERE id = 2")
    db.commit()
    db.close()
    result = _run("ledger", "audit", "--ledger", path, "--out", tmp_path / "a.xml")
    assert result.exit_code == 1
    assert "access 3: does not follow the record before it" in result.stderr
    assert len((tmp_path / "a.xml").read_bytes().splitlines()) == 4


@pytest.mark.parametrize("break_it", [
    lambda m: m.find("EventIdentification/EventID").attrib.pop("originalText"),
    lambda m: m.remove(m.find("AuditSourceIdentification")),
    lambda m: m.insert(0, m.find("ActiveParticipant")),  # out of order
    lambda m: m.find("EventIdentification").set("EventOutcomeIndicator", "1"),
    lambda m: m.find("ActiveParticipant").attrib.pop("UserIsRequestor"),
    lambda m: m.find("ParticipantObjectIdentification").remove(
        m.find("ParticipantObjectIdentification/ParticipantObjectQuery")),
    lambda m: m.find("ParticipantObjectIdentification/ParticipantObjectDetail").set(
        "value", "not base64!"),
], ids=["no-originalText", "no-audit-source", "order", "outcome-1", "no-requestor",
        "no-name-or-query", "bad-base64"])
def test_the_schema_check_refuses_a_broken_message(access_log, break_it):
    path, ledger_id, rows = access_log
    message = audit_message(rows[0], ledger_id=ledger_id)
    check_a51(message)
    break_it(message)
    with pytest.raises((AssertionError, binascii.Error, ValueError)):
        check_a51(message)
