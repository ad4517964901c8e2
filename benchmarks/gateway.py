"""Throughput of the gateway: studies pulled from a real Orthanc through it, and directly.

Each shared human film is stored in an Orthanc started for the run (Debian's ``orthanc``).
A workstation (pynetdicom, on loopback) then retrieves every study with C-GET, ``--repeats``
times each way:

* **direct**: from Orthanc itself, unmarked (what the workstation would get without
  leaktrace);
* **gateway**: from the gateway, which retrieves the study from Orthanc, marks each instance
  for the workstation, records it in the ledger and sends it on.

Reported per film: seconds per image each way, the gateway's added latency, and the time
:func:`forensics.export.export_film` takes for the same film on disk (``embed``'s own cost),
so the gateway's overhead beyond marking shows. Writes ``gateway.json`` to ``--out``.

Usage::

    python benchmarks/gateway.py [--films DIR] [--repeats N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom import sop_class as sc

from common import film_data_dir, run_description
from forensics.export import export_film
from forensics.gateway import Gateway, parse_config
from forensics.gateway.node import RETRIEVE_SOP_CLASSES, storage_contexts
from forensics.ledger import Ledger
from forensics.orthanc import free_port, start_orthanc
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
GET = sc.StudyRootQueryRetrieveInformationModelGet


def c_get(port: int, called: str, study_uid: str) -> tuple[float, int]:
    """C-GET one study as the workstation DRX_WS; (seconds, instances received)."""
    got = []

    def store(event):
        got.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="DRX_WS")
    ae.requested_contexts = [build_context(GET)] + storage_contexts()
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called,
                         ext_neg=[build_role(u, scp_role=True) for u in RETRIEVE_SOP_CLASSES],
                         evt_handlers=[(evt.EVT_C_STORE, store)])
    if not assoc.is_established:
        raise RuntimeError(f"{called} at port {port} refused the association")
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyInstanceUID = "STUDY", study_uid
    final = None
    for status, _ in assoc.send_c_get(q, GET):
        final = status
    assoc.release()
    seconds = time.perf_counter() - t0
    if final is None or final.Status != 0:
        raise RuntimeError(f"C-GET of {study_uid} from {called} ended with {final}")
    return seconds, len(got)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, default=film_data_dir() / "dicom")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reported"))
    args = parser.parse_args(argv)
    films = sorted(p for p in args.films.glob("*.dcm") if "veterinary" not in p.name)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gw_port = free_port()
        (tmp / "orthanc").mkdir()
        pacs = start_orthanc(tmp / "orthanc", modalities={
            "leaktrace": ("LEAKTRACE", "127.0.0.1", gw_port),
            "drx": ("DRX_WS", "127.0.0.1", free_port())})
        try:
            config = parse_config({
                "gateway": {"ae_title": "LEAKTRACE", "listen": f"127.0.0.1:{gw_port}",
                            "store": str(tmp / "store")},
                "pacs": {"ae_title": pacs.ae_title, "address": f"127.0.0.1:{pacs.dicom_port}"},
                "recipients": [{"ae_title": "DRX_WS", "address": "127.0.0.1:1",
                                "name": "Benchmark workstation"}]})
            gateway = Gateway(config, ledger_path=tmp / "ledger.sqlite", key=KEY)
            gateway.start()
            rows, seen = [], set()
            for film in films:
                ds = pydicom.dcmread(film, stop_before_pixels=True, force=True)
                if str(ds.SOPInstanceUID) in seen:  # the same instance in another syntax
                    continue
                seen.add(str(ds.SOPInstanceUID))
                pacs.upload(film)
                study = str(ds.StudyInstanceUID)
                direct = [c_get(pacs.dicom_port, pacs.ae_title, study) for _ in range(args.repeats)]
                through = [c_get(gw_port, "LEAKTRACE", study) for _ in range(args.repeats)]
                embed = []
                with Ledger(tmp / "embed.sqlite") as book:
                    for i in range(args.repeats):
                        t0 = time.perf_counter()
                        export_film(film, tmp / f"embed_{film.stem}_{i}.dcm", recipient="bench",
                                    ledger=book, key=KEY)
                        embed.append(time.perf_counter() - t0)
                n = direct[0][1]
                row = {"film": film.name, "instances": n,
                       "direct_s_per_image": statistics.median(s for s, _ in direct) / n,
                       "gateway_s_per_image": statistics.median(s for s, _ in through) / n,
                       "embed_s_per_image": statistics.median(embed)}
                row["added_latency_s"] = row["gateway_s_per_image"] - row["direct_s_per_image"]
                row["overhead_beyond_embed_s"] = row["added_latency_s"] - row["embed_s_per_image"]
                rows.append(row)
                print(f"{film.name}: direct {row['direct_s_per_image']:.3f} s, gateway "
                      f"{row['gateway_s_per_image']:.3f} s, embed {row['embed_s_per_image']:.3f} s"
                      " per image", file=sys.stderr)
            gateway.stop()
            with Ledger(tmp / "ledger.sqlite", create=False) as book:
                states = [d.status for d in book.deliveries()]
        finally:
            pacs.stop()
    total_direct = sum(r["direct_s_per_image"] for r in rows)
    total_gateway = sum(r["gateway_s_per_image"] for r in rows)
    doc = {"run": run_description(), "repeats": args.repeats, "rows": rows,
           "images_per_s_direct": len(rows) / total_direct,
           "images_per_s_gateway": len(rows) / total_gateway,
           "deliveries": {s: states.count(s) for s in sorted(set(states))}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway.json").write_text(json.dumps(doc, indent=1))
    print("| film | direct s/image | gateway s/image | added latency s | embed s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['film']} | {r['direct_s_per_image']:.3f} | {r['gateway_s_per_image']:.3f} "
              f"| {r['added_latency_s']:.3f} | {r['embed_s_per_image']:.3f} |")
    print(f"\nimages/s: direct {doc['images_per_s_direct']:.1f}, gateway "
          f"{doc['images_per_s_gateway']:.2f}; deliveries {doc['deliveries']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
