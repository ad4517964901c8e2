"""The gateway's DICOM node: marks every instance on its way from the PACS to a recipient.

Built on pynetdicom (the pydicom project's DICOM networking library). Services (PS3.4):

* **Verification** (C-ECHO) for everyone the configuration knows.
* **Storage, store-and-forward routes** (Annex B): the PACS C-STOREs an instance to the
  gateway with a recipient's AE title as the *called* AE title; the gateway marks it for that
  recipient and C-STOREs it to the recipient, and answers the PACS with the recipient's status
  (so the PACS retries what was not delivered).
* **Query/Retrieve proxy** (Annex C), for recipients calling the gateway's own AE title:
  C-FIND (Patient and Study Root) is forwarded to the PACS; C-MOVE to a move destination that
  is a recipient and C-GET retrieve the instances from the PACS (with C-GET, so the PACS needs
  no entry for the gateway as a move destination), mark each for the receiving recipient and
  send them on.

Association requests (PS3.8 section 7.1.1.9): an unknown calling AE title is rejected with
reason 3 (calling AE title not recognized); the PACS may only call a recipient's AE title (a
route) or the gateway's; a recipient may only call the gateway's (reason 7, called AE title
not recognized, otherwise). An unknown move destination gets 0xA801. Nothing is ever served
unmarked, except modalities listed in ``pass_unmarked`` (recorded as such).

Every copy is marked and recorded exactly as ``leaktrace embed`` does
(:func:`forensics.export.export_film`: same ledger, same refusals), with a ``pending``
delivery in the same transaction; the delivery is settled ``delivered`` or ``failed`` from the
receiver's C-STORE response. So no copy leaves before it is recorded, and a copy recorded as
delivered was acknowledged by its receiver. The received original is kept under
``<store>/originals/<SHA-256>.dcm`` (``trace`` needs it); the marked copy is written to
``<store>/spool`` and removed once sent.

The ledger is opened per instance in the association's thread; SQLite's write lock
(``BEGIN IMMEDIATE``) makes concurrent associations record one at a time, in order.

Logs (logger ``leaktrace.gateway``): one line per association and per instance: who, which
SOP Instance UID, the outcome. Never a patient's name or ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
                         JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.presentation import AllStoragePresentationContexts

from watermark.errors import LeaktraceError
from watermark.keys import SiteKey

from ..export import export_film, export_film_in_pool, marking_pool, stop_pool
from ..ledger import AccessEvent, Ledger, PendingDelivery
from .config import GatewayConfig, Node, Recipient

__all__ = ["Gateway", "echo", "send", "storage_contexts", "prepare_store", "RETRIEVE_SOP_CLASSES",
           "TRANSFER_SYNTAXES", "SYNTAX_GROUPS"]

log = logging.getLogger("leaktrace.gateway")

#: Transfer syntaxes the gateway accepts and asks for (PS3.5 Annex A).
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                     DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit,
                     JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless,
                     HTJ2KLosslessRPCL, HTJ2K, RLELossless]

#: Storage SOP classes the gateway retrieves from the PACS with C-GET (at most 127 contexts
#: fit one association request besides the C-GET one): the radiographs it marks, and the
#: objects a chest study carries besides them, which ``pass_unmarked`` may let through.
RETRIEVE_SOP_CLASSES = [
    sc.ComputedRadiographyImageStorage, sc.DigitalXRayImageStorageForPresentation,
    sc.DigitalXRayImageStorageForProcessing, sc.SecondaryCaptureImageStorage,
    sc.DigitalMammographyXRayImageStorageForPresentation,
    sc.GrayscaleSoftcopyPresentationStateStorage, sc.KeyObjectSelectionDocumentStorage,
    sc.BasicTextSRStorage, sc.EnhancedSRStorage, sc.ComprehensiveSRStorage,
    sc.XRayRadiationDoseSRStorage, sc.EncapsulatedPDFStorage,
]

#: Transfer syntaxes grouped into presentation contexts of their own when the gateway asks to
#: receive (C-GET from the PACS) or sends (C-MOVE sub-operations): an acceptor picks one
#: syntax per context, usually the first it knows, and a PACS without a transcoder (Orthanc's
#: C-GET, for one) then cannot send a JPEG 2000 film in a context that chose Explicit VR.
#: With one context per coding, every film travels in its own syntax. 12 SOP classes x 10
#: groups + 1 = 121 contexts, within the 128 an association request may carry (PS3.8 9.3.2).
SYNTAX_GROUPS = [
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
     ExplicitVRBigEndian],
    [JPEG2000Lossless], [JPEG2000], [JPEGLSLossless], [JPEGLSNearLossless], [JPEGBaseline8Bit],
    [JPEGExtended12Bit], [JPEGLosslessSV1, JPEGLossless], [RLELossless],
    [HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K],
]


def storage_contexts() -> list:
    """Requested presentation contexts for receiving or sending :data:`RETRIEVE_SOP_CLASSES`
    in any of :data:`TRANSFER_SYNTAXES`, one context per SOP class and coding."""
    return [build_context(uid, group) for uid in RETRIEVE_SOP_CLASSES for group in SYNTAX_GROUPS]


_FIND_MODELS = {sc.PatientRootQueryRetrieveInformationModelFind,
                sc.StudyRootQueryRetrieveInformationModelFind}
#: C-MOVE / C-GET information model -> the C-GET model used against the PACS
_GET_MODEL = {
    sc.PatientRootQueryRetrieveInformationModelMove: sc.PatientRootQueryRetrieveInformationModelGet,
    sc.StudyRootQueryRetrieveInformationModelMove: sc.StudyRootQueryRetrieveInformationModelGet,
    sc.PatientRootQueryRetrieveInformationModelGet: sc.PatientRootQueryRetrieveInformationModelGet,
    sc.StudyRootQueryRetrieveInformationModelGet: sc.StudyRootQueryRetrieveInformationModelGet,
}

# DIMSE statuses (PS3.4 Annex B.2.3, C.4.2.1.5, C.4.3.1.4; PS3.7 Annex C)
_SUCCESS, _PENDING, _CANCEL = 0x0000, 0xFF00, 0xFE00
_NOT_AUTHORIZED = 0x0124
_CANNOT_UNDERSTAND = 0xC000        # storage: the instance could not be marked
_OUT_OF_RESOURCES = 0xA700         # storage: the recipient could not be reached
_UNABLE_TO_PROCESS = 0xC001        # find/move/get: the PACS could not be asked
_UNKNOWN_DESTINATION = 0xA801
_REFUSED_SUBOPERATION = "refused"  # yielded instead of a dataset: pynetdicom counts a failure


def _ok(status: int | None) -> bool:
    """Success (0x0000) or a warning (0x0001, 0xB000-0xBFFF): the receiver kept the instance."""
    return status is not None and (status == 0 or status == 1 or 0xB000 <= status <= 0xBFFF)


@dataclass
class _Outgoing:
    """A copy about to be sent: the dataset, its delivery row, and what to log."""

    dataset: Dataset
    delivery_id: int
    export_id: int | None
    source_uid: str
    marking_s: float = 0.0  # keeping the original, marking, writing and recording it


class Gateway:
    """The DICOM node between the PACS and the recipients (see the module docstring).

    Parameters
    ----------
    config : GatewayConfig
    ledger_path : path-like or None
        The ledger (as ``embed --ledger``); ``None`` for the default.
    key : SiteKey
        The site key copies are marked with.
    workers : int
        Processes marking in parallel (0: one per CPU core). With 1, each association's
        thread marks inside the ledger transaction (:func:`forensics.export.export_film`), so
        concurrent associations mark one at a time; with more, marking runs in a process pool
        outside the transaction (:func:`forensics.export.export_film_in_pool`) and only the
        recording is one at a time.

    Raises
    ------
    LeaktraceError
        The store folder cannot be created, or the ledger cannot be opened for writing.
    """

    def __init__(self, config: GatewayConfig, *, ledger_path: str | os.PathLike | None,
                 key: SiteKey, workers: int = 1):
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU core), got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self._pool = None
        self.config = config
        self.ledger_path = ledger_path
        self.key = key
        self.originals, self.spool = prepare_store(config)
        with Ledger(ledger_path) as book:  # opens (or creates) it now: errors before serving
            self.ledger_id = book.ledger_id
            stale = book.deliveries("pending")
        if stale:
            log.warning("%d deliveries are still pending from an earlier run (the gateway "
                        "stopped before their C-STORE responses): they are recorded, their "
                        "delivery is not confirmed", len(stale))
        self._server = None
        self._ae = self._listening_ae()

    # -- the listening node ---------------------------------------------------------------
    def _listening_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.require_called_aet = False  # checked per association request below
        ae.require_calling_aet = [cfg.pacs.ae_title] + [r.ae_title for r in cfg.recipients]
        ae.maximum_pdu_size = 0
        ae.add_supported_context(sc.Verification)
        for cx in AllStoragePresentationContexts:
            # scp_role: a recipient's C-GET (it stores what we send on its association)
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES,
                                     scu_role=True, scp_role=True)
        for uid in list(_FIND_MODELS) + list(_GET_MODEL):
            ae.add_supported_context(uid, TRANSFER_SYNTAXES[:4])
        return ae

    def start(self, *, block: bool = False):
        """Listen on the configured address. With ``block``, serve until interrupted
        (KeyboardInterrupt propagates after the server stops)."""
        handlers = [(evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_ESTABLISHED, self._on_established),
                    (evt.EVT_RELEASED, self._on_ended), (evt.EVT_ABORTED, self._on_ended),
                    (evt.EVT_C_ECHO, lambda event: _SUCCESS),
                    (evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, self._on_find),
                    (evt.EVT_C_MOVE, self._on_move), (evt.EVT_C_GET, self._on_get)]
        if self.workers > 1 and self._pool is None:
            self._pool = marking_pool(self.workers, warm=True)
        if block:
            self._log_listening()
        self._server = self._ae.start_server((self.config.host, self.config.port),
                                             block=block, evt_handlers=handlers)
        self._log_listening()
        return self._server

    def _log_listening(self) -> None:
        log.info("listening as %s on %s:%d, PACS %s at %s, %d recipients", self.config.ae_title,
                 self.config.host, self.config.port, self.config.pacs.ae_title,
                 self.config.pacs.address, len(self.config.recipients))

    def stop(self) -> None:
        """Stop listening and end every association."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._ae.shutdown()
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool = None

    # -- associations ---------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        rq = event.assoc.requestor.primitive
        calling, called = rq.calling_ae_title.strip(), rq.called_ae_title.strip()
        cfg = self.config
        allowed = ({cfg.ae_title} | {r.ae_title for r in cfg.recipients}
                   if calling == cfg.pacs.ae_title else {cfg.ae_title})
        if calling not in ae_titles(cfg):  # pynetdicom rejects it (reason 3) next
            log.warning("association from %s (%s:%s) to %s rejected: unknown calling AE title",
                        calling, event.assoc.requestor.address, event.assoc.requestor.port,
                        called)
        elif called not in allowed:
            log.warning("association from %s to %s rejected: %s may call %s", calling, called,
                        calling, ", ".join(sorted(allowed)))
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)  # rejected-permanent, called AET
            event.assoc.is_rejected = True
            event.assoc.kill()

    def _on_established(self, event) -> None:
        rq = event.assoc.requestor
        log.info("association from %s (%s:%s) to %s", rq.ae_title.strip(), rq.address, rq.port,
                 _called(event))

    def _on_ended(self, event) -> None:
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association from %s to %s %s", event.assoc.requestor.ae_title.strip(),
                 _called(event), how)

    # -- marking --------------------------------------------------------------------------
    def _keep_original(self, ds: Dataset) -> Path:
        """Write a received instance once, named by its SHA-256, atomically."""
        fd, tmp = tempfile.mkstemp(dir=self.spool, suffix=".dcm")
        os.close(fd)
        try:
            ds.save_as(tmp, enforce_file_format=True)
            digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            path = self.originals / f"{digest}.dcm"
            if path.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def _prepare(self, ds: Dataset, recipient: Recipient, route: str,
                 caller: str) -> _Outgoing:
        """Mark (or pass unmarked) one instance for ``recipient`` and record it as pending.

        Raises LeaktraceError (the message names the instance) when it cannot be marked.
        """
        uid = str(ds.get("SOPInstanceUID", ""))
        delivery = PendingDelivery(recipient.ae_title, route, f"from {caller}")
        modality = str(ds.get("Modality", "")).strip().upper()
        if modality in self.config.pass_unmarked:
            with Ledger(self.ledger_path) as book:
                did = book.record_unmarked_delivery(delivery, sop_instance_uid=uid,
                                                    recipient=recipient.name)
            return _Outgoing(ds, did, None, uid)
        started = time.perf_counter()
        source = self._keep_original(ds)
        output = self.spool / f"{uuid.uuid4().hex}.dcm"
        try:
            with Ledger(self.ledger_path) as book:
                if self._pool is None or recipient.deidentify:  # de-identified in-thread
                    record = export_film(source, output, recipient=recipient.name,
                                         ledger=book, key=self.key, delivery=delivery,
                                         deidentify=recipient.deidentify,
                                         deid_options=recipient.deid_options)
                else:
                    record = export_film_in_pool(self._pool, source, output,
                                                 recipient=recipient.name, ledger=book,
                                                 key=self.key, delivery=delivery)
                did = book.delivery_of(record.id).id
            marked = pydicom.dcmread(output)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(output)
        return _Outgoing(marked, did, record.id, uid, time.perf_counter() - started)

    def _settle(self, out: _Outgoing, status: int | None, recipient: Recipient, route: str,
                reason: str = "") -> bool:
        ok = _ok(status)
        detail = f"0x{status:04X}" if status is not None else (reason or "no response")
        ds = out.dataset
        access = AccessEvent(  # the transfer in the access log, in the same transaction
            self.config.ae_title, "gateway transfer",
            {"route": route, "delivery_id": out.delivery_id, "export_id": out.export_id,
             "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
             "sop_class_uid": str(ds.get("SOPClassUID", "")),
             "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
             "source_sop_uid": out.source_uid, "recipient": recipient.name},
            "delivered" if ok else "failed", detail, peer=recipient.ae_title)
        with Ledger(self.ledger_path) as book:
            book.settle_delivery(out.delivery_id, "delivered" if ok else "failed", detail,
                                 access=access)
        log.info("%s %s -> %s sop=%s source=%s export=%s %s (%s) marking %.2f s", route,
                 "unmarked" if out.export_id is None else "marked", recipient.ae_title,
                 out.dataset.get("SOPInstanceUID", ""), out.source_uid, out.export_id,
                 "delivered" if ok else "FAILED", detail, out.marking_s,
                 extra={"marking_s": out.marking_s, "delivered": ok})
        return ok

    # -- storage routes -------------------------------------------------------------------
    def _on_store(self, event) -> int | Dataset:
        caller, called = event.assoc.requestor.ae_title.strip(), _called(event)
        recipient = self.config.recipient(called)
        if recipient is not None and not recipient.listens:
            log.warning("C-STORE from %s to %s refused: a route needs the recipient's address",
                        caller, called)
            return _NOT_AUTHORIZED
        if caller != self.config.pacs.ae_title or recipient is None:
            log.warning("C-STORE from %s to %s refused: only the PACS stores, to a recipient's "
                        "AE title", caller, called)
            return _NOT_AUTHORIZED
        ds = event.dataset
        ds.file_meta = event.file_meta
        try:
            out = self._prepare(ds, recipient, "store", caller)
        except LeaktraceError as exc:
            log.warning("store refused sop=%s for %s: %s", ds.get("SOPInstanceUID", ""),
                        recipient.ae_title, _no_path(exc))
            return _failure(_CANNOT_UNDERSTAND, exc)
        status, reason = send(self.config.ae_title, recipient, out.dataset)
        if self._settle(out, status, recipient, "store", reason):
            return _SUCCESS
        return _failure(_OUT_OF_RESOURCES, f"{recipient.ae_title}: {reason or hex(status)}")

    # -- query ----------------------------------------------------------------------------
    def _on_find(self, event) -> Iterator:
        model = event.context.abstract_syntax
        caller = event.assoc.requestor.ae_title.strip()
        asking = self.config.recipient(caller)
        if asking is None:
            yield _NOT_AUTHORIZED, None
            return
        if asking.deidentify:  # the PACS's answers name the patients its copies do not
            log.warning("C-FIND from %s refused: it receives de-identified copies, and the "
                        "PACS's answers carry the identities", caller)
            yield _NOT_AUTHORIZED, None
            return
        ae = AE(ae_title=self.config.ae_title)
        ae.add_requested_context(model)
        pacs = self.config.pacs
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
        if not assoc.is_established:
            log.warning("C-FIND from %s: the PACS %s at %s did not accept the association",
                        caller, pacs.ae_title, pacs.address)
            yield _UNABLE_TO_PROCESS, None
            return
        matches = 0
        try:
            for status, identifier in assoc.send_c_find(event.identifier, model):
                if event.is_cancelled:
                    yield _CANCEL, None
                    return
                code = getattr(status, "Status", None)
                if code is None:
                    yield _UNABLE_TO_PROCESS, None
                    return
                if code in (0xFF00, 0xFF01):
                    matches += 1
                    yield code, identifier
                elif code != _SUCCESS:
                    yield code, identifier
                    return
        finally:
            assoc.release()
            log.info("find from %s: %d matches from %s", caller, matches, pacs.ae_title)

    # -- retrieve -------------------------------------------------------------------------
    def _retrieve(self, identifier: Dataset, model: UID, folder: Path) -> tuple[list[Path], str]:
        """C-GET what ``identifier`` selects from the PACS into ``folder``; the files and, if
        the PACS did not deliver everything, why."""
        files: list[Path] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = folder / f"{len(files):06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            return _SUCCESS

        ae = AE(ae_title=self.config.ae_title)
        ae.requested_contexts = [build_context(model)] + storage_contexts()
        roles = [build_role(uid, scp_role=True) for uid in RETRIEVE_SOP_CLASSES]
        pacs = self.config.pacs
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        if not assoc.is_established:
            return files, f"the PACS {pacs.ae_title} at {pacs.address} refused the association"
        problem = ""
        try:
            final = None
            for status, _ in assoc.send_c_get(identifier, model):
                final = getattr(status, "Status", None)
            if final is None:
                problem = "the PACS ended the C-GET without a final response"
            elif final != _SUCCESS:
                problem = f"the PACS answered the C-GET with status 0x{final:04X}"
        finally:
            assoc.release()
        return files, problem

    def _serve_retrieved(self, event, recipient: Recipient, route: str, responses: dict,
                         sending: dict) -> Iterator:
        """Shared by C-MOVE and C-GET: retrieve, then yield the count and each marked copy
        (pynetdicom sends it on ``sending["assoc"]`` and stores the receiver's response in
        ``responses``)."""
        caller = event.assoc.requestor.ae_title.strip()
        model = _GET_MODEL[event.context.abstract_syntax]
        with tempfile.TemporaryDirectory(dir=self.spool) as folder:
            files, problem = self._retrieve(event.identifier, model, Path(folder))
            if problem:
                log.warning("%s from %s for %s: %s (%d instances retrieved)", route, caller,
                            recipient.ae_title, problem, len(files))
            if not files:
                if problem:  # one sub-operation, failed: the caller sees the failure
                    yield 1
                    yield _UNABLE_TO_PROCESS, None
                else:
                    yield 0  # nothing matched
                return
            yield len(files)
            sent: list[_Outgoing] = []
            try:
                for path in files:
                    if event.is_cancelled:
                        yield _CANCEL, None
                        return
                    ds = pydicom.dcmread(path)
                    try:
                        out = self._prepare(ds, recipient, route, caller)
                    except LeaktraceError as exc:
                        log.warning("%s refused sop=%s for %s: %s", route,
                                    ds.get("SOPInstanceUID", ""), recipient.ae_title,
                                    _no_path(exc))
                        yield _PENDING, _REFUSED_SUBOPERATION
                        continue
                    sent.append(out)
                    _fit_to(out.dataset, sending.get("assoc"))
                    yield _PENDING, out.dataset
            finally:  # also when the association ends mid-study (the generator is closed)
                for out in sent:
                    uid = str(out.dataset.SOPInstanceUID)
                    self._settle(out, responses.get(uid), recipient, route,
                                 "" if uid in responses else "no C-STORE response")

    def _on_move(self, event) -> Iterator:
        caller = event.assoc.requestor.ae_title.strip()
        destination = event.move_destination
        if isinstance(destination, bytes):
            destination = destination.decode("ascii", "replace")
        recipient = self.config.recipient(destination or "")
        if recipient is not None and not recipient.listens:
            log.warning("C-MOVE from %s to %s refused: it has no address in the configuration "
                        "(C-GET only)", caller, recipient.ae_title)
            recipient = None
        if self.config.recipient(caller) is None or recipient is None:
            log.warning("C-MOVE from %s to unknown destination %r refused", caller, destination)
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        responses: dict[str, int] = {}
        sending: dict = {}
        try:
            yield recipient.host, recipient.port, {"contexts": storage_contexts(), "evt_handlers": [
                (evt.EVT_DIMSE_RECV, _store_responses(responses)),
                (evt.EVT_ESTABLISHED, lambda e: sending.__setitem__("assoc", e.assoc))]}
            yield from self._serve_retrieved(event, recipient, "move", responses, sending)
        finally:
            if "assoc" not in sending:  # pynetdicom answers 0xA801 and sends nothing
                log.warning("move from %s: %s at %s did not accept an association; nothing "
                            "was marked or sent", caller, recipient.ae_title, recipient.address)

    def _on_get(self, event) -> Iterator:
        caller = event.assoc.requestor.ae_title.strip()
        recipient = self.config.recipient(caller)
        if recipient is None:
            yield 0
            return
        responses: dict[str, int] = {}
        handler = _store_responses(responses)
        event.assoc.bind(evt.EVT_DIMSE_RECV, handler)
        try:
            yield from self._serve_retrieved(event, recipient, "get", responses,
                                             {"assoc": event.assoc})
        finally:
            with contextlib.suppress(Exception):
                event.assoc.unbind(evt.EVT_DIMSE_RECV, handler)


def _fit_to(ds: Dataset, assoc) -> None:
    """Decompress ``ds`` (to Explicit VR Little Endian) when ``assoc`` has no context for its
    own transfer syntax but one for an uncompressed syntax."""
    if assoc is None:
        return
    ts = ds.file_meta.TransferSyntaxUID
    accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                if cx.abstract_syntax == ds.SOPClassUID}
    if ts not in accepted and ts.is_compressed and accepted & {ExplicitVRLittleEndian,
                                                               ImplicitVRLittleEndian}:
        ds.decompress()


def prepare_store(config: GatewayConfig) -> tuple[Path, Path]:
    """Create (mode 0700) and check the store's ``originals`` and ``spool`` folders.

    Raises
    ------
    LeaktraceError
        A folder cannot be created or is not writable; the message names it.
    """
    folders = (config.store / "originals", config.store / "spool")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LeaktraceError(f"{folder}: cannot create the gateway's store folder "
                                 f"({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LeaktraceError(f"{folder}: the gateway's store folder is not writable")
    return folders


def _store_responses(responses: dict):
    """An EVT_DIMSE_RECV handler keeping each C-STORE-RSP's status by SOP Instance UID."""
    def handler(event) -> None:
        cs = getattr(event.message, "command_set", None)
        if cs is not None and cs.get("CommandField") == 0x8001:  # C-STORE-RSP
            responses[str(cs.get("AffectedSOPInstanceUID", ""))] = int(cs.Status)
    return handler


def ae_titles(config: GatewayConfig) -> set[str]:
    return {config.pacs.ae_title} | {r.ae_title for r in config.recipients}


def _called(event) -> str:
    return event.assoc.requestor.primitive.called_ae_title.strip()


def _no_path(exc: BaseException) -> str:
    """A refusal's message without the spool path it names (the instance is named already)."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and ("/spool/" in head or "/originals/" in head) else text


def _failure(status: int, why) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = _no_path(why)[:64] if isinstance(why, BaseException) else str(why)[:64]
    return ds


def send(calling_ae: str, node: Node, ds: Dataset, *,
         timeout: float = 30) -> tuple[int | None, str]:
    """C-STORE one dataset to ``node``; returns (its status, or None, and why not).

    The dataset goes in its own transfer syntax if the receiver accepts it, else decompressed
    to Explicit VR Little Endian.
    """
    ts = ds.file_meta.TransferSyntaxUID
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, list(dict.fromkeys(
        [ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return None, (f"{node.ae_title} at {node.address} "
                      f"{'rejected' if assoc.is_rejected else 'did not accept'} the association")
    try:
        _fit_to(ds, assoc)
        status = assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        return code, "" if code is not None else "no C-STORE response (association ended)"
    except Exception as exc:  # pynetdicom raises on a lost connection, a bad context...
        return None, f"C-STORE to {node.ae_title} failed ({exc})"
    finally:
        if assoc.is_established:
            assoc.release()


def echo(calling_ae: str, node: Node, *, timeout: float = 10) -> str:
    """C-ECHO ``node``; returns "" when it answered success, else what went wrong."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sc.Verification)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return (f"association {'rejected' if assoc.is_rejected else 'not accepted'} "
                f"(is {node.ae_title} listening at {node.address} and does it know "
                f"{calling_ae}?)")
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        return "" if code == _SUCCESS else f"C-ECHO answered {code!r}"
    finally:
        assoc.release()
