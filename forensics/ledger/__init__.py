"""The export ledger: who received which copy, in a tamper-evident record.

:mod:`~forensics.ledger.store` is the ledger itself (:class:`Ledger`: recipients, exports,
deliveries, film features, the access log and their hash chains) on one of two backends
(:mod:`~forensics.ledger.db`: SQLite or PostgreSQL, with the tables of
:mod:`~forensics.ledger.schema`). Around it: the Merkle tree over its records
(:mod:`~forensics.ledger.merkle`), signed checkpoints of its head
(:mod:`~forensics.ledger.checkpoint`, signed notes in :mod:`~forensics.ledger.note`), the
access log's events (:mod:`~forensics.ledger.access`) and their export as DICOM audit messages
(:mod:`~forensics.ledger.audit`). The names below are the public face, importable from
``forensics.ledger``.
"""

from .store import (ACCESS_CONTENT_FIELDS, DELIVERY_STATES, EXPORT_FORMATS, LEDGER_ENV,
                    MAX_NAME_LENGTH, AccessEvent, AccessRecord, ChainCheck, DeliveryRecord,
                    ExportRecord, Ledger, PendingDelivery, default_ledger_path, export_table,
                    ledger_exists, log_access, normalise_recipient, record_content)

__all__ = ["Ledger", "ExportRecord", "ChainCheck", "PendingDelivery", "DeliveryRecord",
           "AccessEvent", "AccessRecord", "ACCESS_CONTENT_FIELDS", "log_access",
           "DELIVERY_STATES", "export_table", "EXPORT_FORMATS",
           "default_ledger_path", "ledger_exists", "normalise_recipient", "record_content",
           "LEDGER_ENV", "MAX_NAME_LENGTH"]
