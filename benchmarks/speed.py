"""Speed and memory of marking and blind detection, with invisible-watermark side by side.

Measured on one core (the BLAS/OpenMP thread variables are set to 1 before numpy loads):

* **embed**: read + mark + write of a 2048 x 2048 16-bit DICOM film (``read_film``,
  ``mark_film``, ``write_derived``), and the whole ``export_film`` (adds the source's SHA-256
  and the ledger transaction). The film is made from the shared Philips CR film (NEMA RG1,
  uncompressed, 1841 x 1955, 15 bits): resized to 2048 x 2048, scaled to 16 bits and written
  uncompressed through leaktrace's own DICOM writer.
* **blind detect** of a 1920 x 1080 viewer screenshot (``forensics.leaks.screenshot``, with
  UI) of that film, marked and unmarked: reading the PNG plus ``watermark.detect.detect``
  against a ledger of 20 recipients. The marked one is found by the geometric search, the
  unmarked one is the slowest case (nothing is found, every hypothesis is tried).
* **peak memory** of each, from ``tracemalloc`` (numpy's arrays included), divided by the
  image's pixel bytes (the film's uint16 values; the screenshot's 8-bit values); for
  detection also as the first detection of a fresh process (``first_call_peak_bytes``: what
  one ``leaktrace detect`` holds, the key's and the sizes' tables built inside it).
* **invisible-watermark** (``imwatermark``, method ``dwtDct``, 32 bits), if installed: embed and
  decode on the same 2048 x 2048 image (the film's default display as 8-bit grey, given as BGR
  as that library expects), next to leaktrace's array-level embed (``mark_residual`` on the
  same display) and blind detect of the marked display.

Each time is the median of ``--repeat`` runs after one warm-up run; wall-clock and process CPU
seconds are both reported (on a shared machine CPU seconds are the steadier number). Writes
``speed.json`` (numbers, command, machine) to ``--out``.

Usage::

    python benchmarks/speed.py [--films DIR] [--repeat N] [--out DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from pydicom.multival import MultiValue  # noqa: E402
from skimage.transform import resize  # noqa: E402

from common import film_data_dir, run_description  # noqa: E402
from forensics import leaks  # noqa: E402
from forensics.export import DERIVATION_DESCRIPTION, export_film, mark_film  # noqa: E402
from forensics.ledger import Ledger  # noqa: E402
from watermark import dwt, payload  # noqa: E402
from watermark.detect import detect  # noqa: E402
from watermark.dicomio import read_film, write_derived  # noqa: E402
from watermark.display import render  # noqa: E402
from watermark.imageio import read_leak  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

KEY_HEX = bytes(range(32)).hex()
KEY = SiteKey(bytes.fromhex(KEY_HEX))
LEDGER = [1000 + 7 * i for i in range(20)]  # recipient numbers "in the ledger"
RECIPIENT = LEDGER[3]
SOURCE = "philips_cr_mono1_15bit_RG1_UNCR.dcm"
EDGE = 2048


def make_film(data: Path, folder: Path) -> Path:
    """The 2048 x 2048 16-bit benchmark film, written through leaktrace's DICOM writer."""
    src = read_film(data / "dicom" / SOURCE)
    scale = 65535 / (2**src.bits_stored - 1)
    pixels = resize(src.pixels.astype(np.float64), (EDGE, EDGE), order=1, preserve_range=True)
    pixels = np.clip(np.rint(pixels * scale), 0, 65535).astype(np.uint16)
    ds = src.dataset.copy()
    ds.Rows = ds.Columns = EDGE
    ds.BitsStored, ds.HighBit = 16, 15
    for name in ("WindowCenter", "WindowWidth"):  # same display: window scaled with the values
        if name in ds:
            values = ds[name].value
            values = list(values) if isinstance(values, (MultiValue, list, tuple)) else [values]
            scaled = [float(v) * scale for v in values]
            setattr(ds, name, scaled if len(scaled) > 1 else scaled[0])
    for name in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if name in ds:
            delattr(ds, name)
    ds.PixelData = pixels.tobytes()
    film = dataclasses.replace(src, dataset=ds, pixels=pixels, bits_stored=16)
    path = folder / "film_2048_16bit.dcm"
    write_derived(film, pixels, path,
                  description="leaktrace speed benchmark: NEMA RG1 Philips CR resized to 2048 x 2048, 16 bits")
    return path


def make_screenshots(film_path: Path, folder: Path) -> dict[str, Path]:
    """1920 x 1080 viewer screenshots (with UI) of the film, marked and unmarked, as PNG."""
    film = read_film(film_path)
    lo, hi = film.value_range
    marked = np.clip(np.rint(mark_film(film, RECIPIENT, KEY)), lo, hi)
    out = {}
    for name, pixels in (("marked", marked), ("unmarked", film.pixels)):
        shot = leaks.apply(render(film, pixels=pixels), [("screenshot_1up", {})],
                           np.random.default_rng(1))
        out[name] = folder / f"screenshot_{name}.png"
        leaks.save_image(shot, out[name])
    return out


def timed(fn, repeat: int) -> dict:
    """Median wall-clock and CPU seconds of ``fn()`` over ``repeat`` runs after a warm-up."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu),
            "runs_seconds": [round(x, 4) for x in wall], "result": result}


_FIRST_CALL = """
import sys, tracemalloc
from watermark.detect import detect
from watermark.imageio import read_leak
from watermark.keys import SiteKey
tracemalloc.start()
detect(read_leak(sys.argv[1]).gray, SiteKey(bytes.fromhex(sys.argv[2])), [int(n) for n in sys.argv[3:]])
print(tracemalloc.get_traced_memory()[1])
"""


def first_call_peak_bytes(path: Path) -> int:
    """Peak bytes of reading and detecting ``path`` as the first detection of a fresh process
    (as one ``leaktrace detect`` is): the per-key and per-size tables are built inside it."""
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(path), KEY_HEX, *map(str, LEDGER)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def peak_bytes(fn) -> int:
    """Peak bytes allocated (tracemalloc: Python objects and numpy arrays) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def import_imwatermark():
    """``imwatermark`` (invisible-watermark), or None when it is not installed.

    Its package imports torch for the rivaGan method only; when torch is missing, a stand-in
    module is used during the import (dwtDct never touches it) and removed afterwards.
    """
    try:
        import imwatermark

        return imwatermark
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            return None
    sys.modules["torch"] = types.ModuleType("torch")
    try:
        import imwatermark

        return imwatermark
    except ImportError:
        return None
    finally:
        del sys.modules["torch"]


def peer_side_by_side(display8: np.ndarray, repeat: int) -> dict:
    """invisible-watermark dwtDct against leaktrace on the same 8-bit image."""
    imw = import_imwatermark()
    ours_embed = timed(lambda: dwt.embed(display8, payload.encode(RECIPIENT, KEY), KEY), repeat)
    marked = np.clip(np.rint(ours_embed.pop("result")), 0, 255)
    ours_detect = timed(lambda: detect(marked, KEY, LEDGER), repeat)
    d = ours_detect.pop("result")
    out = {"image": f"{display8.shape[1]} x {display8.shape[0]} 8-bit grey (the film's default display)",
           "leaktrace": {"embed": ours_embed, "detect": ours_detect,
                         "traced": d.recipient_numbers == [RECIPIENT], "p_value": d.p_value}}
    if imw is None:
        out["invisible_watermark"] = None
        out["note"] = "imwatermark not installed: pip install invisible-watermark --no-deps opencv-python-headless"
        return out
    bgr = np.ascontiguousarray(np.repeat(display8.astype(np.uint8)[:, :, None], 3, axis=2))
    message = RECIPIENT.to_bytes(4, "big")  # 32 bits, as leaktrace's recipient number

    def encode():
        encoder = imw.WatermarkEncoder()
        encoder.set_watermark("bytes", message)
        return encoder.encode(bgr, "dwtDct")

    their_embed = timed(encode, repeat)
    their_marked = their_embed.pop("result")
    decoder = imw.WatermarkDecoder("bytes", 32)
    their_detect = timed(lambda: decoder.decode(their_marked, "dwtDct"), repeat)
    decoded = their_detect.pop("result")
    out["invisible_watermark"] = {"method": "dwtDct", "bits": 32, "embed": their_embed,
                                  "detect": their_detect, "decoded_right": bytes(decoded) == message}
    for step, ours, theirs in (("embed", ours_embed, their_embed), ("detect", ours_detect, their_detect)):
        out[f"ratio_{step}_leaktrace_over_peer"] = ours["seconds"] / theirs["seconds"]
        out[f"ratio_{step}_leaktrace_over_peer_cpu"] = ours["cpu_seconds"] / theirs["cpu_seconds"]
    return out


def run(args) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="leaktrace-speed-"))
    film_path = make_film(args.films, folder)
    film = read_film(film_path)
    film_bytes = film.pixels.nbytes
    shots = make_screenshots(film_path, folder)
    n = [0]

    def embed():  # read + mark + write
        n[0] += 1
        f = read_film(film_path)
        return write_derived(f, mark_film(f, RECIPIENT, KEY), folder / f"out_{n[0]}.dcm",
                             description=DERIVATION_DESCRIPTION)

    results = {"film": {"source": SOURCE, "size": f"{EDGE} x {EDGE}", "bits_stored": 16,
                        "transfer_syntax": str(film.transfer_syntax.name), "pixel_bytes": film_bytes}}
    emb = timed(embed, args.repeat)
    emb.pop("result")
    emb["peak_bytes"] = peak_bytes(embed)
    emb["peak_over_image_bytes"] = emb["peak_bytes"] / film_bytes
    results["embed_read_mark_write"] = emb

    with Ledger(folder / "ledger.sqlite") as book:
        exp = timed(lambda: export_film(film_path, folder / "export.dcm", recipient="Benchmark",
                                        ledger=book, key=KEY, overwrite=True), args.repeat)
    exp.pop("result")
    results["embed_export_film_with_ledger"] = exp

    for name, path in shots.items():
        def query(path=path):
            return detect(read_leak(path).gray, KEY, LEDGER)

        det = timed(query, args.repeat)
        d = det.pop("result")
        leak = read_leak(path)
        det.update(decision=d.decision, search=d.search, p_value=d.p_value,
                   right=(d.recipient_numbers == [RECIPIENT]) if name == "marked" else not d.recipient_numbers,
                   leak_size=f"{leak.gray.shape[1]} x {leak.gray.shape[0]}")
        det["peak_bytes"] = peak_bytes(query)
        det["peak_over_image_bytes"] = det["peak_bytes"] / leak.gray.size  # 1 byte per 8-bit pixel
        det["first_call_peak_bytes"] = first_call_peak_bytes(path)
        det["first_call_peak_over_image_bytes"] = det["first_call_peak_bytes"] / leak.gray.size
        results[f"detect_screenshot_{name}"] = det

    display8 = np.rint(render(film)).clip(0, 255)
    results["peer_same_image"] = peer_side_by_side(display8, args.repeat)
    meta = {**run_description(threads=1), "repeat": args.repeat, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def _summary(meta: dict) -> None:
    r = meta["results"]
    e, x = r["embed_read_mark_write"], r["embed_export_film_with_ledger"]
    print(f"embed 2048 x 2048 16-bit (read + mark + write): {e['seconds']:.3f} s "
          f"({e['cpu_seconds']:.3f} s CPU), peak memory {e['peak_over_image_bytes']:.1f}x the image; "
          f"export_film with ledger {x['seconds']:.3f} s", file=sys.stderr)
    for name in ("marked", "unmarked"):
        d = r[f"detect_screenshot_{name}"]
        print(f"blind detect 1920 x 1080 screenshot, {name}: {d['seconds']:.3f} s ({d['cpu_seconds']:.3f} s CPU)"
              f" -> {d['decision']} ({d['search']}, p {d['p_value']:.1e}), peak memory "
              f"{d['peak_over_image_bytes']:.1f}x the 8-bit image (first call in a fresh process "
              f"{d['first_call_peak_over_image_bytes']:.1f}x)", file=sys.stderr)
    p = r["peer_same_image"]
    if p.get("invisible_watermark"):
        ours, theirs = p["leaktrace"], p["invisible_watermark"]
        print(f"same 2048 x 2048 image, CPU s: leaktrace embed {ours['embed']['cpu_seconds']:.3f}, "
              f"detect {ours['detect']['cpu_seconds']:.3f}; invisible-watermark dwtDct embed "
              f"{theirs['embed']['cpu_seconds']:.3f}, decode {theirs['detect']['cpu_seconds']:.3f}; "
              f"ratios leaktrace / peer {p['ratio_embed_leaktrace_over_peer_cpu']:.2f} (embed), "
              f"{p['ratio_detect_leaktrace_over_peer_cpu']:.2f} (detect)", file=sys.stderr)
    else:
        print(p.get("note", ""), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    _summary(run(parser.parse_args()))


if __name__ == "__main__":
    main()
