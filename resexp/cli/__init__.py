"""The `resexp` command line: parse, call the API, print. No logic lives here that tests cannot reach.

Every user mistake (a `UserError`) is one line on stderr and exit code 2; a diverged run exits 3,
an interrupted one 130. Bugs keep their tracebacks. `app` holds the shared options and error
handling; each module registers its commands on it: `experiments` (train, sweep, status,
tensorboard, report, model, identity), `why` (the why lab) and `data` (datasets and configs).
"""

from resexp.cli import data, experiments, why  # noqa: F401  (importing them registers their commands)
from resexp.cli.app import app, main

__all__ = ["app", "main"]
