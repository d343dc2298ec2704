"""Sphinx extension: copy the files the result pages link to into the built book.

`hupeft report` writes them under book/results/files/ (each table as CSV, each run's record.json
and executed run.ipynb). Sphinx copies only what its own roles reference, and the pages link these
from their outputs' HTML, so this copies the folder beside the built pages, where those relative
links point; the built book then holds everything it links and can be moved or published."""

from __future__ import annotations

import shutil
from pathlib import Path

FILES = Path("book") / "results" / "files"


def copy_files(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    src, dest = Path(app.srcdir) / FILES, Path(app.outdir) / FILES
    shutil.rmtree(dest, ignore_errors=True)  # nothing left from an earlier build
    if src.is_dir():
        shutil.copytree(src, dest)


def setup(app):
    app.connect("build-finished", copy_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
