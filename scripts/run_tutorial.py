"""Execute docs/tutorial.ipynb top to bottom in a real Jupyter kernel, as a reader would (`make tutorial`).

The runs go to a temporary directory (RESEXP_TUTORIAL_RUNS), the notebook's file is left as it is;
a cell that raises stops here with the cell's traceback and exit 1. `--out FILE` keeps the executed copy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", nargs="?", type=Path, default=ROOT / "docs" / "tutorial.ipynb")
    parser.add_argument("--out", type=Path, help="write the executed notebook here")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may take")
    args = parser.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="resexp-tutorial-") as tmp:
        os.environ["RESEXP_TUTORIAL_RUNS"] = str(Path(tmp) / "runs")
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": tmp}})
        start = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as exc:
            print(f"error: {args.notebook}: a cell failed\n{exc}", file=sys.stderr)
            return 1
        finally:
            if args.out:
                nbformat.write(nb, args.out)
    cells = sum(c.cell_type == "code" for c in nb.cells)
    print(f"{args.notebook}: {cells} code cells ran in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
