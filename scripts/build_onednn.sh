#!/usr/bin/env bash
# Build the oneDNN convolution extension (csrc/onednn_conv.cc) into build/onednn/.
#
# oneDNN comes from PyPI (requirements/onednn.txt, pinned by hash) as wheels that are unpacked,
# not pip-installed: the library wheel stores libdnnl.so, libdnnl.so.3 and libdnnl.so.3.x as three
# full copies (wheels have no symlinks), so only the soname the extension links against
# (libdnnl.so.3, 53 MB) is extracted, once, next to the extension, which finds it by rpath.
# Needs g++ with OpenMP and jax (for the XLA FFI headers). Exit status non-zero on any failure:
# resexp then falls back to XLA's convolutions and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-build/onednn}
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "build_onednn.sh: oneDNN's PyPI wheels are for Linux x86_64 only, not $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
command -v g++ >/dev/null || { echo "build_onednn.sh: no g++" >&2; exit 1; }
t0=$(date +%s)
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/wheels"
"$PY" -m pip download -q --no-deps --require-hashes -d "$OUT.tmp/wheels" -r requirements/onednn.txt
"$PY" - "$OUT.tmp" <<'PYEOF'
import pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
for whl in sorted((out / "wheels").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if "/data/include/" in name:  # headers, under include/
                target = out / "include" / name.split("/data/include/", 1)[1]
            elif name.endswith("/data/lib/libdnnl.so.3"):  # one copy of the library, under its soname
                target = out / "libdnnl.so.3"
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PYEOF
FFI_INC=$("$PY" -c 'import jax; print(jax.ffi.include_dir())')
g++ -O2 -std=c++17 -shared -fPIC -fopenmp -w \
  -I"$OUT.tmp/include" -I"$FFI_INC" csrc/onednn_conv.cc -o "$OUT.tmp/libresexp_onednn.so" \
  "$OUT.tmp/libdnnl.so.3" -Wl,-rpath,'$ORIGIN'
rm -rf "$OUT.tmp/wheels" "$OUT.tmp/include" "$OUT"
mv "$OUT.tmp" "$OUT"
echo "built $OUT/libresexp_onednn.so in $(( $(date +%s) - t0 )) s ($(du -sh "$OUT" | cut -f1) with libdnnl.so.3)"
