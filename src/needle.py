"""Needle tables: passkey accuracy by key depth and context length, per model, and their heat maps.

Long-context papers report retrieval as a grid, the depth of the needle (the passkey) against the
length of the context, one cell per pair (e.g. Infini-attention's Table 3 by length, Landmark
Attention's Sec. 4.2). A comparison config asks for the grid through `eval.settings` entries that
set both `length` and `depth` of the `passkey` task (`- {length: 4096, depth: 0.25}`); each such
setting's `eval_accuracy@length=4096,depth=0.25` in `compare.json` is one cell. This module reads
those rows and writes `needle.md` (a depth x length table per model, plus each model's mean per
length) and, with the `plots` extra, `needle.png` (one heat map per model):

    python -m src.needle runs/compare_passkey/compare.json     # writes needle.md / needle.png beside it

`write_needles(rows, out_dir)` does the same from the rows `src.compare.compare` returns.
"""

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

ACCURACY = "eval_accuracy@"
Cells = dict[tuple[float, int], float]  # (depth, length) -> accuracy


def needle_cells(row: dict) -> Cells:
    """The (depth, length) -> accuracy cells of one comparison row (settings with exactly length and depth)."""
    cells = {}
    for key, value in row.items():
        if not key.startswith(ACCURACY):
            continue
        setting = dict(part.partition("=")[::2] for part in key.removeprefix(ACCURACY).split(","))
        if set(setting) == {"length", "depth"} and setting["depth"] != "None":
            cells[float(setting["depth"]), int(setting["length"])] = value
    return cells


def _axes(cells: Cells) -> tuple[list[float], list[int]]:
    return sorted({depth for depth, _ in cells}), sorted({length for _, length in cells})


def _length_label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def needle_table(rows: list[dict]) -> str:
    """Markdown: each model's mean accuracy per length, then each model's depth x length grid."""
    grids = [(row["model"], cells) for row in rows if (cells := needle_cells(row))]
    if not grids:
        return ""
    lengths = sorted({length for _, cells in grids for _, length in cells})
    header = "| model | " + " | ".join(_length_label(n) for n in lengths) + " |"
    lines = ["Mean accuracy over depths, per context length:", "", header, "|---|" + "---|" * len(lengths)]
    for model, cells in grids:
        means = []
        for length in lengths:
            column = [value for (_, n), value in cells.items() if n == length]
            means.append(f"{sum(column) / len(column):.2f}" if column else "–")
        lines.append(f"| {model} | " + " | ".join(means) + " |")
    for model, cells in grids:
        depths, model_lengths = _axes(cells)
        lines += ["", f"**{model}** (rows: key depth, columns: context length)", ""]
        lines.append("| depth | " + " | ".join(_length_label(n) for n in model_lengths) + " |")
        lines.append("|---|" + "---|" * len(model_lengths))
        for depth in depths:
            values = [cells.get((depth, n)) for n in model_lengths]
            lines.append(f"| {depth:g} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def plot_needles(rows: list[dict], path: Path) -> bool:
    """One heat map per model (depth x length, colour = accuracy); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    grids = [(row["model"], cells) for row in rows if (cells := needle_cells(row))]
    columns = min(4, len(grids))
    n_rows = math.ceil(len(grids) / columns)
    figure, axes = plt.subplots(
        n_rows, columns, figsize=(3 * columns + 1, 2.6 * n_rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(grids) :]:
        axis.set_visible(False)
    for axis, (model, cells) in zip(axes.flat, grids):
        depths, lengths = _axes(cells)
        grid = [[cells.get((depth, n), math.nan) for n in lengths] for depth in depths]
        axis.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if not math.isnan(value):
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        axis.set_title(model, fontsize=9)
        axis.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], fontsize=7)
        axis.set_yticks(range(len(depths)), [f"{depth:g}" for depth in depths], fontsize=7)
        axis.set_xlabel("context length", fontsize=8)
        axis.set_ylabel("key depth", fontsize=8)
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), "RdYlGn")  # every map's colours
    figure.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.8, label="passkey digit accuracy")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_needles(rows: list[dict], out_dir: str | Path, log: Callable[[str], object] = print) -> bool:
    """Write needle.md (and needle.png with the `plots` extra) when the rows hold needle cells."""
    table = needle_table(rows)
    if not table:
        return False
    out_dir = Path(out_dir)
    (out_dir / "needle.md").write_text(table + "\n")
    log(table)
    plotted = plot_needles(rows, out_dir / "needle.png")
    log(
        f"wrote {out_dir / 'needle.md'}"
        + (" and needle.png" if plotted else " (install the 'plots' extra for needle.png)")
    )
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m src.needle COMPARE_JSON`: the needle table and heat maps of a finished comparison."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m src.needle runs/<comparison>/compare.json", file=sys.stderr)
        return 2
    path = Path(arguments[0])
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"{path}: cannot read a comparison's rows: {error}", file=sys.stderr)
        return 1
    if not isinstance(rows, list) or not all(isinstance(row, dict) and "model" in row for row in rows):
        print(f"{path}: not a compare.json (a list of rows with a 'model' each)", file=sys.stderr)
        return 1
    if not write_needles(rows, path.parent):
        print(f"{path}: no passkey settings with both length and depth", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
