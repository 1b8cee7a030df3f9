#!/usr/bin/env bash
# Build the oneDNN convolution custom call (csrc/onednn_conv.cc) into build/onednn/.
#
# oneDNN comes from PyPI as a wheel, unpacked rather than pip-installed: the wheel stores
# libdnnl.so, libdnnl.so.3 and libdnnl.so.3.x as three full copies (wheels have no symlinks),
# so only the soname the extension links against (libdnnl.so.3) is extracted, once, beside it.
# ONEDNN_DIST picks the distribution: onednn-cpu-gomp (default: GNU OpenMP runtime, no other
# dependencies) or onednn (the 2026 line: a SYCL CPU runtime that needs dpcpp-cpp-rt,
# intel-opencl-rt and TBB besides).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIST=${ONEDNN_DIST:-onednn-cpu-gomp}
VER=${ONEDNN_VERSION:-2023.2.0}
OUT=${OUT_DIR:-build/onednn}
mkdir -p "$OUT/wheels" "$OUT/unpacked"
t0=$(date +%s)
"$PY" -m pip download -q --no-deps -d "$OUT/wheels" "$DIST==$VER" "${DIST/onednn/onednn-devel}==$VER"
for whl in "$OUT"/wheels/*.whl; do
  "$PY" - "$whl" "$OUT/unpacked" <<'PYEOF'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        # headers, and one copy of the library under its soname
        if "/data/include/" in name or name.endswith("/lib/libdnnl.so.3"):
            z.extract(name, dest)
PYEOF
done
LIB=$(find "$OUT/unpacked" -name libdnnl.so.3 | head -1)
INC=$(dirname "$(find "$OUT/unpacked" -path '*include/oneapi/dnnl/dnnl.hpp' | head -1)")/../..
cp "$LIB" "$OUT/libdnnl.so.3"
FFI_INC=$("$PY" -c 'import jax; print(jax.ffi.include_dir())')
g++ -O2 -std=c++17 -shared -fPIC -fopenmp \
  -I"$INC" -I"$FFI_INC" csrc/onednn_conv.cc -o "$OUT/libresexp_onednn.so" \
  "$OUT/libdnnl.so.3" -Wl,-rpath,'$ORIGIN'
echo "built $OUT/libresexp_onednn.so against $DIST $VER in $(( $(date +%s) - t0 ))s"
du -sh "$OUT/libdnnl.so.3" "$OUT/libresexp_onednn.so"
