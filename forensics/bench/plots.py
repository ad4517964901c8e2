"""Figures of a benchmark run (:mod:`forensics.bench`): they draw its summary, compute nothing.

* :func:`plot_strength` - right-ID rate against attack strength, one panel per attack family,
  one line per method;
* :func:`plot_tpr` - true-positive rate at a fixed false-positive rate (10^-6 or 10^-3, from
  the p-values) against attack strength, the operating points WAVES and omnisealbench report;
* :func:`plot_tradeoff` - imperceptibility (median display PSNR) against robustness (mean
  right-ID rate over the robustness issue's main pipelines), one point per method (and per
  embedding strength, for ``leaktrace@S``).

Both return PNG bytes (matplotlib, Agg backend), or None when there is nothing to draw.
"""

from __future__ import annotations

import io

__all__ = ["plot_strength", "plot_tpr", "plot_tradeoff"]

# families whose strength parameter falls as the attack gets harder (drawn right to left)
_FALLING = {"jpeg", "downscale", "crop_centre"}
_STYLE = {"leaktrace": ("#1b7837", "o"), "leaktrace-trace": ("#5aae61", "s"),
          "invisible-watermark-dwtDct": ("#2166ac", "v"),
          "invisible-watermark-dwtDctSvd": ("#67a9cf", "^"), "blind-watermark": ("#b2182b", "D")}
_DASHES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
_DODGE = 1.2  # percentage points between methods' lines, so that equal rates stay visible


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def plot_tpr(summary: list[dict], methods: list[dict], *, fpr: str = "1e-6") -> bytes | None:
    """TPR (%) at FPR ``fpr`` against strength, per attack family: the share of marked leaks
    whose true recipient's p-value is at most ``fpr`` (column ``tpr_at_fpr_<fpr>``).

    Parameters
    ----------
    summary, methods : list of dict
        As for :func:`plot_strength`.
    fpr : {"1e-6", "1e-3"}
    """
    return plot_strength(summary, methods, value=f"tpr_at_fpr_{fpr}",
                         ylabel=f"TPR at FPR {fpr}, %",
                         title=f"True-positive rate at FPR {fpr} against attack strength")


def plot_strength(summary: list[dict], methods: list[dict], *, value: str = "right_rate",
                  ylabel: str = "right recipient, %",
                  title: str = "Right-ID rate against attack strength (same films, same leaks)",
                  ) -> bytes | None:
    """Right-ID rate (%) against strength, per attack family (families with 2+ strengths).

    Parameters
    ----------
    summary : list of dict
        Rows of ``bench_summary.csv`` (method, family, strength, unit, right_rate, ...).
    methods : list of dict
        Per-method rows (their order sets the legend order).
    value, ylabel, title : str
        The summary column drawn (a rate in 0..1) and the labels.
    """
    families = {}
    for row in summary:
        if row["strength"] == "" or row.get(value) is None:
            continue
        families.setdefault(row["family"], []).append(row)
    families = {f: rows for f, rows in families.items() if len({r["strength"] for r in rows}) > 1}
    if not families:
        return None
    plt = _pyplot()
    n = len(families)
    cols = min(3, n)
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(max(7.5, 4.2 * cols), 3.3 * rows_n + 0.9),
                             squeeze=False)
    order = [m["method"] for m in methods]
    for ax, (family, rows) in zip(axes.flat, sorted(families.items())):
        for i in reversed(range(len(order))):  # the first method (leaktrace) drawn last, on top
            m = order[i]
            offset = _DODGE * (i - (len(order) - 1) / 2)
            pts = sorted((float(r["strength"]), 100 * r[value] + offset) for r in rows
                         if r["method"] == m)
            if not pts:
                continue
            colour, marker = _STYLE.get(m, ("#555555", "x"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, label=m,
                    ls=_DASHES[i % len(_DASHES)], lw=2.2 if m.startswith("leaktrace") else 1.4,
                    alpha=0.9, markerfacecolor="none" if i % 2 else colour)
        ax.set_title(family)
        ax.set_xlabel(rows[0]["unit"] + (" (harder to the right)" if family in _FALLING else ""))
        if family in _FALLING:
            ax.invert_xaxis()
        ax.set_ylim(-3, 103)
        ax.set_ylabel(ylabel)
        ax.text(0.01, 0.01, f"lines {_DODGE:g} points apart", transform=ax.transAxes,
                fontsize=6, color="#777777")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    return _png(fig)


def plot_tradeoff(summary: list[dict], methods: list[dict]) -> bytes | None:
    """Median display PSNR (dB) against the mean right-ID rate over the main pipelines."""
    points = [m for m in methods if m["psnr_display_db_median"] is not None
              and m["right_rate_main_pipelines"] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, m in enumerate(points):
        # leaktrace@S (another embedding strength) in leaktrace's colour, labelled with S
        colour, marker = _STYLE.get(m["method"].split("@")[0], ("#555555", "x"))
        x, y = m["psnr_display_db_median"], 100 * m["right_rate_main_pipelines"]
        if "@" in m["method"]:
            ax.annotate("x" + m["method"].split("@")[1], (x, y), textcoords="offset points",
                        xytext=(6, 6), fontsize=7, color=colour)
        # sizes falling and every other marker hollow: points on one spot stay visible
        ax.scatter([x], [y], color=colour, marker=marker, s=150 - 25 * i, label=m["method"],
                   facecolors="none" if i % 2 else colour, linewidths=1.5, zorder=3 + i)
    ax.set_xlabel("imperceptibility: median PSNR of the 8-bit display, dB (higher is better)")
    ax.set_ylabel("robustness: right recipient, % of leaks")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Imperceptibility against robustness (main leak pipelines)")
    fig.tight_layout()
    return _png(fig)
