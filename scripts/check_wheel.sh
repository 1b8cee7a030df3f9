#!/usr/bin/env bash
# The built package as a user gets it, outside the clone:
#   1. build the sdist and the wheel with `python -m build` (the wheel from the sdist, as pip would);
#   2. check what they hold: every config of configs/ and py.typed in the wheel, no tests, runs or scripts;
#   3. install the wheel into a fresh venv in a temporary directory, its dependencies at the versions of
#      requirements/ci.lock (what CI tested; pip still resolves them from the wheel's own metadata);
#   4. from an empty directory: `resexp --version`, `resexp configs`, a shrunk demo sweep by name,
#      `resexp report`, the Python API, and mypy on user code (py.typed).
# Usage: bash scripts/check_wheel.sh   (= make check-wheel; .ci/run runs it after the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}            # the interpreter the fresh venv is made from
DEV=${DEV:-$ROOT/.venv/bin}          # `build` and `mypy` (the dev extra: make install)
LOCK=${LOCK-requirements/ci.lock}    # LOCK= (another platform): pyproject.toml's ranges

WORK=$(mktemp -d "${TMPDIR:-/tmp}/resexp-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
case "$WORK/" in "$ROOT"/*) echo "error: $WORK is inside the clone; set TMPDIR elsewhere" >&2; exit 1 ;; esac
unset PYTHONPATH RESEXP_SET            # nothing from the clone, no shrinking but ours
export RESEXP_COMPILE_CACHE="$WORK/jax-cache" PIP_DISABLE_PIP_VERSION_CHECK=1
step() { printf '== %s [%ds]\n' "$1" "$SECONDS"; }
fail() { echo "error: $*" >&2; exit 1; }

step "build the sdist and the wheel"
"$DEV/python" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "python -m build failed"; }
wheel=$(echo "$WORK"/dist/*.whl)
sdist=$(echo "$WORK"/dist/*.tar.gz)
echo "$(basename "$wheel"), $(basename "$sdist")"

step "what they hold"
version=$("$DEV/python" - "$wheel" "$sdist" <<'EOF'
import sys, tarfile, tomllib, zipfile
from pathlib import Path

wheel, sdist = map(Path, sys.argv[1:])
version = tomllib.loads(Path("pyproject.toml").read_text())["project"]["version"]
names = zipfile.ZipFile(wheel).namelist()
dist_info = f"resexp-{version}.dist-info/"
stray = [n for n in names if not n.startswith(("resexp/", dist_info))]
assert not stray, f"the wheel holds files outside resexp/: {stray}"


def run_output(path: str) -> bool:
    """Under a runs/ folder, and not the resexp.runs package or one of its modules (code, not output)."""
    parts = path.split("/")
    package = parts[-2:] == ["resexp", "runs"] or (parts[-3:-1] == ["resexp", "runs"] and path.endswith(".py"))
    return "runs" in parts and not package


unwanted = [n for n in names if {"tests", "scripts"} & set(n.split("/")) or run_output(n) or n.endswith("conftest.py")]
assert not unwanted, f"the wheel holds tests, runs or scripts: {unwanted}"
configs = {p.name: p.read_bytes() for p in Path("configs").glob("*.yaml")}
shipped = {n.removeprefix("resexp/configs/") for n in names if n.startswith("resexp/configs/")}
assert shipped == set(configs), f"configs/ has {sorted(configs)}, the wheel {sorted(shipped)}"
with zipfile.ZipFile(wheel) as z:
    assert all(z.read(f"resexp/configs/{n}") == data for n, data in configs.items()), "a shipped config differs"
    assert "resexp/py.typed" in names, "no py.typed in the wheel"
    metadata = z.read(f"{dist_info}METADATA").decode()
assert f"\nVersion: {version}\n" in metadata, "the wheel's version is not pyproject.toml's"
in_sdist = tarfile.open(sdist).getnames()
missing = [n for n in configs if f"resexp-{version}/resexp/configs/{n}" not in in_sdist]
assert not missing, f"the sdist lacks configs {missing}"
assert not [n for n in in_sdist if run_output(n)], "the sdist holds runs"
print(f"{len(names)} files in the wheel, {len(shipped)} configs, py.typed", file=sys.stderr)
print(version)
EOF
)

step "install it into a fresh venv outside the clone (dependencies at the lock's versions)"
"$PYTHON" -m venv "$WORK/venv"
# The lock's pins without their hashes: hashes would put pip in --require-hashes mode, where the
# wheel's own ranges (jax>=0.10,<0.12) count as unpinned. The index is the one `make install` trusts.
touch "$WORK/constraints.txt"
[ -z "$LOCK" ] || sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' "$LOCK" >"$WORK/constraints.txt"
"$WORK/venv/bin/python" -m pip install -q --no-compile -c "$WORK/constraints.txt" "$wheel"
[ -z "$LOCK" ] || "$WORK/venv/bin/python" - "$WORK/constraints.txt" <<'EOF'
import sys
from importlib import metadata
norm = lambda name: name.lower().replace("_", "-")
pins = dict(norm(line.strip()).split("==") for line in open(sys.argv[1]) if line.strip())
extra = [f"{d.name}=={d.version}" for d in metadata.distributions()
         if norm(d.name) not in {*pins, "resexp", "pip", "setuptools"}]
assert not extra, f"installed but not in the lock (CI never tested these versions): {extra}"
EOF

step "from an empty directory"
mkdir "$WORK/empty" && cd "$WORK/empty"
bin=$WORK/venv/bin
[ "$("$bin/resexp" --version)" = "resexp $version" ] || fail "resexp --version: $("$bin/resexp" --version)"
"$bin/resexp" configs >configs.txt
for f in "$ROOT"/configs/*.yaml; do
  grep -q "$(basename "$f" .yaml)" configs.txt || { cat configs.txt; fail "resexp configs does not list $f"; }
done
"$bin/resexp" configs show demo | cmp - "$ROOT/configs/demo.yaml" || fail "resexp configs show demo differs from configs/demo.yaml"
rc=0; "$bin/resexp" sweep demoo --dry-run 2>err.txt || rc=$?
[ "$rc" = 2 ] && grep -q "did you mean demo?" err.txt || fail "an unknown name exited $rc: $(cat err.txt)"

step "a shrunk demo sweep by name"
"$bin/resexp" sweep demo --grid model.depth=8,14 --jobs 2 --set train.steps=20 --set train.log_every=10 \
  --set train.checkpoint_every=20 --set optim.warmup_steps=0 --set train.eval_examples=64
[ -s runs/demo/loss_vs_depth.png ] || fail "the sweep wrote no runs/demo/loss_vs_depth.png"
"$bin/resexp" report runs/demo >/dev/null

step "the Python API"
"$bin/python" - "$version" <<'EOF'
import json, sys, sysconfig
from importlib import resources
from pathlib import Path

import resexp
from resexp.core.bundled import bundled_configs
from resexp.core.config import load_config

version = sys.argv[1]
assert Path(resexp.__file__).is_relative_to(sysconfig.get_paths()["purelib"]), resexp.__file__
assert resexp.__version__ == version, resexp.__version__
assert resources.files("resexp").joinpath("py.typed").is_file()
assert load_config("demo").model_dump() == load_config(bundled_configs()["demo"]).model_dump()
summaries = [json.loads(p.read_text()) for p in Path("runs/demo").glob("*/summary.json")]
assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries), summaries
assert all(s["software"]["resexp"] == version for s in summaries)
shrink = ["train.steps=20", "train.log_every=10", "train.checkpoint_every=20", "optim.warmup_steps=0",
          "train.eval_examples=64"]
again = resexp.sweep("demo", shrink, grid={"model.depth": [8, 14]})  # the CLI's runs: answered, not retrained
assert sorted(r.run_id for r in again.runs) == sorted(s["run_id"] for s in summaries), again.runs
assert [row["run_id"] for row in resexp.load_sweep("runs/demo").rows] == [row["run_id"] for row in again.rows]
print(f"resexp {version} from {Path(resexp.__file__).parent}: 4 runs completed, the same through resexp.sweep")
EOF

step "mypy on user code against the installed package (py.typed)"
cat >user_code.py <<'EOF'
import resexp
from resexp.core.config import Config, load_config

cfg: Config = load_config("demo", ["model.depth=14"])
depth: int = cfg.model.depth
rows: list[dict] = resexp.load_sweep("runs/demo").rows
EOF
"$DEV/mypy" --python-executable "$bin/python" --cache-dir "$WORK/mypy-cache" --no-error-summary user_code.py

step "ok"
