"""`hupeft` command line: run | grid | sweep | reproduce | report | plan | bench | humaneval | export | eval.

Each subcommand lives in the module that owns the work; this file only dispatches, so
`hupeft --help` stays fast (no torch import until a subcommand needs it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    # name: (module, function taking argv and returning an exit code, one-line help)
    "run": ("hupeft.experiment", "cli_main", "train and score one model x method x benchmark x seed"),
    "grid": ("hupeft.grid", "cli_main", "expand a preset and execute every cell with papermill"),
    "sweep": ("hupeft.sweep", "cli_main", "choose each method's learning rate on held-out rows (a preset's sweep)"),
    "reproduce": ("hupeft.grid", "reproduce_main", "grid, then report, then build the book"),
    "report": ("hupeft.report", "cli_main", "turn records into the book's tables and figures"),
    "plan": ("hupeft.plan", "cli_main", "memory per GPU, GPUs, nodes and time of every cell of a preset"),
    "bench": ("hupeft.bench", "cli_main", "time training steps of every method on one model"),
    "humaneval": ("hupeft.benchmarks.humaneval", "cli_main", "score HumanEval completions in the sandbox"),
    "export": ("hupeft.export", "cli_main", "write a run's model as a merged transformers folder or PEFT adapter"),
    "eval": ("hupeft.harness", "cli_main", "score a run's exported model with lm-evaluation-harness tasks"),
    "doctor": ("hupeft.doctor", "cli_main", "what this machine can run, each missing piece with its fix"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the fix (the usage is in --help); exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def version() -> str:
    """The installed package's version (a checkout that is not installed: the source's)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hupeft")
    except PackageNotFoundError:
        from hupeft import __version__

        return __version__


def usage() -> str:
    lines = ["usage: hupeft <command> [options]   (hupeft --version: the version)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "`hupeft <command> --help` documents each command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"hupeft {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hupeft: unknown command {name!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = SUBCOMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
