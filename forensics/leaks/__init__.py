"""Leak simulations: what happens to a film between the viewer and social media.

Each simulation is a small function ``f(image, rng, **params) -> image``. ``image`` is a grey
(rows, columns) array; display-domain images are on a 0..255 scale (what a viewer shows), and
the DICOM-side functions take stored values (0 .. 2**BitsStored - 1). Every function returns a
new float64 array holding the values the decoded file would contain (codec outputs are integer
valued) and never modifies its input. ``rng`` is an explicit :class:`numpy.random.Generator`;
the random leaks (:func:`noise`, :func:`screen_photo`) require it, the others accept and ignore
it, so every run is reproducible from one seed. Arrays are indexed (row, column); geometry that
uses (x, y) says so.

Codecs are other people's: Pillow (libjpeg-turbo, libwebp, libpng) for JPEG, WebP and PNG, and
pydicom's encoder plugin (pylibjpeg-openjpeg) for JPEG 2000. Resampling is Pillow's, warping is
scikit-image's and filtering is SciPy's. No codec is written here.

Groups of leaks
---------------
viewer / VOI
    :func:`window` (LINEAR, LINEAR_EXACT, SIGMOID), :func:`voi_lut`, :func:`invert`,
    :func:`quantize_8bit` (8-bit PNG), :func:`export16` (16-bit PNG).
screenshot
    :func:`screenshot` with :func:`film_box` telling where the film was drawn.
messenger
    :func:`messenger`, :func:`jpeg`, :func:`webp`, :func:`scale`, :func:`long_edge`.
crops and geometry
    :func:`crop_top`, :func:`crop_side`, :func:`crop_centre`, :func:`rotate`, :func:`rot90`,
    :func:`mirror`.
tone and filters
    :func:`gamma`, :func:`brightness`, :func:`contrast`, :func:`blur`, :func:`noise`,
    :func:`sharpen`.
camera
    :func:`screen_photo`.
DICOM side
    :func:`dicom_jpeg`, :func:`dicom_j2k`, :func:`dicom_dcmtk_jpeg` (arrays) and
    :func:`write_lossy_dicom` (files).

Modules
-------
:mod:`~forensics.leaks.rendering` (export, viewer/VOI, tone and filters),
:mod:`~forensics.leaks.screen` (screenshot, messenger), :mod:`~forensics.leaks.geometry`
(resizing, crops, rotation, mirror), :mod:`~forensics.leaks.codecs` (JPEG, WebP and the DICOM
side), :mod:`~forensics.leaks.photo` (camera) and :mod:`~forensics.leaks.registry` (names,
pipelines, :func:`apply`). Everything public is importable from ``forensics.leaks``.

Registry and pipelines
----------------------
:data:`LEAKS` maps a name to ``(function, parameters)``. Apart from the eight original short
names (``identity``, ``png8``, ``jpeg``, ``webp``, ``scale``, ``long_edge``, ``invert``,
``gamma``, which run the function's defaults), every name is built from its parameters by
:func:`leak_name` (``jpeg_q30`` runs quality 30, ``crop_centre_keep36pct`` keeps 36 % of the
area), so a name cannot disagree with what it runs. A pipeline is a list of
``(leak name, parameter overrides)`` run by :func:`apply`; :data:`PIPELINES` holds the named
pipelines of the benchmark and :data:`STRETCH` marks the harder ones. Adding a leak is one
function plus one registry line; tests and benchmarks iterate the registry.
"""

from __future__ import annotations

from ._checks import PEAK_8, PEAK_16
from .codecs import dicom_dcmtk_jpeg, dicom_j2k, dicom_jpeg, jpeg, webp, write_lossy_dicom
from .geometry import crop_centre, crop_side, crop_top, long_edge, mirror, rot90, rotate, scale
from .photo import screen_photo
from .registry import LEAKS, PIPELINES, STRETCH, apply, leak_name, output_peak, save_image
from .rendering import (blur, brightness, contrast, export16, gamma, identity, invert, noise,
                        quantize_8bit, sharpen, to_uint8, voi_lut, window)
from .screen import film_box, messenger, screenshot

__all__ = [
    "LEAKS", "PIPELINES", "STRETCH", "PEAK_8", "PEAK_16",
    "apply", "leak_name", "output_peak", "save_image",
    "to_uint8", "identity", "quantize_8bit", "export16", "window", "voi_lut", "invert",
    "film_box", "screenshot",
    "jpeg", "webp", "scale", "long_edge", "messenger",
    "crop_top", "crop_side", "crop_centre", "rotate", "rot90", "mirror",
    "gamma", "brightness", "contrast", "blur", "noise", "sharpen",
    "screen_photo",
    "dicom_jpeg", "dicom_j2k", "dicom_dcmtk_jpeg", "write_lossy_dicom",
]
