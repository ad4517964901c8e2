"""leaktrace's marking core: keyed, robust recipient watermarks for radiographs.

The public names are re-exported here; the modules hold the logic:

* :mod:`watermark.dicomio` - read a film, write its marked DERIVED copy;
* :mod:`watermark.display` - render stored values as a viewer shows them;
* :mod:`watermark.keys` - the site key and everything derived from it;
* :mod:`watermark.payload` - recipient number <-> coded bits (Reed-Solomon + CRC);
* :mod:`watermark.dwt` - the mark in the DWT domain (embed, soft bits);
* :mod:`watermark.stats` - p-values and their union bound;
* :mod:`watermark.detect` - blind detection over hypotheses and recipients;
* :mod:`watermark.informed` - informed detection, with the original subtracted;
* :mod:`watermark.imageio` - read a leaked image of any common format.
"""

__version__ = "0.2.0"

from .detect import Detection, detect  # noqa: E402
from .dicomio import Film, read_film, write_derived  # noqa: E402
from .display import render  # noqa: E402
from .dwt import embed, mark_residual, soft_bits  # noqa: E402
from .errors import LeaktraceError  # noqa: E402
from .imageio import read_leak  # noqa: E402
from .keys import SiteKey, load_key, load_or_create_key  # noqa: E402
from .payload import decode, encode  # noqa: E402

__all__ = ["Detection", "detect", "Film", "read_film", "write_derived", "render", "embed",
           "mark_residual", "soft_bits", "LeaktraceError", "read_leak", "SiteKey", "load_key",
           "load_or_create_key", "encode", "decode", "__version__"]
