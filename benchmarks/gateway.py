"""Throughput of the gateway: studies pulled from a real Orthanc through it, and directly.

Each shared human film is stored in an Orthanc started for the run (Debian's ``orthanc``).
A workstation (pynetdicom, on loopback) then retrieves every study with C-GET, ``--repeats``
times each way:

* **direct**: from Orthanc itself, unmarked (what the workstation would get without
  leaktrace);
* **gateway**: from the gateway, which retrieves the study from Orthanc, marks each instance
  for the workstation, records it in the ledger and sends it on.

Reported per film: seconds per image each way, the gateway's added latency, the gateway's own
marking time per instance (keeping the original, marking, writing and recording: the
``marking`` of its log line), and the time :func:`forensics.export.export_film` takes for the
same film on disk (``embed``'s own cost).

Throughput: every study pulled at once by ``--clients`` workstations (threads), through
gateways with 1 and with ``--workers`` marking processes: images per second.

Writes ``gateway.json`` to ``--out``.

Usage::

    python benchmarks/gateway.py [--films DIR] [--repeats N] [--workers N] [--clients N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
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
from forensics.external.orthanc import free_port, start_orthanc
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


def doc_config(config) -> dict:
    """The parsed configuration back as the dict :func:`parse_config` takes."""
    return {"pacs": {"ae_title": config.pacs.ae_title, "address": config.pacs.address},
            "recipients": [{"ae_title": r.ae_title, "address": r.address, "name": r.name}
                           for r in config.recipients]}


def pull_all(port: int, studies: list[str], clients: int) -> float:
    """Every study pulled through the gateway by ``clients`` threads at once; images/s."""
    queue, lock, count = list(studies), threading.Lock(), [0]

    def client():
        while True:
            with lock:
                if not queue:
                    return
                study = queue.pop()
            _, n = c_get(port, "LEAKTRACE", study)
            with lock:
                count[0] += n

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, default=film_data_dir() / "dicom")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reported"))
    args = parser.parse_args(argv)
    marking: list[float] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if hasattr(record, "marking_s"):
                marking.append(record.marking_s)

    logging.getLogger("leaktrace.gateway").addHandler(Collect())
    logging.getLogger("leaktrace.gateway").setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
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
            rows, seen, studies = [], set(), []
            for film in films:
                ds = pydicom.dcmread(film, stop_before_pixels=True, force=True)
                if str(ds.SOPInstanceUID) in seen:  # the same instance in another syntax
                    continue
                seen.add(str(ds.SOPInstanceUID))
                pacs.upload(film)
                study = str(ds.StudyInstanceUID)
                direct = [c_get(pacs.dicom_port, pacs.ae_title, study) for _ in range(args.repeats)]
                first = len(marking)
                through = [c_get(gw_port, "LEAKTRACE", study) for _ in range(args.repeats)]
                gateway_marking = statistics.median(marking[first:])
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
                       "gateway_marking_s_per_image": gateway_marking / n,
                       "embed_s_per_image": statistics.median(embed)}
                row["added_latency_s"] = row["gateway_s_per_image"] - row["direct_s_per_image"]
                row["overhead_beyond_embed_s"] = row["added_latency_s"] - row["embed_s_per_image"]
                rows.append(row)
                print(f"{film.name}: direct {row['direct_s_per_image']:.3f} s, gateway "
                      f"{row['gateway_s_per_image']:.3f} s (marking {gateway_marking:.3f} s), "
                      f"embed {row['embed_s_per_image']:.3f} s per image", file=sys.stderr)
                studies.append(study)
            gateway.stop()
            throughput = {}
            for workers in sorted({1, args.workers}):
                port = free_port()
                cfg = parse_config({**doc_config(config), "gateway": {
                    "ae_title": "LEAKTRACE", "listen": f"127.0.0.1:{port}",
                    "store": str(tmp / "store")}})
                node = Gateway(cfg, ledger_path=tmp / "ledger.sqlite", key=KEY, workers=workers)
                node.start()
                try:
                    throughput[workers] = pull_all(port, studies, args.clients)
                finally:
                    node.stop()
                print(f"{args.clients} clients, {workers} marking process(es): "
                      f"{throughput[workers]:.2f} images/s", file=sys.stderr)
            with Ledger(tmp / "ledger.sqlite", create=False) as book:
                states = [d.status for d in book.deliveries()]
        finally:
            pacs.stop()
    total_direct = sum(r["direct_s_per_image"] for r in rows)
    total_gateway = sum(r["gateway_s_per_image"] for r in rows)
    doc = {"run": run_description(), "repeats": args.repeats, "rows": rows,
           "images_per_s_direct": len(rows) / total_direct,
           "images_per_s_gateway": len(rows) / total_gateway,
           "deliveries": {s: states.count(s) for s in sorted(set(states))},
           "clients": args.clients,
           "images_per_s_concurrent": {str(w): v for w, v in throughput.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway.json").write_text(json.dumps(doc, indent=1))
    print("| film | direct s/image | gateway s/image | added latency s | gateway marking s "
          "| embed s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['film']} | {r['direct_s_per_image']:.3f} | {r['gateway_s_per_image']:.3f} "
              f"| {r['added_latency_s']:.3f} | {r['gateway_marking_s_per_image']:.3f} "
              f"| {r['embed_s_per_image']:.3f} |")
    print(f"\nimages/s one at a time: direct {doc['images_per_s_direct']:.1f}, gateway "
          f"{doc['images_per_s_gateway']:.2f}; {args.clients} clients at once: "
          + ", ".join(f"{w} marking process(es) {v:.2f}" for w, v in throughput.items())
          + f"; deliveries {doc['deliveries']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
