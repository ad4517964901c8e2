"""A phone photo of a screen: perspective, moire, blur, sensor noise.
"""

from __future__ import annotations


import numpy as np
from PIL import Image
from scipy import ndimage

from ._checks import _as_image, _need_rng, _number
from .codecs import _colour_jpeg
from .rendering import to_uint8


def _projective(src: np.ndarray, dst: np.ndarray):
    """A ProjectiveTransform mapping (N, 2) (x, y) points ``src`` onto ``dst``."""
    from skimage.transform import ProjectiveTransform

    if hasattr(ProjectiveTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = ProjectiveTransform.from_estimate(src, dst)
        if not isinstance(tform, ProjectiveTransform):
            raise RuntimeError(f"perspective estimation failed: {tform}")
        return tform
    tform = ProjectiveTransform()
    if not tform.estimate(src, dst):
        raise RuntimeError("perspective estimation failed")
    return tform


def screen_photo(image: np.ndarray, rng: np.random.Generator | None = None, *,
                 strength: float = 0.5) -> np.ndarray:
    """A phone photo of the screen showing the film (camera capture of a display).

    Steps, in the order light takes them:

    1. **Screen tone**: a random gamma (``1 +- 0.25 * strength``) and a raised black level
       (up to ``20 * strength`` grey levels; a lit screen is never black in a photo).
    2. **Perspective**: each corner moves independently by up to ``5 % * strength`` of the
       image size (skimage ``ProjectiveTransform`` + bilinear ``warp``); the uncovered border
       is the dark bezel (grey 10). The output keeps the input's shape.
    3. **Optics**: Gaussian blur with ``sigma = 0.3 + 1.2 * strength`` px.
    4. **Moire**: the screen's pixel grid, with a pitch slightly larger than the sensor's
       (0.94..0.985 sensor px per screen px) and slightly rotated (+-2 degrees), is sampled
       at the sensor's pixel centres; aliasing folds it to the low-frequency beat pattern
       (period about 15..65 px) seen on screen photos. Two orthogonal gratings (the grid's rows
       and columns) modulate the image multiplicatively by ``+- 4 % * strength``.
    5. **Exposure**: a random gain of ``1 +- 0.15 * strength``.
    6. **Sensor noise**: Poisson-Gaussian, standard deviation ``sqrt(a * y + b**2)`` with
       ``a = 0.3 * strength`` and ``b = 1.5 * strength`` grey levels.
    7. **Phone JPEG**: colour JPEG quality 85 with 4:2:0 chroma, read back as luma.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator
        Required; draws every random choice above.
    strength : float, [0, 1]
        0 leaves only the JPEG; 1 is a careless hand-held photo.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer values 0..255.

    Raises
    ------
    ValueError
        ``strength`` outside [0, 1] or no Generator.

    References
    ----------
    .. [1] I. Amidror, *The Theory of the Moire Phenomenon, Vol. I: Periodic Layers*, 2nd
       ed., Springer, 2009, doi:10.1007/978-1-84882-181-1 (beat of superposed gratings).
    .. [2] H. Fang, W. Zhang, H. Zhou, H. Cui and N. Yu, "Screen-Shooting Resilient
       Watermarking", IEEE Trans. Inf. Forensics Security 14(6):1403-1418, 2019,
       doi:10.1109/TIFS.2018.2878541 (lens, light-source and moire distortions).
    .. [3] A. Foi, M. Trimeche, V. Katkovnik and K. Egiazarian, "Practical
       Poissonian-Gaussian Noise Modeling and Fitting for Single-Image Raw-Data", IEEE Trans.
       Image Process. 17(10):1737-1754, 2008, doi:10.1109/TIP.2008.2001399.
    """
    from skimage.transform import warp

    img = _as_image(image)
    s = float(_number("strength", strength, 0, 1))
    gen = _need_rng(rng, "screen_photo")
    rows, cols = img.shape
    # 1. screen tone
    g = 1.0 + s * gen.uniform(-0.25, 0.25)
    black = s * gen.uniform(5.0, 20.0)
    y = black + (255.0 - black) * (np.clip(img, 0, 255) / 255.0) ** g
    # 2. perspective, in (x, y) = (column, row) coordinates
    corners = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1], [0, rows - 1]], float)
    jitter = gen.uniform(-1.0, 1.0, size=(4, 2)) * 0.05 * s * np.array([cols, rows])
    # warp wants the map from output to input coordinates: estimate it that way round
    tform = _projective(corners + jitter, corners)
    y = warp(y, tform, output_shape=img.shape, order=1, mode="constant", cval=10.0,
             preserve_range=True)
    # 3. optics
    y = ndimage.gaussian_filter(y, 0.3 + 1.2 * s, mode="nearest")
    # 4. moire: screen grid sampled by the sensor
    theta = np.deg2rad(gen.uniform(-2.0, 2.0))
    pitch = gen.uniform(0.94, 0.985, size=2)
    phase = gen.uniform(0.0, 2 * np.pi, size=2)
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    u = c * np.cos(theta) + r * np.sin(theta)
    v = -c * np.sin(theta) + r * np.cos(theta)
    grid = 0.5 * (np.cos(2 * np.pi * u / pitch[0] + phase[0])
                  + np.cos(2 * np.pi * v / pitch[1] + phase[1]))
    y = y * (1.0 + 0.04 * s * grid)
    # 5. exposure
    y = y * (1.0 + s * gen.uniform(-0.15, 0.15))
    # 6. sensor noise (Poisson-Gaussian, Gaussian approximation)
    sd = np.sqrt(0.3 * s * np.clip(y, 0, None) + (1.5 * s) ** 2)
    y = y + sd * gen.standard_normal(y.shape)
    # 7. phone JPEG
    return _colour_jpeg(Image.fromarray(to_uint8(y)), 85)
