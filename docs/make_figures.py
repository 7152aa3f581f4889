"""Draw the figures of docs/conventions.md from portalign's own geometry code.

Run from the repository root::

    python docs/make_figures.py

writes ``docs/couch_axes.png``. The arrows come from :func:`portalign.couch.image_axes`,
so the picture shows what the code does, not what someone remembered.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse, FancyArrowPatch, Rectangle  # noqa: E402
from portalign.couch import PATIENT_DIRECTIONS, image_axes  # noqa: E402

OUT = Path(__file__).resolve().parent / "couch_axes.png"
SAD = 1.0  # drawing units


def arrow(ax, start, end, colour, label=None, offset=(0.0, 0.0), **kwargs):
    """Draw an arrow with an optional label near its head."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=colour, lw=1.6, **kwargs))
    if label:
        ax.text(end[0] + offset[0], end[1] + offset[1], label, color=colour, fontsize=9, ha="center", va="center")


def foot_view(ax):
    """IEC X (right) and Z (up) seen from the foot of the couch, with the gantry at 0/90/180/270."""
    ax.set_title("Seen from the foot of the couch (HFS)\nsource, beam and image +x per gantry angle", fontsize=10)
    ax.add_patch(Ellipse((0, -0.05), 0.9, 0.55, fc="#f3e0c8", ec="#a0785a"))
    ax.add_patch(Rectangle((-0.55, -0.42), 1.1, 0.08, fc="#bbbbbb", ec="#777777"))
    ax.text(0, -0.5, "couch", ha="center", fontsize=8, color="#555555")
    ax.text(-0.36, -0.05, "R", fontsize=9, ha="center", va="center")
    ax.text(0.36, -0.05, "L", fontsize=9, ha="center", va="center")
    ax.text(0, 0.12, "A", fontsize=9, ha="center", va="center")
    ax.plot(0, 0, "k+", ms=10)
    for gantry, colour in ((0, "tab:blue"), (90, "tab:orange"), (180, "tab:green"), (270, "tab:purple")):
        ex, ey, beam = image_axes(gantry)
        source = (-SAD * beam[0], -SAD * beam[2])  # X, Z of the source
        ax.plot(*source, "o", color=colour, ms=7)
        ax.text(source[0] * 1.2, source[1] * 1.2, f"G{gantry}", color=colour, ha="center", va="center", fontsize=9)
        arrow(ax, (source[0] * 0.92, source[1] * 0.92), (source[0] * 0.62, source[1] * 0.62), colour,
              linestyle="--")
        # imager: opposite the source, beyond the isocentre; image +x drawn along it
        centre = (-0.75 * source[0], -0.75 * source[1])
        half = (0.28 * ex[0], 0.28 * ex[2])
        ax.plot([centre[0] - half[0], centre[0] + half[0]], [centre[1] - half[1], centre[1] + half[1]],
                color=colour, lw=4, alpha=0.35, solid_capstyle="butt")
        tip = (centre[0] + 1.1 * half[0], centre[1] + 1.1 * half[1])
        arrow(ax, centre, tip, colour)
        ax.text(tip[0] + 0.12 * ex[0] + 0.1 * beam[0], tip[1] + 0.12 * ex[2] + 0.1 * beam[2], f"+x (G{gantry})",
                color=colour, fontsize=8, ha="center", va="center")
    arrow(ax, (0.55, 0.95), (0.95, 0.55), "black", connectionstyle="arc3,rad=-0.3")
    ax.text(0.9, 0.9, "gantry +", fontsize=9)
    arrow(ax, (-1.35, -1.25), (-0.95, -1.25), "black", "+X lateral", offset=(0.2, 0.0))
    arrow(ax, (-1.35, -1.25), (-1.35, -0.85), "black", "+Z vertical", offset=(0.0, 0.08))
    ax.text(-1.45, -1.5, "+Y longitudinal points into the page (towards the gantry).\n"
            "Dot: source; dashed: beam; bar: imager of that angle.", fontsize=7.5, va="center")
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.6, 1.4)


def top_view(ax):
    """IEC X (right) and Y (up, towards the gantry) seen from above, with the image frame at gantry 0."""
    ax.set_title("Seen from above, couch 0\nimage axes at gantry 0 (gantry at the top of the image)", fontsize=10)
    ax.add_patch(Rectangle((-0.9, 1.05), 1.8, 0.3, fc="#dddddd", ec="#777777"))
    ax.text(0, 1.2, "gantry", ha="center", va="center", fontsize=9)
    ax.add_patch(Rectangle((-0.35, -1.3), 0.7, 2.2, fc="#bbbbbb", ec="#777777", alpha=0.6))
    ax.add_patch(Ellipse((0, 0.62), 0.26, 0.3, fc="#f3e0c8", ec="#a0785a"))  # head (HFS)
    ax.add_patch(Ellipse((0, -0.2), 0.5, 1.3, fc="#f3e0c8", ec="#a0785a"))
    ax.text(0, 0.62, "head", ha="center", va="center", fontsize=7)
    ax.text(0.2, -0.2, "L", fontsize=9, ha="center")
    ax.text(-0.2, -0.2, "R", fontsize=9, ha="center")
    ax.plot(0, 0, "k+", ms=10)
    ex, ey, _ = image_axes(0)
    arrow(ax, (0, 0), (0.55 * ex[0], 0.55 * ex[1]), "tab:blue", "image +x", offset=(0.1, 0.08))
    arrow(ax, (0, 0), (0.55 * ey[0], 0.55 * ey[1]), "tab:red", "image +y", offset=(0.2, 0.0))
    arrow(ax, (-1.3, -1.35), (-0.9, -1.35), "black", "+X lateral", offset=(0.05, -0.1))
    arrow(ax, (-1.3, -1.35), (-1.3, -0.95), "black", "+Y longitudinal", offset=(0.05, 0.08))
    arrow(ax, (0.78, -0.45), (0.78, 0.45), "black", connectionstyle="arc3,rad=0.5")
    ax.text(1.08, 0.0, "couch +\n(ccw from\nabove)", fontsize=8, va="center")
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.55, 1.4)


def position_table(ax):
    """Tabulate what positive couch axes mean for each patient position."""
    ax.set_title("Positive couch displacement, per patient position", fontsize=10)
    rows = [[p, d["lateral"], d["longitudinal"], d["vertical"]] for p, d in PATIENT_DIRECTIONS.items()]
    table = ax.table(cellText=rows, colLabels=["position", "+lat (X)", "+lng (Y)", "+vrt (Z)"],
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.6)
    ax.text(0.5, 0.08, "image (x, y) = P(gantry) (lat, lng, vrt);  couch 0, receptor 0:\n"
            "dx = lat cos G - vrt sin G,   dy = -lng.   Couch correction = -(lat, lng, vrt).",
            ha="center", va="center", fontsize=8.5, transform=ax.transAxes)


def main() -> Path:
    """Write docs/couch_axes.png and return its path."""
    fig = plt.figure(figsize=(14, 5.2))
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.05])
    for index, draw in enumerate((foot_view, top_view, position_table)):
        ax = fig.add_subplot(grid[index])
        draw(ax)
        ax.set_aspect("equal" if draw is not position_table else "auto")
        ax.axis("off")
    fig.suptitle("portalign couch axes (IEC 61217 patient support frame) and image axes", fontsize=12)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(main())
