"""Other open-source image watermarking libraries, adapted to grey films for the benchmark.

The peers are the libraries a researcher would otherwise pick, used through their own code
(never re-implemented here):

* ``invisible-watermark`` 0.2.0 [1]_ (import name ``imwatermark``), methods ``dwtDct`` (Haar DWT,
  then a quantised coefficient per 4 x 4 block) and ``dwtDctSvd`` (Haar DWT, DCT and SVD per
  4 x 4 block, the first singular value quantised);
* ``blind-watermark`` 0.4.4 [2]_ (import name ``blind_watermark``): Haar DWT, DCT and SVD per
  4 x 4 block of every YUV channel, with keyed block shuffling and bit permutation.

How they are adapted to grey films (what the benchmark calls fair)
------------------------------------------------------------------
Both libraries take an 8-bit BGR colour image. A film's 8-bit default-window display (what a
viewer shows, :func:`watermark.display.render`) is copied into the three channels, the
library marks it, and the marked copy is turned back to grey with OpenCV's luma
(``COLOR_BGR2GRAY``, ITU-R BT.601 weights), rounded to 8 bits: a grey film can carry nothing
in colour. Decoding gets the grey leak copied into three channels the same way.

* invisible-watermark marks the chroma channel U by default (``scales=[0, 36, 36]``; its loop
  only visits Y and U), which a grey image cannot keep, so its mark is put on luma Y instead,
  with the library's default step: ``scales=[36, 0, 0]``, for encoding and decoding alike.
  The classes behind ``WatermarkEncoder.encode(method=...)`` (``EmbedMaxDct``,
  ``EmbedDwtDctSvd``) are called directly with the same arguments, after the library's own
  size rule (at least 256 x 256 pixels of area). When PyTorch is not installed their two
  files are loaded without the package ``__init__``, which imports torch for the unused
  rivaGan method only.
* blind-watermark marks Y, U and V with its defaults (``d1=36``, ``d2=20``, 4 x 4 blocks).
  Only the Y part survives the conversion to grey. Its decoder averages the three channels
  and thresholds the averages with a 1-D k-means; for a grey leak, U and V are constant and
  add the same zero to every bit, which a k-means threshold ignores, so its unchanged public
  decoder (``WaterMark.extract(..., mode="bit")``) reads Y alone in effect.

Every peer carries :data:`PAYLOAD_BITS` = 32 bits, the length of leaktrace's recipient number
(leaktrace adds a CRC-16 and a Reed-Solomon code on top; the peers have no error correction).

Installing the peers
--------------------
``invisible-watermark`` declares ``torch`` (for rivaGan, unused here) and both declare
``opencv-python``; a plain install pulls a multi-GB CUDA build of PyTorch. Install them
without their declared dependencies, after the ``peers`` extra (which brings OpenCV's
headless build, the only extra thing they import): see :data:`INSTALL_HINT`.

References
----------
.. [1] ShieldMnt/invisible-watermark, version 0.2.0 (MIT licence).
.. [2] guofei9987/blind_watermark, version 0.4.4 (MIT licence).
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import sys
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from watermark.errors import LeaktraceError

__all__ = ["PAYLOAD_BITS", "INSTALL_HINT", "PeerError", "PeerUnavailable", "Peer",
           "InvisibleWatermark", "BlindWatermark", "PEERS", "peer"]

PAYLOAD_BITS = 32
"""Payload length given to every peer (bits)."""

INSTALL_HINT = ("pip install 'leaktrace[peers]' && pip install --no-deps "
                "'invisible-watermark==0.2.0' 'blind-watermark==0.4.4'")
"""How to install the peers (the second step skips their declared torch/opencv-python)."""


class PeerError(LeaktraceError):
    """A peer library refused an image or failed on it (the message says which and why)."""


class PeerUnavailable(LeaktraceError):
    """A peer library is not installed or cannot be imported (the message names the peer and
    says how to install it; ``reason`` is the message without the peer's name)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason


def _grey_to_bgr(image: np.ndarray) -> np.ndarray:
    """(rows, columns) grey values -> (rows, columns, 3) uint8, rounded and clipped to 0..255."""
    grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _bgr_to_grey(bgr: np.ndarray) -> np.ndarray:
    """(rows, columns, 3) BGR, any real dtype -> (rows, columns) uint8 luma (BT.601), rounded."""
    import cv2

    values = np.clip(np.asarray(bgr, dtype=np.float32), 0, 255)
    return np.clip(np.rint(cv2.cvtColor(values, cv2.COLOR_BGR2GRAY)), 0, 255).astype(np.uint8)


def _check_bits(bits: np.ndarray) -> np.ndarray:
    bits = np.asarray(bits).astype(bool).ravel()
    if bits.size != PAYLOAD_BITS:
        raise ValueError(f"a peer payload has {PAYLOAD_BITS} bits, got {bits.size}")
    return bits


class Peer:
    """One peer method: mark an 8-bit grey image with 32 bits, read 32 bits back.

    Subclasses implement :meth:`_load`, :meth:`_embed` and :meth:`_decode`.
    """

    name: str = ""
    distribution: str = ""
    version: str = ""

    def __init__(self) -> None:
        self._module: ModuleType | None = None

    def available(self) -> str | None:
        """``None`` when the library can be used, else the reason (with the install command;
        without the peer's name, which the caller says)."""
        try:
            self.module()
        except PeerUnavailable as exc:
            return exc.reason
        return None

    def module(self) -> ModuleType:
        """The imported library (imported once).

        Raises
        ------
        PeerUnavailable
            It, or OpenCV, is not installed or fails to import.
        """
        if self._module is None:
            try:
                import cv2  # noqa: F401  (both peers need OpenCV)

                self._module = self._load()
            except ImportError as exc:
                raise PeerUnavailable(
                    self.name, f"{self.distribution} {self.version} cannot be imported "
                    f"({type(exc).__name__}: {exc}); install the peers with: {INSTALL_HINT}"
                ) from None
        return self._module

    def embed(self, display: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Mark an 8-bit grey image.

        Parameters
        ----------
        display : (rows, columns) array
            Grey values 0..255 (a film's 8-bit default-window display); not modified.
        bits : (32,) array of bool
            The payload.

        Returns
        -------
        (rows, columns) uint8 array
            The marked grey image (luma of the library's marked colour copy).

        Raises
        ------
        PeerError
            The library refuses or fails on the image (for example, too small).
        PeerUnavailable
            The library is not installed.
        """
        module = self.module()
        bgr = _grey_to_bgr(display)
        try:
            return _bgr_to_grey(self._embed(module, bgr, _check_bits(bits)))
        except (RuntimeError, AssertionError, IndexError, ValueError) as exc:
            raise PeerError(f"{self.name} cannot mark this {display.shape[1]} x "
                            f"{display.shape[0]} px image: {exc or type(exc).__name__}") from None

    def decode(self, image: np.ndarray) -> np.ndarray:
        """Read the 32 payload bits from a grey image (blind: no original, no search).

        Parameters
        ----------
        image : (rows, columns) array
            Grey values on a 0..255 scale (rounded and clipped to 8 bits first).

        Returns
        -------
        (32,) bool array

        Raises
        ------
        PeerError
            The library refuses or fails on the image (for example, too small).
        PeerUnavailable
            The library is not installed.
        """
        module = self.module()
        try:
            bits = self._decode(module, _grey_to_bgr(image))
        except (RuntimeError, AssertionError, IndexError, ValueError, ZeroDivisionError) as exc:
            raise PeerError(f"{self.name} cannot read this {image.shape[1]} x {image.shape[0]} "
                            f"px image: {exc or type(exc).__name__}") from None
        return _check_bits(bits)

    def _load(self) -> ModuleType:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed(self, module, bgr, bits):  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, module, bgr):  # pragma: no cover - abstract
        raise NotImplementedError


def _imwatermark_file(name: str) -> ModuleType:
    """``imwatermark.<name>``, loaded from its file when torch is missing.

    The package's ``__init__`` imports ``rivaGan``, which imports torch; ``maxDct.py`` and
    ``dwtDctSvd.py`` themselves need only NumPy, OpenCV and PyWavelets.
    """
    if importlib.util.find_spec("torch") is not None:
        return importlib.import_module(f"imwatermark.{name}")
    spec = importlib.util.find_spec("imwatermark")  # finding a top-level package runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'imwatermark'")
    qualified = f"_leaktrace_peer_imwatermark_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    location = f"{list(spec.submodule_search_locations)[0]}/{name}.py"
    file_spec = importlib.util.spec_from_file_location(qualified, location)
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"cannot load {location}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    sys.modules[qualified] = module
    return module


class InvisibleWatermark(Peer):
    """invisible-watermark's ``dwtDct`` or ``dwtDctSvd``, on luma (see the module notes).

    Parameters
    ----------
    method : {"dwtDct", "dwtDctSvd"}
    scale : float
        Quantisation step on Y (the library's default step for its marked channel, 36).
    """

    distribution, version = "invisible-watermark", "0.2.0"
    _CLASSES = {"dwtDct": ("maxDct", "EmbedMaxDct"), "dwtDctSvd": ("dwtDctSvd", "EmbedDwtDctSvd")}
    MIN_AREA = 256 * 256  # the library's rule (WatermarkEncoder.encode / WatermarkDecoder.decode)

    def __init__(self, method: str, scale: float = 36):
        super().__init__()
        if method not in self._CLASSES:
            raise ValueError(f"unknown invisible-watermark method {method!r}; "
                             f"known: {', '.join(self._CLASSES)}")
        self.method, self.scale = method, scale
        self.name = f"invisible-watermark-{method}"

    def _load(self) -> ModuleType:
        return _imwatermark_file(self._CLASSES[self.method][0])

    def _coder(self, module, bits):
        cls = getattr(module, self._CLASSES[self.method][1])
        return cls(bits, wmLen=PAYLOAD_BITS, scales=[self.scale, 0, 0])

    def _check_area(self, bgr) -> None:
        if bgr.shape[0] * bgr.shape[1] < self.MIN_AREA:
            raise RuntimeError("image too small, should be larger than 256x256")

    def _embed(self, module, bgr, bits):
        self._check_area(bgr)
        return self._coder(module, [int(b) for b in bits]).encode(bgr)

    def _decode(self, module, bgr):
        self._check_area(bgr)
        return np.asarray(self._coder(module, []).decode(bgr), dtype=bool)


@contextmanager
def _tolerate_fork_start_method():
    """blind_watermark calls ``multiprocessing.set_start_method('fork')`` when imported, which
    raises once another start method is fixed (in a Dask worker, which is spawned, or after a
    spawn-context pool) and otherwise changes the process's start method for everyone. Its
    default ``mode='common'``, the only one used here, runs no processes, so the call is made a
    no-op for the import."""
    original = multiprocessing.set_start_method
    multiprocessing.set_start_method = lambda *a, **k: None
    try:
        yield
    finally:
        multiprocessing.set_start_method = original


class BlindWatermark(Peer):
    """blind-watermark's ``WaterMark`` with its defaults, on a grey copy (see the module notes).

    Parameters
    ----------
    password_wm, password_img : int
        The library's two seeds (bit permutation, block shuffling): its "key".
    """

    name, distribution, version = "blind-watermark", "blind-watermark", "0.4.4"

    def __init__(self, password_wm: int = 1, password_img: int = 1):
        super().__init__()
        self.password_wm, self.password_img = int(password_wm), int(password_img)

    def _load(self) -> ModuleType:
        with _tolerate_fork_start_method():
            module = importlib.import_module("blind_watermark")
        module.bw_notes.close()  # it prints a banner on stdout on first use otherwise
        return module

    def _watermark(self, module):
        return module.WaterMark(password_wm=self.password_wm, password_img=self.password_img)

    def _embed(self, module, bgr, bits):
        coder = self._watermark(module)
        coder.read_img(img=bgr)
        coder.read_wm(bits.copy(), mode="bit")
        return coder.embed()

    def _decode(self, module, bgr):
        return np.asarray(self._watermark(module).extract(embed_img=bgr, wm_shape=PAYLOAD_BITS,
                                                          mode="bit"), dtype=bool)


PEERS = {
    "invisible-watermark-dwtDct": lambda: InvisibleWatermark("dwtDct"),
    "invisible-watermark-dwtDctSvd": lambda: InvisibleWatermark("dwtDctSvd"),
    "blind-watermark": lambda: BlindWatermark(),
}
"""Peer name -> factory of its adapter."""


def peer(name: str) -> Peer:
    """A fresh adapter for the named peer.

    Raises
    ------
    KeyError
        Unknown name (the message lists the known ones).
    """
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name]()
