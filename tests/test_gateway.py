"""The DICOM gateway against a real PACS: Orthanc from Debian, started by these tests.

The shared NIH, Fuji and SIIM films are stored in Orthanc. A recipient workstation (a
pynetdicom Storage SCP on loopback, as a viewer's DICOM listener is) queries and retrieves
them through the gateway, and the PACS routes a film to it through the gateway. Every
instance the workstation receives must be a marked copy recorded in the ledger as delivered
to it, and `trace` names that recipient from the received file and from a JPEG screenshot of
it. Refusals, a receiver that is down, a PACS that refuses, concurrent associations and a
receiver that drops the association mid-study are checked for what they leave in the ledger.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc

from conftest import running_in_ci
from forensics import leaks
from forensics.gateway import Gateway, load_config
from forensics.gateway.node import RETRIEVE_SOP_CLASSES, TRANSFER_SYNTAXES, storage_contexts
from forensics.ledger import Ledger
from forensics.external.orthanc import free_port, start_orthanc
from forensics.trace import detect_leak
from watermark.dicomio import read_film
from watermark.display import render
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(7, 39)))
CANON = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"
FILMS = ("nih_cxr14_dx_8bit_1024px_nccid.dcm", "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm",
         "siim_acr_cr_jpegbaseline_8bit_1024px.dcm", CANON)
DRX, DRY, DOWN, VIEWER = "DRX_WS", "DRY_WS", "DOWN_WS", "VIEWER_2"
NAMES = {DRX: "Dr. X (cardiology, St. Elsewhere)", DRY: "Dr. Y (second opinion)",
         DOWN: "A clinic whose listener is down", VIEWER: "Reading room 2 (C-GET only)"}


class Workstation:
    """A recipient's DICOM listener: a Storage SCP keeping what it receives in memory."""

    def __init__(self, ae_title: str, port: int):
        self.ae_title, self.port = ae_title, port
        self.received: list[Dataset] = []
        self.abort_after: int | None = None  # abort the association after this many
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(sc.Verification)
        for uid in RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            event.assoc.abort()
            return 0xA700
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def stop(self):
        self.server.shutdown()


def _tool_or_skip(name: str) -> None:
    if shutil.which(name) is None:
        message = f"{name} not on PATH (Debian package: orthanc)"
        if running_in_ci():
            pytest.fail(message + " [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(tmp_path_factory, dicom_films):
    """Orthanc with three films, two workstations, and a running gateway in front."""
    _tool_or_skip("Orthanc")
    folder = tmp_path_factory.mktemp("gateway")
    gw_port, drx_port, dry_port, down_port = (free_port() for _ in range(4))
    (folder / "orthanc").mkdir()
    pacs = start_orthanc(folder / "orthanc", modalities={
        "leaktrace": ("LEAKTRACE", "127.0.0.1", gw_port),
        # a route: Orthanc sends "to DRX_WS" at the gateway's port
        "route-drx": (DRX, "127.0.0.1", gw_port)})
    stations = {DRX: Workstation(DRX, drx_port), DRY: Workstation(DRY, dry_port)}
    config = folder / "gateway.toml"
    recipients = "".join(
        f'[[recipients]]\nae_title = "{ae}"\naddress = "127.0.0.1:{port}"\nname = "{NAMES[ae]}"\n'
        for ae, port in ((DRX, drx_port), (DRY, dry_port), (DOWN, down_port)))
    recipients += f'[[recipients]]\nae_title = "{VIEWER}"\nname = "{NAMES[VIEWER]}"\n'
    config.write_text(f'[gateway]\nae_title = "LEAKTRACE"\nlisten = "127.0.0.1:{gw_port}"\n'
                      f'store = "{folder / "store"}"\npass_unmarked = ["SR"]\n'
                      f'[pacs]\nae_title = "ORTHANC"\naddress = "127.0.0.1:{pacs.dicom_port}"\n'
                      + recipients)
    ledger = folder / "ledger.sqlite"
    gateway = Gateway(load_config(config), ledger_path=ledger, key=KEY)
    gateway.start()
    studies = {}
    for name in FILMS:
        ds = pydicom.dcmread(dicom_films[name], stop_before_pixels=True, force=True)
        pacs.upload(dicom_films[name])
        studies[name] = (str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    try:
        yield dict(pacs=pacs, gateway=gateway, config=config, ledger=ledger, stations=stations,
                   gw_port=gw_port, studies=studies, folder=folder)
    finally:
        gateway.stop()
        for station in stations.values():
            station.stop()
        pacs.stop()


def _associate(site, calling: str, contexts, *, called="LEAKTRACE", roles=(), handlers=()):
    """``contexts``: SOP class UIDs, or the presentation contexts themselves."""
    ae = AE(ae_title=calling)
    for cx in contexts:
        if isinstance(cx, str):
            ae.add_requested_context(cx, TRANSFER_SYNTAXES[:2] if cx in _QR else TRANSFER_SYNTAXES)
        else:
            ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
    return ae.associate("127.0.0.1", site["gw_port"], ae_title=called, ext_neg=list(roles),
                        evt_handlers=list(handlers))


_QR = {sc.StudyRootQueryRetrieveInformationModelFind, sc.StudyRootQueryRetrieveInformationModelMove,
       sc.StudyRootQueryRetrieveInformationModelGet, sc.PatientRootQueryRetrieveInformationModelFind}


def _study_query(uid: str = "", level: str = "STUDY") -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = level
    q.StudyInstanceUID = uid
    if level == "STUDY":
        q.PatientName = ""
        q.StudyDate = ""
    return q


def _move(site, calling: str, destination: str, study_uid: str) -> Dataset:
    assoc = _associate(site, calling, [sc.StudyRootQueryRetrieveInformationModelMove])
    assert assoc.is_established
    final = None
    for status, _ in assoc.send_c_move(_study_query(study_uid), destination,
                                       sc.StudyRootQueryRetrieveInformationModelMove):
        final = status
    assoc.release()
    return final


def _deliveries(site, sop_uid: str):
    with Ledger(site["ledger"], create=False) as book:
        return [d for d in book.deliveries() if d.sop_instance_uid == sop_uid]


def _assert_marked_and_traced(site, ds: Dataset, recipient_ae: str, source_uid: str, tmp: Path):
    """The received instance is a new marked copy, recorded as delivered to its receiver,
    and trace names that receiver from the file and from a JPEG screenshot of it."""
    assert str(ds.SOPInstanceUID) != source_uid
    assert ds.ImageType[0] == "DERIVED"
    assert ds.SourceImageSequence[-1].ReferencedSOPInstanceUID == source_uid
    [delivery] = _deliveries(site, str(ds.SOPInstanceUID))
    assert (delivery.status, delivery.destination) == ("delivered", recipient_ae)
    assert delivery.recipient_name == NAMES[recipient_ae]
    with Ledger(site["ledger"], create=False) as book:  # and as a row of the access log
        [access] = [a for a in book.accesses() if a.what_dict.get("delivery_id") == delivery.id]
        assert book.check_access().ok
    assert (access.action, access.who, access.peer, access.outcome) == (
        "gateway transfer", "LEAKTRACE", recipient_ae, "delivered")
    assert access.what_dict["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert access.what_dict["study_instance_uid"] == str(ds.StudyInstanceUID)
    path = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    shot = tmp / f"{ds.SOPInstanceUID}.jpg"
    leaks.save_image(leaks.quantize_8bit(render(read_film(path))), shot, quality=85)
    with Ledger(site["ledger"], create=False) as book:
        for leak in (path, shot):
            report = detect_leak(leak, ledger=book, key=KEY)
            assert report.decision == "traced", (leak.name, report.as_dict())
            assert report.recipient == NAMES[recipient_ae]
            assert report.detection.p_value <= 1e-6


def test_c_find_is_answered_by_the_pacs_through_the_gateway(site):
    assoc = _associate(site, DRX, [sc.StudyRootQueryRetrieveInformationModelFind])
    assert assoc.is_established
    found = set()
    for status, identifier in assoc.send_c_find(_study_query(),
                                                sc.StudyRootQueryRetrieveInformationModelFind):
        if status.Status in (0xFF00, 0xFF01):
            found.add(str(identifier.StudyInstanceUID))
        else:
            assert status.Status == 0x0000
    assoc.release()
    assert found == {study for study, _ in site["studies"].values()}


def test_c_move_to_a_recipient_delivers_marked_traceable_copies(site, tmp_path):
    station = site["stations"][DRY]
    before = len(station.received)
    study, source_uid = site["studies"]["nih_cxr14_dx_8bit_1024px_nccid.dcm"]
    final = _move(site, DRX, DRY, study)  # Dr. X's workstation moves the study to Dr. Y
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 1
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    [ds] = station.received[before:]
    _assert_marked_and_traced(site, ds, DRY, source_uid, tmp_path)


def test_c_get_returns_marked_copies_on_the_same_association(site, tmp_path):
    received = []

    def store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    roles = [build_role(uid, scp_role=True) for uid in RETRIEVE_SOP_CLASSES]
    assoc = _associate(site, DRX, [sc.StudyRootQueryRetrieveInformationModelGet]
                       + storage_contexts(), roles=roles, handlers=[(evt.EVT_C_STORE, store)])
    assert assoc.is_established
    # a JPEG 2000 lossless film: Orthanc cannot transcode it, so it must travel as it is
    study, source_uid = site["studies"][CANON]
    final = None
    for status, _ in assoc.send_c_get(_study_query(study),
                                      sc.StudyRootQueryRetrieveInformationModelGet):
        final = status
    assoc.release()
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    [ds] = received
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless  # kept lossless, in its syntax
    _assert_marked_and_traced(site, ds, DRX, source_uid, tmp_path)


def test_a_recipient_without_an_address_retrieves_with_c_get_but_is_no_move_destination(site):
    received = []

    def store(event):
        received.append(event.dataset)
        return 0x0000

    assoc = _associate(site, VIEWER, [sc.StudyRootQueryRetrieveInformationModelGet]
                       + storage_contexts(),
                       roles=[build_role(uid, scp_role=True) for uid in RETRIEVE_SOP_CLASSES],
                       handlers=[(evt.EVT_C_STORE, store)])
    study, source_uid = site["studies"]["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"]
    final = None
    for status, _ in assoc.send_c_get(_study_query(study),
                                      sc.StudyRootQueryRetrieveInformationModelGet):
        final = status
    assoc.release()
    assert final.Status == 0x0000 and len(received) == 1
    [d] = _deliveries(site, str(received[0].SOPInstanceUID))
    assert (d.destination, d.status, d.recipient_name) == (VIEWER, "delivered", NAMES[VIEWER])
    before = _all_rows(site)
    assert _move(site, DRX, VIEWER, study).Status == 0xA801
    assert _all_rows(site) == before


def test_a_route_from_the_pacs_is_marked_for_the_called_recipient(site, tmp_path):
    station = site["stations"][DRX]
    before = len(station.received)
    study, source_uid = site["studies"]["siim_acr_cr_jpegbaseline_8bit_1024px.dcm"]
    [orthanc_id] = [s["ID"] for s in site["pacs"].get("/studies?expand")
                    if s["MainDicomTags"]["StudyInstanceUID"] == study]
    job = site["pacs"].post("/modalities/route-drx/store", {"Resources": [orthanc_id],
                                                             "Synchronous": True})
    assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 1
    [ds] = station.received[before:]
    _assert_marked_and_traced(site, ds, DRX, source_uid, tmp_path)


def test_unknown_callers_destinations_and_called_titles_are_refused(site):
    ledger_rows = _all_rows(site)
    stranger = _associate(site, "STRANGER", [sc.Verification])
    assert stranger.is_rejected  # calling AE title not recognised
    # a recipient may call the gateway, not another recipient's route
    sideways = _associate(site, DRX, [sc.Verification], called=DRY)
    assert sideways.is_rejected
    study, _ = site["studies"]["nih_cxr14_dx_8bit_1024px_nccid.dcm"]
    final = _move(site, DRX, "EVIL_WS", study)
    assert final.Status == 0xA801
    # a recipient cannot push into a route (only the PACS stores)
    assoc = _associate(site, DRX, [sc.DigitalXRayImageStorageForPresentation], called=DRX)
    assert assoc.is_rejected
    assert _all_rows(site) == ledger_rows  # nothing marked, nothing recorded


def _all_rows(site):
    with Ledger(site["ledger"], create=False) as book:
        return len(book.exports()), len(book.deliveries())


def test_a_receiver_that_is_down_gets_nothing_marked_or_recorded(site):
    study, _ = site["studies"]["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"]
    before = _all_rows(site)
    final = _move(site, DRX, DOWN, study)
    assert final.Status == 0xA801  # the move destination could not be reached
    assert _all_rows(site) == before


def test_a_receiver_dropping_the_association_mid_study_leaves_failed_not_delivered(site):
    station = site["stations"][DRY]
    before = len(station.received)
    station.abort_after = before  # abort on the next instance
    try:
        study, _ = site["studies"]["siim_acr_cr_jpegbaseline_8bit_1024px.dcm"]
        final = _move(site, DRX, DRY, study)
    finally:
        station.abort_after = None
    assert final.Status != 0x0000 and final.NumberOfCompletedSuboperations == 0
    assert len(station.received) == before
    with Ledger(site["ledger"], create=False) as book:
        last = book.deliveries()[-1]
        assert (last.destination, last.status) == (DRY, "failed")
        assert book.check().ok


def test_concurrent_retrievals_record_every_copy_in_one_intact_chain(site):
    station = site["stations"][DRY]
    before = len(station.received)
    results = {}

    def pull(name):
        results[name] = _move(site, DRX, DRY, site["studies"][name][0])

    threads = [threading.Thread(target=pull, args=(n,)) for n in FILMS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r.Status == 0x0000 for r in results.values()), results
    got = station.received[before:]
    assert len(got) == len(FILMS)
    with Ledger(site["ledger"], create=False) as book:
        assert book.check().ok
        for ds in got:
            [d] = [d for d in book.deliveries() if d.sop_instance_uid == str(ds.SOPInstanceUID)]
            assert d.status == "delivered"
            assert book.export(d.export_id).recipient_name == NAMES[DRY]


def test_check_echoes_every_node_and_says_which_is_down(site):
    cmd = [sys.executable, "-m", "forensics.cli", "gateway", "--config", str(site["config"]),
           "--ledger", str(site["ledger"]), "--key", str(_key_file(site)), "--check"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert f"recipient {DOWN}" in out.stdout and "NOT REACHABLE" in out.stdout
    assert "pacs ORTHANC" in out.stdout and f"recipient {DRX} at" in out.stdout
    assert out.stdout.count("C-ECHO ok") == 3  # the PACS and the two listening workstations
    assert f"recipient {VIEWER}: no address" in out.stdout
    bad = site["folder"] / "bad.toml"
    bad.write_text(site["config"].read_text().replace('ae_title = "DRY_WS"', 'ae_title = "DRX_WS"'))
    out = subprocess.run(cmd[:5] + [str(bad)] + cmd[6:], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "recipients[2].ae_title" in out.stderr and "configured twice" in out.stderr
    # a first run: no key, no ledger yet; --check says the gateway will create them
    fresh = site["folder"] / "fresh"
    out = subprocess.run(cmd[:6] + ["--ledger", str(fresh / "l.sqlite"), "--key",
                                    str(fresh / "k.key"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # only the down recipient
    assert "does not exist yet" in out.stdout and not (fresh / "k.key").exists()
    # a store folder that cannot be created is a configuration error
    bad.write_text(site["config"].read_text().replace(f'store = "{site["folder"] / "store"}"',
                                                      'store = "/proc/leaktrace-store"'))
    out = subprocess.run(cmd[:5] + [str(bad)] + cmd[6:], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "store folder" in out.stderr


def _key_file(site) -> Path:
    """KEY in a key file (64 hex digits, mode 0600), for the command line."""
    path = site["folder"] / "site.key"
    if not path.exists():
        path.write_text(KEY.secret.hex() + "\n")
        path.chmod(0o600)
    return path


def _instance(study_uid: str, sop_class, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "GW-TEST-1", "Test^Gateway", modality
    return ds


def test_pass_unmarked_modalities_go_through_recorded_and_the_rest_is_refused(site, tmp_path):
    """A study with a structured report (SR: configured pass_unmarked) and an RGB secondary
    capture (embed refuses RGB): the SR is delivered unmarked and recorded as such, the RGB
    image is a failed sub-operation and never leaves."""
    study = generate_uid()
    sr = _instance(study, sc.BasicTextSRStorage, "SR")
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    rgb = _instance(study, sc.SecondaryCaptureImageStorage, "OT")
    rgb.Rows = rgb.Columns = 64
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit, rgb.PixelRepresentation = 8, 8, 7, 0
    rgb.PixelData = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8).tobytes()
    for ds in (sr, rgb):
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        site["pacs"].upload(path)
    station = site["stations"][DRY]
    before, rows = len(station.received), _all_rows(site)
    final = _move(site, DRX, DRY, study)
    assert final.Status == 0xB000  # warning: one sub-operation failed
    assert final.NumberOfCompletedSuboperations == 1 and final.NumberOfFailedSuboperations == 1
    [got] = station.received[before:]
    assert got.SOPInstanceUID == sr.SOPInstanceUID  # the report, as it was
    [d] = _deliveries(site, str(sr.SOPInstanceUID))
    assert (d.export_id, d.status, d.route) == (None, "delivered", "move")
    assert _all_rows(site) == (rows[0], rows[1] + 1)  # no export, one delivery row


def test_a_pacs_that_refuses_the_gateway_leaves_nothing_recorded(site, tmp_path):
    """The same gateway with a PACS AE title Orthanc does not answer to (it checks the called
    AE title): C-FIND and C-MOVE fail with a status, nothing is marked or recorded."""
    port = free_port()
    text = site["config"].read_text()
    text = text.replace(f'listen = "127.0.0.1:{site["gw_port"]}"', f'listen = "127.0.0.1:{port}"')
    text = text.replace('ae_title = "ORTHANC"', 'ae_title = "NOT_ORTHANC"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    gateway = Gateway(load_config(config), ledger_path=site["ledger"], key=KEY)
    gateway.start()
    try:
        other = dict(site, gw_port=port)
        before = _all_rows(site)
        assoc = _associate(other, DRX, [sc.StudyRootQueryRetrieveInformationModelFind])
        statuses = [s.Status for s, _ in assoc.send_c_find(
            _study_query(), sc.StudyRootQueryRetrieveInformationModelFind)]
        assoc.release()
        assert statuses == [0xC001]
        study, _ = site["studies"]["nih_cxr14_dx_8bit_1024px_nccid.dcm"]
        final = _move(other, DRX, DRY, study)
        assert final.Status == 0xC001 and final.NumberOfFailedSuboperations == 1
        assert _all_rows(site) == before
    finally:
        gateway.stop()


def test_ctrl_c_mid_study_leaves_the_copy_recorded_and_its_delivery_pending(site, tmp_path):
    """`leaktrace gateway` interrupted while a receiver is still storing a copy: exit 130,
    the copy's export is in the chain (it may have arrived) and its delivery stays pending,
    which the next --check reports."""
    port, ws_port = free_port(), free_port()
    text = site["config"].read_text().replace(f'listen = "127.0.0.1:{site["gw_port"]}"',
                                              f'listen = "127.0.0.1:{port}"')
    text = text.replace(f'address = "127.0.0.1:{site["stations"][DRY].port}"',
                        f'address = "127.0.0.1:{ws_port}"')
    config, ledger, key = tmp_path / "gateway.toml", tmp_path / "ledger.sqlite", _key_file(site)
    config.write_text(text)
    storing = threading.Event()

    def slow_store(event):
        storing.set()
        time.sleep(5)
        return 0x0000

    ae = AE(ae_title=DRY)
    for uid in RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    receiver = ae.start_server(("127.0.0.1", ws_port), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, slow_store)])
    cmd = [sys.executable, "-m", "forensics.cli", "gateway", "--config", str(config),
           "--ledger", str(ledger), "--key", str(key)]
    gateway = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        other = dict(site, gw_port=port)
        for _ in range(100):  # wait until it listens
            if _associate(other, DRX, [sc.Verification]).is_established:
                break
            time.sleep(0.2)
        study, _ = site["studies"]["nih_cxr14_dx_8bit_1024px_nccid.dcm"]
        mover = threading.Thread(target=lambda: _move(other, DRX, DRY, study))
        mover.start()
        assert storing.wait(120)
        gateway.send_signal(signal.SIGINT)
        assert gateway.wait(60) == 130
        assert "interrupted:" in gateway.stderr.read()
        mover.join(60)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        receiver.shutdown()
    with Ledger(ledger, create=False) as book:
        [export] = book.exports()
        [delivery] = book.deliveries()
        assert (delivery.export_id, delivery.status) == (export.id, "pending")
        assert book.check().ok
    out = subprocess.run(cmd + ["--check"], capture_output=True, text=True, timeout=120)
    assert "1 deliveries pending" in out.stdout


def test_parallel_marking_workers_deliver_every_copy_traced(site, tmp_path):
    """A gateway with 2 marking processes: 4 concurrent C-MOVEs, every copy delivered,
    recorded in one intact chain, and traced to its receiver."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(site["config"].read_text().replace(
        f'listen = "127.0.0.1:{site["gw_port"]}"', f'listen = "127.0.0.1:{port}"'))
    gateway = Gateway(load_config(config), ledger_path=site["ledger"], key=KEY, workers=2)
    gateway.start()
    station = site["stations"][DRY]
    before = len(station.received)
    results = {}
    try:
        other = dict(site, gw_port=port)
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(
            n, _move(other, DRX, DRY, site["studies"][n][0]))) for n in FILMS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        gateway.stop()
    assert all(r.Status == 0x0000 for r in results.values()), results
    got = station.received[before:]
    assert sorted(str(ds.SourceImageSequence[-1].ReferencedSOPInstanceUID) for ds in got) == \
        sorted(uid for _, uid in site["studies"].values())
    with Ledger(site["ledger"], create=False) as book:
        assert book.check().ok
    for ds in got:
        source = str(ds.SourceImageSequence[-1].ReferencedSOPInstanceUID)
        _assert_marked_and_traced(site, ds, DRY, source, tmp_path)


def test_a_gateway_on_a_postgresql_ledger_records_concurrent_retrievals_in_one_chain(
        site, tmp_path, postgres_server):
    """A second gateway in front of the same Orthanc, its ledger a PostgreSQL site: every film
    moved to Dr. Y at once (three associations, one marking at a time) is a marked copy
    recorded as delivered, in one intact chain with its access log; the first is traced."""
    import secrets

    port = free_port()
    text = site["config"].read_text().replace(f'listen = "127.0.0.1:{site["gw_port"]}"',
                                              f'listen = "127.0.0.1:{port}"')
    config = tmp_path / "gateway.toml"
    config.write_text(text.replace(str(site["folder"] / "store"), str(tmp_path / "store")))
    url = postgres_server.site_url(f"gw{secrets.token_hex(4)}")
    gateway = Gateway(load_config(config), ledger_path=url, key=KEY)
    gateway.start()
    other = dict(site, gw_port=port, ledger=url)
    station = site["stations"][DRY]
    before = len(station.received)
    results = {}
    try:
        def pull(name):
            results[name] = _move(other, DRX, DRY, site["studies"][name][0])

        threads = [threading.Thread(target=pull, args=(n,)) for n in FILMS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        gateway.stop()
    assert all(r.Status == 0x0000 for r in results.values()), results
    got = station.received[before:]
    assert len(got) == len(FILMS)
    with Ledger(url, create=False) as book:
        check, access = book.check(), book.check_access()
        assert check.ok and check.n_records == len(FILMS), check.problems
        assert access.ok and access.n_records == len(FILMS)
        assert sorted(d.sop_instance_uid for d in book.deliveries("delivered")) == sorted(
            str(ds.SOPInstanceUID) for ds in got)
    by_source = {ds.SourceImageSequence[-1].ReferencedSOPInstanceUID: ds for ds in got}
    study, source_uid = site["studies"][FILMS[0]]
    _assert_marked_and_traced(other, by_source[source_uid], DRY, source_uid, tmp_path)


def test_a_de_identifying_recipient_gets_de_identified_marked_copies_and_no_query_answers(
        site, tmp_path, dicom_films):
    """A second gateway, whose config adds two recipients with ``deidentify = true``: one
    with clean-pixel-data gets a copy with no patient identity from the source, recorded with
    its de-identification and traced to it; one without clean-pixel-data is refused the films
    whose Burned In Annotation is missing (fail closed: nothing sent, nothing recorded); a
    C-FIND from a de-identifying recipient is refused (the PACS's answers carry identities)."""
    from forensics.burnedin import engine_available

    if engine_available() is None:
        message = "RapidOCR is not installed (the ocr extra; see .ci/run)"
        if running_in_ci():
            pytest.fail(message + " [CI is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(message)
    port, teach_port, plain_port = free_port(), free_port(), free_port()
    text = site["config"].read_text().replace(f'listen = "127.0.0.1:{site["gw_port"]}"',
                                              f'listen = "127.0.0.1:{port}"')
    text = text.replace(str(site["folder"] / "store"), str(tmp_path / "store"))
    text += (f'[[recipients]]\nae_title = "TEACH"\naddress = "127.0.0.1:{teach_port}"\n'
             'name = "Teaching file"\ndeidentify = true\ndeid_options = ["clean-pixel-data"]\n'
             f'[[recipients]]\nae_title = "NOCLEAN"\naddress = "127.0.0.1:{plain_port}"\n'
             'name = "No pixel cleaning"\ndeidentify = true\n')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    ledger = tmp_path / "ledger.sqlite"
    teach, noclean = Workstation("TEACH", teach_port), Workstation("NOCLEAN", plain_port)
    gateway = Gateway(load_config(config), ledger_path=ledger, key=KEY)
    gateway.start()
    other = dict(site, gw_port=port, ledger=ledger)
    name = "nih_cxr14_dx_8bit_1024px_nccid.dcm"
    study, source_uid = site["studies"][name]
    try:
        assoc = _associate(other, "TEACH", [sc.StudyRootQueryRetrieveInformationModelFind])
        answers = list(assoc.send_c_find(_study_query(),
                                         sc.StudyRootQueryRetrieveInformationModelFind))
        assoc.release()
        assert [s.Status for s, _ in answers] == [0x0124]
        assert all(identifier is None for _, identifier in answers)

        moved = _move(other, DRX, "TEACH", study)
        refused = _move(other, DRX, "NOCLEAN", study)
    finally:
        gateway.stop()
        teach.stop()
        noclean.stop()
    assert moved.Status == 0x0000 and moved.NumberOfCompletedSuboperations == 1
    [ds] = teach.received
    source = pydicom.dcmread(dicom_films[name], stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES"
    assert "113100" in {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
        value = str(source.get(keyword, "") or "")
        if value:
            assert str(ds.get(keyword, "") or "") != value, keyword
    assert source_uid.encode() not in ds.PixelData and str(ds.SOPInstanceUID) != source_uid
    with Ledger(ledger, create=False) as book:
        [export] = book.exports()
        assert export.recipient_name == "Teaching file"
        assert book.deidentification_of(export.id)["options"] == ["clean-pixel-data"]
        assert [d.status for d in book.deliveries()] == ["delivered"]
    copy = tmp_path / "teach.dcm"
    ds.save_as(copy, enforce_file_format=True)
    with Ledger(ledger, create=False) as book:
        report = detect_leak(copy, ledger=book, key=KEY)
    assert report.decision == "traced" and report.recipient == "Teaching file"

    assert noclean.received == []
    assert refused.get("NumberOfFailedSuboperations", 0) == 1, refused


@pytest.mark.parametrize(("extra", "problem"), [
    ('deid_options = ["clean-pixel-data"]\n', r"recipients\[1\]\.deid_options: given without "
                                               r"deidentify = true"),
    ('deidentify = "yes"\n', r"recipients\[1\]\.deidentify: must be true or false"),
    ('deidentify = true\ndeid_options = ["blur-faces"]\n',
     r"recipients\[1\]\.deid_options: unknown 'blur-faces'; known: retain-longitudinal"),
    ('deidentify = true\ndeid_options = "clean-pixel-data"\n',
     r"recipients\[1\]\.deid_options: must be a list of option names"),
])
def test_de_identification_settings_are_checked_with_the_config(tmp_path, extra, problem):
    from forensics.gateway.config import ConfigError

    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nae_title = "LEAKTRACE"\nlisten = "127.0.0.1:11112"\n'
                      '[pacs]\nae_title = "ORTHANC"\naddress = "127.0.0.1:4242"\n'
                      '[[recipients]]\nae_title = "TEACH"\naddress = "127.0.0.1:11113"\n'
                      'name = "Teaching file"\n' + extra)
    with pytest.raises(ConfigError, match=rf"gateway\.toml: {problem}"):
        load_config(config)


def test_clean_pixel_data_without_an_ocr_engine_stops_the_gateway_at_its_config(
        tmp_path, monkeypatch):
    from forensics import burnedin
    from forensics.gateway.config import ConfigError

    monkeypatch.setattr(burnedin, "engine_available", lambda: None)
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nae_title = "LEAKTRACE"\nlisten = "127.0.0.1:11112"\n'
                      '[pacs]\nae_title = "ORTHANC"\naddress = "127.0.0.1:4242"\n'
                      '[[recipients]]\nae_title = "TEACH"\naddress = "127.0.0.1:11113"\n'
                      'name = "Teaching file"\ndeidentify = true\n'
                      'deid_options = ["clean-pixel-data"]\n')
    with pytest.raises(ConfigError, match=r"clean-pixel-data needs an OCR engine .*--no-deps "
                                          r"'rapidocr-onnxruntime"):
        load_config(config)
