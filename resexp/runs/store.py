"""A run is a directory, and the directory is the whole truth about the run.

    <out>/<run-id>/config.yaml     the resolved config (what makes the run id)
                   summary.json    status and final numbers, always written atomically
                   events.out.*    TensorBoard
                   checkpoints/    orbax, the latest two complete ones
                   .lock           held while a process trains it
    <out>/sweep.json               a sweep directory's first grid (`Manifest`); later ones in grids/<name>/

Nothing here trains; it decides what a directory means and guards it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resexp.core.config import (
    Config,
    config_hash,
    dump_yaml,
    identity_dict,
    legacy_config_hash,
    legacy_id_prefix,
    legacy_run_id,
    run_id,
)
from resexp.core.errors import RunError

FINAL = ("completed", "diverged")  # a re-run cannot change these: runs are deterministic
EXIT_CODES = {"completed": 0, "diverged": 3, "interrupted": 130}  # anything else (failed, running): 1


def exit_code(status: str | None) -> int:
    return EXIT_CODES.get(status or "", 1)


def seed_configs(cfg: Config) -> list[Config]:
    """`train.vmap_seeds: S` -> S single-seed configs, seeds seed..seed+S-1 (one run each)."""
    return [
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.train.seed + i, "vmap_seeds": 1})})
        for i in range(cfg.train.vmap_seeds)
    ]


def finished_runs(cfg: Config, out: Path) -> list[tuple[Path, dict]] | None:
    """(run dir, summary) of each seed of `cfg` if every one is already final, else None.

    Lets `resexp train` answer a re-run of a finished config without starting JAX.
    """
    found = []
    for c in seed_configs(cfg):
        run_dir = run_dir_for(out, c)
        summary = read_summary(run_dir)
        if not summary or summary.get("status") not in FINAL:
            return None
        found.append((run_dir, summary))
    return found


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write text (UTF-8) or bytes via a temp file + fsync + rename: readers see the old file or the
    new, never half; every file resexp rewrites in place (summaries, manifests, reports, figures) goes
    through here."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; null means "no number" (e.g. after divergence)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def run_dir_for(out: Path, cfg: Config) -> Path:
    """Where `cfg`'s run lives in `out`: ``out/<run id>``, or the directory an earlier version made
    for the same run under the id it gave it then (see :func:`legacy_run_dir`), so a run finished
    before run ids changed is never trained again and an unfinished one resumes."""
    current = out / run_id(cfg)
    if current.exists():
        return current
    return legacy_run_dir(out, cfg) or current


def legacy_run_dir(out: Path, cfg: Config) -> Path | None:
    """A directory of `out` named by an earlier version's id recipe (`data.dir` in the hash, no
    dataset in front) whose config is the same run as `cfg`, whatever `data.dir` spelling it was
    made with; a finished one first. None if there is none."""
    if legacy_run_id(cfg) == run_id(cfg):  # a digits run without data.dir: its id never changed
        return None
    import glob

    marker = f"name: {cfg.data.name}\n"
    matches = []
    for candidate in sorted(out.glob(glob.escape(legacy_id_prefix(cfg)) + "*")):
        try:
            text = (candidate / "config.yaml").read_text()
        except OSError:
            continue
        if marker not in text:  # another dataset: no need to parse it
            continue
        other = stored_config(candidate)
        if other is not None and candidate.name == legacy_run_id(other) and identity_dict(other) == identity_dict(cfg):
            matches.append(candidate)
    matches.sort(key=lambda d: (read_summary(d) or {}).get("status") not in FINAL)  # stable: finished first
    return matches[0] if matches else None


def stored_config(run_dir: Path) -> Config | None:
    """The config a run directory was made for (its config.yaml), or None if unreadable."""
    import yaml

    try:
        return Config.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    except Exception:
        return None


def checkpoint_hashes(run_dir: Path, cfg: Config) -> set[str]:
    """The config hashes a checkpoint of `cfg`'s run may carry: today's, and the one an earlier
    version wrote into the checkpoints of a run it made (from the directory's config.yaml)."""
    hashes = {config_hash(cfg), legacy_config_hash(cfg)}
    stored = stored_config(run_dir)
    if stored is not None and identity_dict(stored) == identity_dict(cfg):
        hashes.add(legacy_config_hash(stored))
    return hashes


def prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create the directory and its config.yaml, refusing to reuse a directory of another config."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    existing = run_dir / "config.yaml"
    text = dump_yaml(cfg)
    if existing.exists():
        old = stored_config(run_dir)
        if old is None or identity_dict(old) != identity_dict(cfg):
            raise RunError(
                f"{existing}: belongs to a different config; refusing to overwrite it "
                "(move the directory away or choose another --out)"
            )
        return
    write_atomic(existing, text)


# --------------------------------------------------------------------------- claiming


class RunLock:
    """An exclusive claim on a run directory, safe across processes on one machine or NFS-less hosts.

    Created with O_EXCL (atomic). A lock whose process is gone (same host, dead pid) is
    stale and taken over, so a killed sweep never blocks the next one forever.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict | None) -> bool:
        if owner is None:  # unreadable: a writer died between create and write, or is writing now
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except OSError:
                return True
        if owner.get("host") != socket.gethostname():
            return time.time() - owner.get("time", 0) > 7 * 24 * 3600  # cannot check a remote pid
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> bool:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not self._stale(owner):
                    return False
                # Take over a stale lock: rename is atomic, so only one contender wins it.
                stale = self.path.with_name(f".lock.stale.{os.getpid()}")
                try:
                    os.rename(self.path, stale)
                    stale.unlink(missing_ok=True)
                except OSError:
                    pass
                continue
            except OSError as exc:
                raise RunError(f"{self.path}: cannot create the lock ({exc.strerror or exc})") from None
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, fh)
            except OSError as exc:  # e.g. a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                raise RunError(f"{self.path}: cannot write the lock ({exc.strerror or exc})") from None
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is None or owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------- sweep directories

MANIFEST = "sweep.json"  # a grid's manifest: written by the sweep, read by its report and the dashboard
GRIDS_DIR = "grids"  # later grids of a sweep directory: grids/<name>/sweep.json, their reports beside


@dataclass(frozen=True)
class Manifest:
    """What one `resexp sweep` asked for: its axes and the run ids of its cells."""

    path: Path
    name: str
    axes: dict[str, list[Any]]
    run_ids: list[str]

    @property
    def report_dir(self) -> Path:
        return self.path.parent


def _manifest_at(path: Path) -> Manifest | None:
    try:
        doc = json.loads(path.read_text())
        return Manifest(path, str(doc["name"]), dict(doc["axes"]), [str(r) for r in doc["run_ids"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_manifests(sweep_dir: Path) -> list[Manifest]:
    """The directory's grids: the first one (``sweep.json``), then ``grids/*/sweep.json`` by name."""
    paths = [sweep_dir / MANIFEST, *sorted((sweep_dir / GRIDS_DIR).glob(f"*/{MANIFEST}"))]
    return [m for m in map(_manifest_at, paths) if m is not None]
