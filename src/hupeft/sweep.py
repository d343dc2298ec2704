"""Learning rates chosen by a declared procedure (`hupeft sweep`): the preset's `sweep` section.

The paper states no learning rates, so each method's is chosen here, the same way for all:

1. Every method named under `sweep.rates` trains once at each of its rates (log-spaced), on the
   sweep's own seed, and is scored on held-out rows carved from the training rows
   (`score_on: holdout`), never on the scored split.
2. A method's rate is the one with the best held-out score; ties go to the smaller rate. Where
   the best is the first or the last rate of its list, the list is extended by one more step of
   the same ratio in that direction (at most `extend` times), so no choice sits on a grid's edge
   unless the extension scored lower.
3. Two-rate methods (the hybrid's `lr_lora` and `lr_boft`, `sweep.pairs`) start from their
   parents' chosen rates and train at every pair of those rates times `factors`.

The chosen rates are then written into the preset's `method_settings` by hand, with a comment
(`hupeft sweep` prints the block and says whether the preset agrees), so a study run never
depends on a sweep having been run on the same machine; `hupeft sweep --check` compares a
preset with its sweep's records, and the book shows every sweep score with the chosen point.

    hupeft sweep --preset study --dry-run     # the cells, and what is done
    hupeft sweep --preset study --jobs 2      # run (resumes), choose, print the settings block
    hupeft sweep --preset cpu --check         # exit 1 if the preset's rates are not the sweep's
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .grid import is_done, run_grid
from .presets import Cell, GridError, expand, load_preset, preset_names, preset_rates
from .records import RECORD_NAME, read_record

CHOSEN_NAME = "chosen.json"


@dataclass(frozen=True)
class Point:
    """One sweep cell's settings: a rate, or a pair of branch rates."""
    method: str
    lr: float | None = None
    pair: tuple[tuple[str, float], ...] = ()

    @property
    def folder(self) -> str:
        if self.pair:
            return "-".join(f"{k}{v:g}" for k, v in self.pair)
        return f"lr{self.lr:g}"

    def settings(self) -> dict:
        return {"lr": self.lr} if not self.pair else {"method_options": dict(self.pair)}


def spec(preset: dict) -> dict:
    """The preset's sweep section, checked; GridError naming the fix."""
    sw = preset.get("sweep")
    if not sw:
        raise GridError(f"preset {preset['name']} has no `sweep` section; add one (see hupeft.sweep) or "
                        "pick a preset that has one (cpu, study)")
    for method, rates in (sw.get("rates") or {}).items():
        if method not in preset["methods"]:
            raise GridError(f"sweep.rates names {method!r}, not a method of preset {preset['name']}")
        if len(rates) < 2 or any(not isinstance(r, (int, float)) or r <= 0 for r in rates) or \
                list(rates) != sorted(rates):
            raise GridError(f"sweep.rates.{method} must be increasing positive rates, got {rates}")
    for method, pair in (sw.get("pairs") or {}).items():
        parents = {k: v for k, v in pair.items() if k != "factors"}
        if set(parents) != {"lr_lora", "lr_boft"} or any(p not in (sw.get("rates") or {}) for p in parents.values()):
            raise GridError(f"sweep.pairs.{method} must name lr_lora and lr_boft, each a method of sweep.rates, "
                            f"and factors; got {pair}")
        if not pair.get("factors") or 1 not in pair["factors"]:
            raise GridError(f"sweep.pairs.{method}.factors must include 1 (the parents' own rates)")
    return sw


def _cells(preset: dict, points: list[Point], root: Path, here: bool) -> list[Cell]:
    """Each point as a cell of the preset run on the sweep's seed and settings, under
    <root>/<preset>-sweep/<model>/<benchmark>/<method>/<rate>/seed<k>/."""
    sw = preset["sweep"]
    cells = []
    for pt in points:
        p = copy.deepcopy(preset)
        p["name"] = f"{preset['name']}-sweep"
        p["seeds"], p["method_seeds"], p["methods"] = [int(sw.get("seed", 100))], {}, [pt.method]
        p["defaults"] = {**p.get("defaults", {}), **(sw.get("set") or {})}
        own = dict(p.get("method_settings", {}).get(pt.method, {}))
        extra = pt.settings()
        if "method_options" in extra:
            extra["method_options"] = {**own.get("method_options", {}), **extra["method_options"]}
            extra["lr"] = extra["method_options"]["lr_lora"]  # recorded; both branches have their own
        p.setdefault("method_settings", {})[pt.method] = {**own, **extra}
        for cell in expand(p, root=root, here=here, lookups=here, sweeping=True):
            cell.out_dir = cell.out_dir.parent / pt.folder / cell.out_dir.name
            cells.append(cell)
    return cells


def score_of(cell: Cell, metric: str) -> float | None:
    """The cell's held-out score; -inf for a diverged run; None when not run yet."""
    try:
        rec = read_record(cell.out_dir / RECORD_NAME)
    except (OSError, ValueError):
        return None
    if rec.get("status") == "diverged":
        return -math.inf
    if rec.get("status") != "ok" or not is_done(cell, notebook=False):  # archives keep records only
        return None
    return float(rec["scores"][metric])


def _run_missing(cells: list[Cell], metric: str, jobs: int, progress: bool) -> None:
    """Run the cells without a score. An archived record (no executed notebook beside it) counts:
    the grid alone would rerun it, as it reruns any cell whose notebook is missing."""
    todo = [c for c in cells if score_of(c, metric) is None]
    if todo:
        run_grid(todo, jobs=jobs, progress=progress)


def best(scored: list[tuple[float, float | tuple, Cell]]) -> tuple:
    """The highest score; ties to the smaller rate (the first, as the list is in increasing order)."""
    top = max(s for s, _, _ in scored)
    return next(x for x in scored if x[0] == top)


def choose(preset: dict, root: Path, *, run: bool = False, jobs: int = 1, here: bool = True,
           progress: bool = True) -> dict:
    """Run (with `run`) and read the sweep; return {method: {"lr" or "lr_lora"/"lr_boft", "score",
    "points": [[rate(s), score]], "edge": bool}} for every method whose points are all done."""
    sw = spec(preset)
    metric = sw.get("metric", "accuracy")
    chosen: dict = {}
    for method, rates in (sw.get("rates") or {}).items():
        rates = [float(r) for r in rates]
        for _ in range(int(sw.get("extend", 1)) + 1):
            cells = _cells(preset, [Point(method, r) for r in rates], root, here)
            if run:
                _run_missing(cells, metric, jobs, progress)
            scores = [score_of(c, metric) for c in cells]
            if any(s is None for s in scores):
                break
            top = best([(s, r, c) for s, r, c in zip(scores, rates, cells)])
            edge = top[1] in (rates[0], rates[-1])
            chosen[method] = {"lr": top[1], "score": top[0], "edge": edge,
                              "points": [[r, s] for r, s in zip(rates, scores)]}
            if not edge or len(chosen[method]["points"]) >= len(sw["rates"][method]) + int(sw.get("extend", 1)):
                break
            ratio = rates[1] / rates[0]
            rates = [rates[0] / ratio] + rates if top[1] == rates[0] else rates + [rates[-1] * ratio]
            chosen.pop(method)
    for method, pair in (sw.get("pairs") or {}).items():
        parents = {k: chosen.get(v, {}).get("lr") for k, v in pair.items() if k != "factors"}
        if any(v is None for v in parents.values()):
            continue
        points = [Point(method, pair=(("lr_lora", parents["lr_lora"] * a), ("lr_boft", parents["lr_boft"] * b)))
                  for a in pair["factors"] for b in pair["factors"]]
        cells = _cells(preset, points, root, here)
        if run:
            _run_missing(cells, metric, jobs, progress)
        scores = [score_of(c, metric) for c in cells]
        if any(s is None for s in scores):
            continue
        # Ties to the smaller pair: points in order of the product of their rates.
        order = sorted(range(len(points)), key=lambda i: math.prod(v for _, v in points[i].pair))
        top = best([(scores[i], points[i].pair, cells[i]) for i in order])
        chosen[method] = {**dict(top[1]), "score": top[0],
                          "edge": any(dict(top[1])[k] in (parents[k] * min(pair["factors"]),
                                                          parents[k] * max(pair["factors"])) for k in parents),
                          "points": [[[v for _, v in points[i].pair], scores[i]] for i in range(len(points))]}
    return chosen


def disagreements(preset: dict, chosen: dict) -> list[str]:
    """Where the preset's rates are not the sweep's choice (relative tolerance 1e-9)."""
    out = []
    for method, c in chosen.items():
        want = {k: c[k] for k in ("lr", "lr_lora", "lr_boft") if k in c}
        have = preset_rates(preset, method)
        if any(have.get(k) is None or not math.isclose(have[k], v, rel_tol=1e-9) for k, v in want.items()):
            out.append(f"{method}: preset {have}, sweep chose {want}")
    return out


def settings_block(chosen: dict) -> str:
    """The method_settings lines to paste into the preset."""
    lines = []
    for method, c in chosen.items():
        if "lr" in c:
            lines.append(f"  {method}: {{lr: {c['lr']:.3g}}}  # held-out {c['score']:.3f}")
        else:
            lines.append(f"  {method}: {{method_options: {{lr_lora: {c['lr_lora']:.3g}, lr_boft: {c['lr_boft']:.3g}}}}}"
                         f"  # held-out {c['score']:.3f}")
    return "\n".join(lines)


def sweep_root(root: Path, preset: dict) -> Path:
    return Path(root).resolve() / f"{preset['name']}-sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hupeft sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help=f"preset with a sweep section ({', '.join(preset_names())}, "
                                                   "or a YAML path)")
    p.add_argument("--jobs", type=int, default=None, help="cells at once (default: the preset's `jobs`)")
    p.add_argument("--results", default="results", help="results root (default: results/)")
    p.add_argument("--dry-run", action="store_true", help="list the sweep's cells that can be known now; run nothing")
    p.add_argument("--check", action="store_true",
                   help="run nothing; exit 1 unless the sweep is complete and the preset uses its rates")
    return p


def cli_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        preset = load_preset(args.preset)
        spec(preset)
        jobs = int(args.jobs if args.jobs is not None else preset.get("jobs", 1))
        if jobs < 1:
            raise GridError(f"--jobs must be >= 1, got {jobs}")
        run = not (args.dry_run or args.check)
        chosen = choose(preset, Path(args.results), run=run, jobs=jobs, here=run)
    except GridError as e:
        print(f"hupeft sweep: {e}", file=sys.stderr)
        return 2
    sw = preset["sweep"]
    wanted = list(sw.get("rates") or {}) + list(sw.get("pairs") or {})
    missing = [m for m in wanted if m not in chosen]
    if args.dry_run:
        cells = _cells(preset, [Point(m, float(r)) for m, rs in (sw.get("rates") or {}).items() for r in rs],
                       Path(args.results), here=False)
        for c in cells:
            print(f"{'done' if is_done(c) else 'todo'}  {c.label} lr={c.config.lr:g}  -> {c.out_dir}")
        print(f"{len(cells)} first-round cells; pairs ({', '.join(sw.get('pairs') or {}) or 'none'}) follow from "
              "their parents' choices")
        return 0
    for method, c in chosen.items():
        pts = ", ".join(f"{p[0] if not isinstance(p[0], list) else '/'.join(f'{v:g}' for v in p[0])}: {p[1]:.3f}"
                        for p in c["points"])
        print(f"{method:<18} chosen {settings_block({method: c}).split(': ', 1)[1]}  [{pts}]"
              + ("  (at the grid's edge)" if c["edge"] else ""))
    if missing:
        print(f"not complete: {', '.join(missing)}" + ("; run `hupeft sweep --preset "
              f"{args.preset}`" if not run else ""), file=sys.stderr)
        return 1
    if run:
        atomic_write_text(sweep_root(Path(args.results), preset) / CHOSEN_NAME, json.dumps(chosen, indent=2))
    bad = disagreements(preset, chosen)
    if bad:
        print("the preset's rates differ from the sweep's; set under method_settings:\n" + settings_block(chosen))
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"preset {preset['name']} uses the rates its sweep chose")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
