"""PS3.15 Annex E de-identification of a film's header before it is marked.

The Basic Application Level Confidentiality Profile's actions (PS3.15 Table E.1-1, column
"Basic Prof.") come from KitwareMedical's ``dicom-anonymizer`` (BSD-3-Clause), which keeps the
table as data, edition by edition (:data:`TABLE_EDITION`), and whose action functions
(``replace``, ``empty``, ``delete``...) leaktrace applies. What the library leaves out is added
here:

* the profile's options (PS3.15 E.3), chosen by name (:data:`OPTIONS`). The library's table has
  only the basic column, so the elements each option keeps or cleans are listed here
  (:data:`_OPTION_KEEPS`), from the option columns of Table E.1-1;
* keyed pseudonyms and UIDs: HMAC-SHA256 (RFC 2104) under a key derived from the site key,
  the ledger and the recipient (:func:`mapping_key`), so that two exports of one study for one
  recipient keep their relations (same Study and Series Instance UID, same pseudonym), the
  copies of two recipients cannot be linked to each other, and the ledger can map back;
* dates shifted by a keyed number of days per patient (Retain Longitudinal Temporal
  Information with Modified Dates Option, E.3.6);
* the action applied in sequence items at any depth (the library acts on the top level);
* private elements removed unless safe-listed (:data:`SAFE_PRIVATE`);
* (0012,0062) *Patient Identity Removed*, (0012,0063) *De-identification Method*,
  (0012,0064) *De-identification Method Code Sequence* (PS3.16 CID 7050) and (0028,0303)
  *Longitudinal Temporal Information Modified* (PS3.3 C.7.1.1).

Burned-in text is :mod:`forensics.burnedin`'s job; :func:`deidentify_film` joins both and
refuses (fails closed) when the pixels may carry identity and were not cleaned.

References
----------
DICOM PS3.15 2026, Annex E "Attribute Confidentiality Profiles", Table E.1-1.
DICOM PS3.16, CID 7050 "De-identification Method".
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from watermark.dicomio import Film
from watermark.errors import InvalidInputError, LeaktraceError
from watermark.keys import SiteKey

__all__ = ["OPTIONS", "TABLE_EDITION", "DeidResult", "DeidRefusedError", "mapping_key",
           "check_options", "deidentify_dataset", "deidentify_film", "DeidentifiedFilm", "precheck",
           "precheck_all", "identifying_values", "pseudonym_uid"]

#: The dicom-anonymizer table used: PS3.15 Table E.1-1 of the 2026c edition.
TABLE_EDITION = "dicomfields_2026c"

#: Option name -> (code value, code meaning) in PS3.16 CID 7050 (scheme DCM).
OPTIONS: dict[str, tuple[str, str]] = {
    "retain-longitudinal-modified-dates":
        ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    "clean-pixel-data": ("113101", "Clean Pixel Data Option"),
}
_BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")

# Elements of Table E.1-1 whose option columns say K (keep) or C (clean) for the option; the
# library's table has no option columns. (tag, "K" | "C")
_OPTION_KEEPS: dict[str, tuple[tuple[int, str], ...]] = {
    "retain-patient-characteristics": (
        (0x00102110, "C"), (0x00102160, "K"), (0x001021A0, "K"), (0x001021C0, "K"),
        (0x00101010, "K"), (0x00100040, "K"), (0x00101020, "K"), (0x00101030, "K"),
        (0x00102203, "K"), (0x00102000, "C"), (0x00380500, "C"), (0x00380050, "C"),
        (0x001021B0, "C"), (0x00102180, "C")),
    "retain-device-identity": (
        (0x00181000, "K"), (0x00181002, "K"), (0x0018700A, "K"), (0x00181004, "K"),
        (0x00181007, "K"), (0x00181008, "K"), (0x00081010, "K"), (0x00181400, "C"),
        (0x3010002D, "K"), (0x00181010, "K"), (0x00189371, "K"), (0x00189373, "K"),
        (0x00189367, "K")),
    "retain-institution-identity": (
        (0x00080080, "K"), (0x00080081, "K"), (0x00080082, "K"), (0x00081040, "K"),
        (0x00081041, "K")),
    "clean-descriptors": (
        (0x00081030, "C"), (0x0008103E, "C"), (0x00204000, "C"), (0x00081080, "C"),
        (0x00181030, "C"), (0x00400254, "C"), (0x00321060, "C"), (0x00321030, "C"),
        (0x00184000, "C"), (0x00104000, "C"), (0x00324000, "C"), (0x00400007, "C"),
        (0x00181400, "C"), (0x00380040, "C"), (0x00384000, "C"), (0x00380062, "C"),
        (0x001021B0, "C")),
}

#: Private elements kept: (private creator, group, element offset 0x00-0xFF). PS3.15 E.3.10
#: asks for each one to be known not to hold identity; none is listed by default.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset()

_PSEUDONYM_TAGS = (0x00100010, 0x00100020)  # Patient's Name, Patient ID: keyed pseudonyms
_MAX_SHIFT_DAYS = 3650


class DeidRefusedError(LeaktraceError):
    """A de-identified export was refused: its pixels may carry identity (fail closed)."""


@dataclass(frozen=True)
class DeidResult:
    """A de-identified dataset and what the ledger keeps to map it back.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        The de-identified copy (the input is left as it was).
    options : tuple of str
        The options applied, in :data:`OPTIONS` order.
    mapping : dict
        ``{"patient_id": [source, pseudonym], "patient_name": [...], "study_uid": [...],
        "series_uid": [...], "sop_uid": [...], "date_shift_days": int | None,
        "per_recipient": True}``: what an authorised investigator needs to map the copy's
        identifiers back to the source study.
    """

    dataset: Dataset
    options: tuple[str, ...]
    mapping: dict = field(default_factory=dict)


def check_options(options: Iterable[str]) -> tuple[str, ...]:
    """The option names in :data:`OPTIONS` order; ``InvalidInputError`` names an unknown one."""
    options = list(options)
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise InvalidInputError(f"unknown --deid-option {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(OPTIONS)}")
    return tuple(o for o in OPTIONS if o in options)


def mapping_key(key: SiteKey, ledger_id: str, recipient: str) -> SiteKey:
    """The key of the keyed pseudonyms and UIDs for one recipient of one ledger.

    HMAC-derived from the site key (:meth:`watermark.keys.SiteKey.scoped`) with the label
    ``deid/<ledger_id>/<recipient>``: per recipient, so that the copies two recipients get of
    one study carry unrelated UIDs and pseudonyms (they cannot join their datasets), while one
    recipient's copies of a study keep their relations.
    """
    return key.scoped(f"deid/{ledger_id}/{recipient}")


#: UIDs that name what an object is, never whom it is about (SOP Class UID, Referenced SOP
#: Class UID, Transfer Syntax UID...): kept as they are, whatever the table's action (a
#: replaced one would make the reference point at no SOP class at all).
_CLASS_UIDS = frozenset({0x00080016, 0x00081150, 0x00020002, 0x00020010, 0x0008010C,
                         0x00041510, 0x00041512})


# dicom-anonymizer's actions that may replace (D): on a sequence they replace what is inside
# with random values, Referenced SOP Class and Instance UIDs included; leaktrace applies the
# table to the items instead, so the references keep their class and get keyed UIDs.
def _replacing() -> frozenset:
    from dicomanonymizer import simpledicomanonymizer as sda

    return frozenset({sda.replace, sda.delete_or_replace, sda.empty_or_replace,
                      sda.delete_or_empty_or_replace, sda.replace_UID,
                      sda.delete_or_empty_or_replace_UID})


def pseudonym_uid(key: SiteKey, uid: str) -> str:
    """A UID for ``uid`` under ``key``: ``2.25.`` and 128 bits of HMAC-SHA256, in decimal
    (PS3.5 B.2, at most 44 characters)."""
    digest = key.digest("uid", uid.strip().encode())
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _pseudonym(key: SiteKey, patient: str) -> str:
    digest = key.digest("patient", patient.encode("utf-8"))
    return "LT" + hashlib.sha256(digest).hexdigest()[:12].upper()


def _date_shift(key: SiteKey, patient: str) -> int:
    """Days every date of this patient is moved back by (1 .. 3650)."""
    return 1 + int.from_bytes(key.digest("date-shift", patient.encode("utf-8"))[:8], "big") \
        % _MAX_SHIFT_DAYS


def identifying_values(ds: Dataset, *, exclude: frozenset = frozenset()) -> list[str]:
    """The header's identifying text values (names, IDs, dates, institution...), for the
    cross-check of burned-in text and of cleaned descriptors; ``exclude``: tags (ints) whose
    own values are left out (the elements being cleaned).

    Each element of Table E.1-1 with a text or date VR and a non-empty value, at any depth,
    plus the components of person names. Values shorter than 2 characters are left out.
    """
    table = _table_tags()
    values: list[str] = []

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            if (int(elem.tag) not in table or int(elem.tag) in exclude
                    or elem.VR not in _TEXT_VRS or elem.value is None):
                continue
            items = list(elem.value) if isinstance(elem.value, (list, tuple, MultiValue)) \
                else [elem.value]
            for v in items:
                text = str(v).strip()
                if elem.VR == "PN":
                    values.extend(p for p in re.split(r"[\^=\s]+", text) if p)
                values.append(text)

    walk(ds)
    seen: dict[str, None] = {}
    for v in values:
        if len(v) >= 2 and v.upper() not in {"ANONYMIZED", "ANONYMOUS"}:
            seen.setdefault(v, None)
    return list(seen)


_TEXT_VRS = {"AE", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "AS",
             "UI", "DS", "IS"}


def _table() -> dict:
    """Table E.1-1's basic actions from dicom-anonymizer: {tag tuple: action function}."""
    try:
        from dicomanonymizer import simpledicomanonymizer as sda
    except ImportError as exc:
        raise InvalidInputError("de-identification needs the 'dicom-anonymizer' package "
                                "(pip install dicom-anonymizer)") from exc
    return sda.initialize_actions(TABLE_EDITION)


def _table_tags() -> set[int]:
    return {int(Tag(t[0], t[1])) for t in _table() if len(t) == 2}


def _clean_text(value: str, identifying: list[str]) -> str:
    """A descriptor with every identifying header value, and every run of 5 or more digits
    (dates, numbers), taken out (the Clean actions, C, of Table E.1-1)."""
    text = str(value)
    for v in sorted(identifying, key=len, reverse=True):
        text = re.sub(re.escape(v), "", text, flags=re.IGNORECASE)
    text = re.sub(r"\d[\d./-]{3,}\d", "", text)
    return re.sub(r"\s{2,}", " ", text).strip(" ^-,;:")


def deidentify_dataset(source: Dataset, *, key: SiteKey, options: Iterable[str] = (),
                       pixels_clean: bool, safe_private: Iterable[tuple[str, int, int]]
                       = SAFE_PRIVATE) -> DeidResult:
    """A copy of ``source`` under the Basic Application Level Confidentiality Profile.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The film's dataset; not modified.
    key : SiteKey
        The mapping key (:func:`mapping_key`): chooses pseudonyms, UIDs and the date shift.
    options : iterable of str
        Names from :data:`OPTIONS`. ``clean-pixel-data`` is only recorded here (the pixels
        are :mod:`forensics.burnedin`'s).
    pixels_clean : bool
        Whether the pixels carry no identity (cleaned, or (0028,0301) *Burned In Annotation*
        NO): (0012,0062) *Patient Identity Removed* is YES only then.
    safe_private : iterable of (creator, group, offset)
        Private elements kept (:data:`SAFE_PRIVATE`).

    Returns
    -------
    DeidResult

    Notes
    -----
    Order of steps: identifying values are collected from the source; UIDs of the table's U
    actions are replaced by keyed UIDs, Patient's Name and ID by a keyed pseudonym, dates
    shifted (with the option) and option elements kept or cleaned; every other element of
    the table gets its basic action (dicom-anonymizer's function) in the dataset and in
    every sequence item; private elements are removed unless safe-listed; the attributes
    that record the de-identification are set last.

    Raises
    ------
    InvalidInputError
        An unknown option, or ``dicom-anonymizer`` is not installed.
    """
    options = check_options(options)
    ds = copy.deepcopy(source)
    actions = _table()
    from dicomanonymizer import simpledicomanonymizer as sda

    patient = str(source.get("PatientID", "") or "").strip() or \
        str(source.get("PatientName", "") or "").strip()
    pseudonym = _pseudonym(key, patient)
    shift = _date_shift(key, patient) if "retain-longitudinal-modified-dates" in options else None

    special: dict[int, Callable[[Dataset, object], None]] = {}
    kept: dict[int, str] = {}
    for option in options:
        for tag, how in _OPTION_KEEPS.get(option, ()):
            kept[tag] = "C" if "C" in (how, kept.get(tag)) else "K"
    # what a cleaned element must not contain: the identifying values of the OTHER elements
    # (an element's own text is not taken out of itself, or every descriptor ends up empty)
    identifying = identifying_values(source, exclude=frozenset(kept))

    def keep_or_clean(d: Dataset, tag) -> None:
        elem = d.get(tag)
        if elem is None or kept[int(Tag(tag))] == "K":
            return
        if elem.VR == "SQ":
            return  # a kept code sequence (Institution Code Sequence...) holds codes, not text
        if isinstance(elem.value, str):
            elem.value = _clean_text(elem.value, identifying)

    def keyed_uid(d: Dataset, tag) -> None:
        elem = d.get(tag)
        if elem is None or elem.VR != "UI" or not elem.value:
            return
        if isinstance(elem.value, str):
            elem.value = pseudonym_uid(key, elem.value)
        else:
            elem.value = [pseudonym_uid(key, str(v)) for v in elem.value]

    def shifted(d: Dataset, tag, basic) -> None:
        elem = d.get(tag)
        if elem is None:
            return
        moved = _shift(str(elem.value or ""), elem.VR, shift) if shift is not None else None
        if moved is None:
            basic(d, tag)
        else:
            elem.value = moved

    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    categories = dicom_anonymization_database_selector(TABLE_EDITION)
    references = {int(Tag(*t)) for t in categories["X_Z_U_STAR_TAGS"]}
    # dates and times: the library writes 00010101 for Z and even for X, which dciodvfy
    # rejects; here X removes them, Z empties them and D gives a valid dummy
    date_action = {}
    for category, tags in categories.items():
        if category == "ALL_TAGS":
            continue
        how = (_remove if category.startswith("X") else _empty if category.startswith("Z")
               else _dummy_date)
        date_action |= {int(Tag(*t)): how for t in tags if len(t) == 2}
    for tag, action in actions.items():
        if len(tag) != 2:
            continue
        t = int(Tag(*tag))
        if t in references:  # X/Z/U*: keep the reference, its UIDs are replaced (U) below
            special[t] = lambda d, tg: None
        elif t in _PSEUDONYM_TAGS:
            special[t] = lambda d, tg: _set_if_present(d, tg, pseudonym)
        elif t in kept:
            special[t] = keep_or_clean
        elif action is sda.replace_UID or _vr(t) == "UI":
            special[t] = keyed_uid
        elif shift is not None and _vr(t) in ("DA", "DT") and t != 0x00100030:
            # Patient's Birth Date keeps its basic action: a shifted one still gives the age
            special[t] = lambda d, tg, basic=date_action[t]: shifted(d, tg, basic)
        elif _vr(t) in ("DA", "DT", "TM"):
            special[t] = date_action[t]
    for t in kept:  # an option element missing from the library's edition of the table
        special.setdefault(t, keep_or_clean)
    ranged = [(tag, action) for tag, action in actions.items() if len(tag) == 4]
    single = {int(Tag(*tag)): action for tag, action in actions.items() if len(tag) == 2}
    safe = set(safe_private)
    replacing = _replacing()

    def apply(d: Dataset) -> None:
        _drop_private(d, safe)
        for elem in list(d):
            t = int(elem.tag)
            if t == 0x7FE00010 or t in _CLASS_UIDS:
                continue
            tag = (elem.tag.group, elem.tag.element)
            if t in special:
                special[t](d, tag)
            elif t in single and elem.VR == "SQ" and single[t] in replacing:
                pass  # its items get the table's actions one by one, below (keyed UIDs)
            elif t in single:
                single[t](d, tag)
            else:
                for (g, e, gm, em), action in ranged:
                    if elem.tag.group & gm == g & gm and elem.tag.element & em == e & em:
                        action(d, tag)
                        break
            elem = d.get(tag)
            if elem is not None and elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    apply(item)

    apply(ds)
    ds.PatientName, ds.PatientID = pseudonym, pseudonym  # Type 2: present, with the pseudonym
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = pseudonym_uid(key, str(meta.MediaStorageSOPInstanceUID))
    _record_method(ds, options, pixels_clean, shift)
    mapping = {
        "per_recipient": True,
        "patient_id": [str(source.get("PatientID", "") or ""), str(ds.get("PatientID", ""))],
        "patient_name": [str(source.get("PatientName", "") or ""),
                         str(ds.get("PatientName", ""))],
        "study_uid": [str(source.get("StudyInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))],
        "series_uid": [str(source.get("SeriesInstanceUID", "")),
                       str(ds.get("SeriesInstanceUID", ""))],
        "sop_uid": [str(source.get("SOPInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))],
        "date_shift_days": shift,
    }
    return DeidResult(ds, options, mapping)


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _remove(d: Dataset, tag) -> None:
    if tag in d:
        del d[tag]


def _empty(d: Dataset, tag) -> None:
    if tag in d:
        d[tag].value = ""


_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000"}


def _dummy_date(d: Dataset, tag) -> None:
    if tag in d:
        d[tag].value = _DUMMY.get(d[tag].VR, "")


def _set_if_present(d: Dataset, tag, value: str) -> None:
    if tag in d:
        d[tag].value = value


def _drop_private(d: Dataset, safe: set) -> None:
    """Remove the private elements of ``d`` (this level), except safe-listed ones and the
    private creators they need."""
    creators_needed = set()
    for elem in list(d):
        if not elem.tag.is_private or elem.tag.is_private_creator:
            continue
        creator_tag = Tag(elem.tag.group, elem.tag.element >> 8)
        creator = str(d[creator_tag].value) if creator_tag in d else ""
        if (creator, elem.tag.group, elem.tag.element & 0xFF) in safe:
            creators_needed.add(int(creator_tag))
        else:
            del d[elem.tag]
    for elem in list(d):
        if elem.tag.is_private and int(elem.tag) not in creators_needed:
            del d[elem.tag]


def _shift(value: str, vr: str, days: int) -> str | None:
    """A DA or DT value moved back by ``days``; None for a value that is not a full date
    (then the basic action applies)."""
    value = value.strip()
    if not re.fullmatch(r"\d{8}.*", value):
        return None
    try:
        day = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
    moved = day - _dt.timedelta(days=days)
    if moved.year < 1:
        return None
    return moved.strftime("%Y%m%d") + (value[8:] if vr == "DT" else "")


def _record_method(ds: Dataset, options: tuple[str, ...], pixels_clean: bool,
                   shift: int | None) -> None:
    """(0012,0062), (0012,0063), (0012,0064) (PS3.3 C.7.1.1) and (0028,0303)."""
    ds.PatientIdentityRemoved = "YES" if pixels_clean else "NO"
    codes = [_BASIC_CODE] + [OPTIONS[o] for o in options]
    ds.DeidentificationMethod = [f"leaktrace PS3.15 E.1-1 ({TABLE_EDITION[-5:]})"] + \
        [meaning[:64] for _, meaning in codes[1:]]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if shift is not None else "REMOVED"


@dataclass(frozen=True)
class DeidentifiedFilm:
    """A film ready to be marked: ``film`` (de-identified dataset, cleaned pixels), the
    header's :class:`DeidResult` and the burned-in text found (``text_boxes``, empty when
    the pixels were not cleaned)."""

    film: Film
    result: DeidResult
    text_boxes: tuple = ()

    def ledger_entry(self) -> dict:
        """What :meth:`forensics.ledger.Ledger.record_export` keeps of it."""
        mapping = dict(self.result.mapping)
        mapping["text_blanked"] = sum(1 for b in self.text_boxes if not b.kept)
        mapping["markers_kept"] = [b.text for b in self.text_boxes if b.kept]
        return {"options": list(self.result.options), "mapping": mapping}


def deidentify_film(film: Film, *, key: SiteKey, options: Iterable[str] = ()
                    ) -> DeidentifiedFilm:
    """De-identify a film's header and, with ``clean-pixel-data``, its pixels; fail closed.

    Parameters
    ----------
    film : Film
        As read (:func:`watermark.dicomio.read_film`); not modified.
    key : SiteKey
        The mapping key (:func:`mapping_key`).
    options : iterable of str
        Names from :data:`OPTIONS`.

    Returns
    -------
    DeidentifiedFilm
        Its film has the same path, bit depth and transfer syntax as ``film``; (0028,0301)
        *Burned In Annotation* is NO and (0012,0062) *Patient Identity Removed* YES.

    Raises
    ------
    DeidRefusedError
        (0028,0301) *Burned In Annotation* is YES or missing and ``clean-pixel-data`` was not
        asked for; or it was and no OCR engine is installed; or text matching the header's
        identifying values is still read after cleaning. The message says why and what to do.
    InvalidInputError
        An unknown option.
    """
    from . import burnedin

    options = check_options(options)
    burned = str(film.dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    boxes: tuple = ()
    pixels = film.pixels
    if "clean-pixel-data" in options:
        if burnedin.engine_available() is None:
            raise _no_engine(film.path)
        report = burnedin.clean_pixels(film, identifying_values(film.dataset))
        if report.residual:
            raise DeidRefusedError(
                f"{film.path}: burned-in text matching the header ({len(report.residual)} "
                "identifying value(s)) is still read after cleaning; the film is not exported "
                "de-identified (clean it by hand, or export it without --deidentify)")
        pixels, boxes = report.pixels, report.boxes
        pixels.flags.writeable = False
    elif burned != "NO":
        raise _burned_in(film.path, burned)
    result = deidentify_dataset(film.dataset, key=key, options=options, pixels_clean=True)
    result.dataset.BurnedInAnnotation = "NO"
    return DeidentifiedFilm(dataclasses.replace(film, dataset=result.dataset, pixels=pixels),
                            result, boxes)


def precheck(path, options: Iterable[str]) -> None:
    """Refuse, from its header alone, a file that :func:`deidentify_film` would refuse for
    its pixels: ``embed --deidentify`` checks every file before it marks any.

    Raises
    ------
    DeidRefusedError
        As :func:`deidentify_film`, for (0028,0301) *Burned In Annotation* YES or missing
        without ``clean-pixel-data``, or ``clean-pixel-data`` without an OCR engine.
    """
    import pydicom

    from . import burnedin

    options = check_options(options)
    if "clean-pixel-data" in options:
        if burnedin.engine_available() is None:
            raise _no_engine(path)
        return
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["BurnedInAnnotation"])
    except Exception:  # not readable: export_film reports it with the reader's message
        return
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned != "NO":
        raise _burned_in(path, burned)


def precheck_all(paths: Iterable, options: Iterable[str]) -> None:
    """:func:`precheck` of every file in ``paths``, refusing them all at once.

    Raises
    ------
    DeidRefusedError
        Naming every refused file (a batch is refused whole: nothing is exported), or the
        missing OCR engine once.
    """
    options = check_options(options)
    refused = []
    for path in paths:
        try:
            precheck(path, options)
        except DeidRefusedError as exc:
            if "clean-pixel-data" in options:  # no OCR engine: the same for every file
                raise
            refused.append((path, exc))
    if len(refused) == 1:
        raise refused[0][1]
    if refused:
        names = ", ".join(f"{path} ({exc.burned_in})" for path, exc in refused)
        raise DeidRefusedError(
            f"{len(refused)} films have (0028,0301) Burned In Annotation YES or missing, so "
            f"their pixels may show the patient's identity: {names}; add --deid-option "
            "clean-pixel-data to find and blank burned-in text, or export them without "
            "--deidentify; nothing was exported")


def _no_engine(path) -> DeidRefusedError:
    return DeidRefusedError(f"{path}: --deid-option clean-pixel-data needs an OCR engine to "
                            f"find burned-in text, and none is installed ({OCR_INSTALL}); "
                            "nothing was exported")


#: How to install the OCR engine of ``clean-pixel-data`` (RapidOCR declares the GUI build of
#: OpenCV, so it goes in without its dependencies, which the ``ocr`` extra brings).
OCR_INSTALL = ("pip install 'leaktrace[ocr]' && pip install --no-deps "
               "'rapidocr-onnxruntime==1.4.4'")


def _burned_in(path, burned: str) -> DeidRefusedError:
    said = f"is {burned}" if burned else "is missing"
    error = DeidRefusedError(
        f"{path}: (0028,0301) Burned In Annotation {said}, so its pixels may show the "
        "patient's identity; add --deid-option clean-pixel-data to find and blank burned-in "
        "text, or export it without --deidentify; nothing was exported")
    error.burned_in = burned or "missing"  # for precheck_all's list
    return error
