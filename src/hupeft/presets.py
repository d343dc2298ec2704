"""Presets: YAML files naming a grid's models, benchmarks, methods, seeds and settings, expanded into cells.

Settings are merged in this order, later wins: preset defaults, benchmark_settings,
the model's settings, method_settings, the model's own method_settings, then --set on the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, apply_overrides, validate, validate_settings

PRESET_DIR = Path(__file__).parent / "presets"


class GridError(ValueError):
    """Bad grid input; the message is one line and names the fix."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    import yaml

    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        path = Path(name)
        if not (path.suffix in (".yaml", ".yml") and path.exists()):
            raise GridError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} or a .yaml path")
    preset = yaml.safe_load(path.read_text())
    preset["name"] = path.stem
    return preset


@dataclass
class Cell:
    preset: str
    config: RunConfig
    out_dir: Path
    gpus: int = 1
    cost_seconds: float = 0.0

    @property
    def label(self) -> str:
        c = self.config
        return f"{c.model} {c.benchmark} {c.method} seed{c.seed}"

    def parameters(self) -> dict[str, Any]:
        """The notebook's parameters (papermill injects them)."""
        d = self.config.to_dict()
        fixed = {k: d.pop(k) for k in ("model", "method", "benchmark", "seed", "preset")}
        return {**fixed, "overrides": d, "out_dir": str(self.out_dir.resolve()), "gpus": self.gpus}


def cell_dir(root: Path, preset: str, cfg: RunConfig) -> Path:
    safe = lambda s: s.replace("/", "-")  # noqa: E731  hub ids and benchmark names hold slashes
    return root / preset / safe(cfg.model) / safe(cfg.benchmark) / cfg.method / f"seed{cfg.seed}"


def expand(preset: dict, *, models=None, methods=None, benchmarks=None, seeds=None,
           sets: list[str] = (), root: Path = Path("results"), here: bool = False,
           lookups: bool = True, sweeping: bool = False) -> list[Cell]:
    """Every cell of the preset, filtered by the lists given; configs validated (no weights).
    With `here` False, what only the machine that runs a cell can check (a GPU for a quantized
    base) is left to it, so a login node can expand and plan a GPU preset. With `lookups` False,
    no model config, tokenizer or data is read either (hupeft.plan: no network, no waiting on it).
    A preset with a `sweep` section (hupeft.sweep) must give each hybrid both branch rates
    (`sweeping`: the sweep's own cells, which set them)."""
    all_models = preset["models"]
    root = Path(root).resolve()  # cells carry absolute paths: nothing depends on a working directory
    for wanted, have, what in ((models, all_models, "model"), (methods, preset["methods"], "method")):
        bad = sorted(set(wanted or ()) - set(have))
        if bad:
            raise GridError(f"{what}(s) {bad} not in preset {preset['name']}; it has {', '.join(have)}")
    method_seeds = preset.get("method_seeds") or {}
    for method, own in method_seeds.items():
        if method not in preset["methods"] or not set(own) <= set(preset["seeds"]):
            raise GridError(f"method_seeds of preset {preset['name']}: {method}: {own} must name one of its "
                            f"methods and a subset of its seeds {preset['seeds']}; fix the preset")
    cells = []
    for model, spec in all_models.items():
        if models and model not in models:
            continue
        for bench in spec["benchmarks"]:
            if benchmarks and bench not in benchmarks:
                continue
            for method in preset["methods"]:
                if methods and method not in methods:
                    continue
                for seed in (seeds if seeds is not None else method_seeds.get(method, preset["seeds"])):
                    settings = {**preset.get("defaults", {}),
                                **preset.get("benchmark_settings", {}).get(bench, {}),
                                **spec.get("settings", {}),
                                **preset.get("method_settings", {}).get(method, {}),
                                **spec.get("method_settings", {}).get(method, {})}
                    swept = (preset.get("sweep") or {}).get("rates") or {}
                    if method in swept and not sweeping and "lr" not in {
                            **preset.get("method_settings", {}).get(method, {}),
                            **spec.get("method_settings", {}).get(method, {})}:
                        raise GridError(f"{method} in preset {preset['name']}: no lr under method_settings, so "
                                        "it would run at the defaults' rate; set the one its sweep chose "
                                        f"(hupeft sweep --preset {preset['name']})")
                    if preset.get("sweep") and not sweeping and method.startswith("hybrid"):
                        opts = settings.get("method_options") or {}
                        if opts.get("lr_lora") is None or opts.get("lr_boft") is None:
                            raise GridError(f"{method} in preset {preset['name']}: its branch rates lr_lora and "
                                            "lr_boft are unset, so both would silently take `lr`; set them under "
                                            "method_settings (hupeft sweep chooses them)")
                    try:
                        cfg = RunConfig.from_dict({**settings, "model": model, "method": method,
                                                   "benchmark": bench, "seed": int(seed), "preset": preset["name"]})
                        cfg = apply_overrides(cfg, list(sets))
                        cfg = validate(cfg, here=here) if lookups else validate_settings(cfg)
                    except ConfigError as e:
                        raise GridError(f"{model} {bench} {method}: {e}") from None
                    cost = preset.get("cost_seconds", {}).get(model, 0)  # seconds, or {benchmark: seconds}
                    cost = cost.get(bench, 0) if isinstance(cost, dict) else cost
                    cells.append(Cell(preset["name"], cfg, cell_dir(root, preset["name"], cfg),
                                      int(spec.get("gpus", cfg.processes or 1)), float(cost)))
    if benchmarks:
        found = {c.config.benchmark for c in cells}
        if not found:
            raise GridError(f"no cell of preset {preset['name']} has benchmark(s) {benchmarks}")
    return cells


def preset_rates(preset: dict, method: str) -> dict:
    """The rate(s) a preset's study runs of `method` use."""
    ms = {**preset.get("defaults", {}), **preset.get("method_settings", {}).get(method, {})}
    opts = ms.get("method_options", {})
    if "lr_lora" in opts or "lr_boft" in opts:
        return {k: opts.get(k) for k in ("lr_lora", "lr_boft")}
    return {"lr": ms.get("lr")}
