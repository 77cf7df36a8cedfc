"""The finished cells of a `unitune compare` run folder as a table, while the run is still going (or
after it was stopped): test accuracy per task and method, mean ± sample std over the finished seeds
(n given), and CPU-seconds per cell. The full report (group means, paired differences, figure) is
what `unitune compare` writes once every cell is finished; this is the honest view of a partial run.

    python benchmarks/compare_cells_table.py runs/minivtab-dinov2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def cells_frame(folder: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*/*.json"))]
    if not rows:
        raise SystemExit(f"{folder}: no finished cell (cells/<task>/<method>-seed<k>.json)")
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame, order: list[str]) -> str:
    g = frame.groupby(["task", "method"], sort=False)
    stats = g.agg(acc_mean=("test_accuracy", "mean"), acc_std=("test_accuracy", "std"), n=("seed", "count"),
                  cpu=("cpu_seconds", "mean"), params=("params", "first")).reset_index()
    stats["rank"] = stats["method"].map({m: i for i, m in enumerate(order)}).fillna(len(order))
    lines = ["| task | method | params (no head) | test accuracy % (mean ± sd, n seeds) | CPU-s per cell |",
             "|---|---|---|---|---|"]
    for _, r in stats.sort_values(["task", "rank"], kind="stable").iterrows():
        spread = f" ± {100 * r.acc_std:.1f}" if r.n >= 2 else ""
        lines.append(f"| {r.task} | {r.method} | {int(r.params):,} | {100 * r.acc_mean:.1f}{spread} (n={r.n}) "
                     f"| {r.cpu:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    meta = json.loads((args.folder / "compare.json").read_text())
    frame = cells_frame(args.folder)
    done, total = len(frame), len(meta["tasks"]) * len(meta["methods"]) * len(meta["seeds"])
    print(f"{args.folder}: {done} of {total} cells finished; {frame['cpu_seconds'].sum():,.0f} CPU-s in cells")
    print(table(frame, meta["methods"]))


if __name__ == "__main__":
    main()
