"""Charts for the reports, drawn with matplotlib in a CJK font so Chinese labels render.

Each function returns PNG bytes; no global pyplot state is touched (Figure objects only).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede any pyplot-backed import
from matplotlib import font_manager
from matplotlib.figure import Figure

CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "Noto Sans CJK JP")
COLOURS = ("#1f5fa8", "#e07b00", "#2a9d4b", "#c8322f", "#7b4fb0", "#8c564b", "#d66fb8",
           "#6f6f6f", "#b5b523", "#17a3b8")


class FontMissing(RuntimeError):
    pass


def cjk_font() -> str:
    """The first installed CJK font; Chinese text would be empty boxes without one."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FONTS:
        if name in installed:
            return name
    raise FontMissing("no CJK font found for charts: install fonts-noto-cjk "
                      "(apt-get install fonts-noto-cjk)")


def _figure(width: float = 8.0, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    fig.set_facecolor("white")
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def stacked_bars(title: str, categories: Sequence[str], series: Mapping[str, Sequence[float]],
                 ylabel: str, rotate: bool = False) -> bytes:
    font = cjk_font()
    fig = _figure()
    ax = fig.add_subplot()
    bottom = [0.0] * len(categories)
    for index, (name, values) in enumerate(series.items()):
        ax.bar(range(len(categories)), values, bottom=bottom, label=name,
               color=COLOURS[index % len(COLOURS)], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=90 if rotate else 0, fontsize=7 if rotate else 9,
                       fontfamily=font)
    ax.set_ylabel(ylabel, fontfamily=font)
    ax.set_title(title, fontfamily=font)
    ax.legend(prop={"family": font, "size": 8}, ncols=min(4, max(1, len(series))), loc="upper left",
              bbox_to_anchor=(0, -0.18 if rotate else -0.1))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def horizontal_bars(title: str, labels: Sequence[str], values: Sequence[float],
                    xlabel: str, digits: int = 0) -> bytes:
    font = cjk_font()
    fig = _figure(height=max(2.2, 0.42 * len(labels) + 1.0))
    ax = fig.add_subplot()
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, values, color=COLOURS[0])
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontfamily=font)
    for y, value in zip(positions, values, strict=True):
        ax.annotate(f"{value:,.{digits}f}", (value, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlabel(xlabel, fontfamily=font)
    ax.set_title(title, fontfamily=font)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def lines(title: str, x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
          ylabel: str) -> bytes:
    font = cjk_font()
    fig = _figure()
    ax = fig.add_subplot()
    for index, (name, values) in enumerate(series.items()):
        ax.plot(range(len(values)), [float("nan") if v is None else v for v in values],
                label=name, color=COLOURS[index % len(COLOURS)])
    step = max(1, len(x_labels) // 12)
    ax.set_xticks(range(0, len(x_labels), step))
    ax.set_xticklabels(x_labels[::step], fontsize=8)
    ax.set_ylabel(ylabel, fontfamily=font)
    ax.set_title(title, fontfamily=font)
    ax.legend(prop={"family": font, "size": 8})
    ax.grid(alpha=0.3)
    return _png(fig)
