#!/usr/bin/env bash
# Vendor MathJax 3 into book/_static_mathjax/mathjax/ so the built book renders math with no
# network access. The folder is git-ignored; run this once after cloning (it needs the npm
# registry, or PyPI where npm is not installed). `_config.yml` copies the folder to the site
# root and points Sphinx's `mathjax_path` at mathjax/tex-mml-chtml.js; without it the book
# build stops with "html_extra_path entry ... does not exist".
#
# Copied: es5/tex-mml-chtml.js (TeX and MathML input, CommonHTML output), its web fonts
# (es5/output/chtml/fonts/woff-v2), the TeX extensions it loads on demand
# (es5/input/tex/extensions) and the licence (Apache-2.0). About 2 MB.
#
# Sources, both pinned and checked:
#   npm:  mathjax@3.2.2 (the tarball's sha512, as npm records it)
#   PyPI: django-static-mathjax==3.2.2.1, a wheel that ships the same MathJax 3.2.2 files
#         under mathjax/static/mathjax/ (its sha256); used when npm is missing.
# Usage: scripts/vendor_mathjax.sh [--force] [--from npm|pypi]
set -euo pipefail

VERSION=3.2.2
NPM_INTEGRITY="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
PYPI_REQ="django-static-mathjax==3.2.2.1"
PYPI_SHA256="05ad109fd9e5d9d380c76389689b7f523e9ccb7f7a85c1eb962c7564eac7601d"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/book/_static_mathjax/mathjax"

FORCE=0
FROM=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1 ;;
        --from) FROM="${2:?--from needs npm or pypi}"; shift ;;
        *) echo "usage: $0 [--force] [--from npm|pypi]" >&2; exit 2 ;;
    esac
    shift
done

if [[ $FORCE == 0 && -f "$DEST/tex-mml-chtml.js" && "$(cat "$DEST/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
    echo "mathjax $VERSION already in ${DEST#"$ROOT"/}"
    exit 0
fi
if [[ -z "$FROM" ]]; then
    if command -v npm >/dev/null; then FROM=npm; else FROM=pypi; fi
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

case "$FROM" in
    npm)
        (cd "$TMP" && npm pack --silent "mathjax@$VERSION" >/dev/null)
        TGZ="$TMP/mathjax-$VERSION.tgz"
        GOT="sha512-$(openssl dgst -sha512 -binary "$TGZ" | base64 | tr -d '\n')"
        if [[ "$GOT" != "$NPM_INTEGRITY" ]]; then
            echo "vendor_mathjax: integrity mismatch for mathjax@$VERSION from npm" >&2
            exit 1
        fi
        tar -xzf "$TGZ" -C "$TMP"
        PKG="$TMP/package"
        ;;
    pypi)
        PY="$ROOT/.venv/bin/python"
        [[ -x "$PY" ]] || PY="$(command -v python3)"
        echo "$PYPI_REQ --hash=sha256:$PYPI_SHA256" > "$TMP/req.txt"
        "$PY" -m pip download --quiet --no-deps --require-hashes -r "$TMP/req.txt" -d "$TMP/wheel"
        "$PY" - "$TMP/wheel" "$TMP/pkg" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2])
prefix = "mathjax/static/mathjax/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = out / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
EOF
        PKG="$TMP/pkg"
        ;;
    *) echo "vendor_mathjax: --from must be npm or pypi" >&2; exit 2 ;;
esac

for f in es5/tex-mml-chtml.js es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff LICENSE; do
    [[ -f "$PKG/$f" ]] || { echo "vendor_mathjax: $f missing from the $FROM package" >&2; exit 1; }
done

rm -rf "$DEST"
mkdir -p "$DEST/output/chtml/fonts" "$DEST/input/tex"
cp "$PKG/es5/tex-mml-chtml.js" "$DEST/"
cp -r "$PKG/es5/output/chtml/fonts/woff-v2" "$DEST/output/chtml/fonts/"
cp -r "$PKG/es5/input/tex/extensions" "$DEST/input/tex/"
cp "$PKG/LICENSE" "$DEST/LICENSE"
echo "$VERSION" > "$DEST/VERSION"
echo "mathjax $VERSION ($FROM) -> ${DEST#"$ROOT"/} ($(du -sh "$DEST" | cut -f1))"
