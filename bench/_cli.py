"""What every bench script shares at its edges: the ``USERSxITEMS`` argument type (the numeric ones are
:mod:`trainer.argtypes`'), and the header of a JSON record (date, machine, versions, the full configuration)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from _timing import NPROC, machine
from recserve import cliparser

REPO = Path(__file__).resolve().parent.parent


# ``python -m MODULE`` without the working directory first on the path: with ``-m`` a package of that name
# in the directory the script runs from would be imported in place of the tree ``PYTHONPATH`` names
CWD_OFF_PATH = "import sys; sys.path[:1] = [] if sys.path[:1] == [''] else sys.path[:1]; "     # ``-c`` code
_RUN_MODULE = CWD_OFF_PATH + "import runpy; runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"


def python_m(module: str) -> list[str]:
    """The command that runs ``module`` as ``python -m`` does, importing only from ``PYTHONPATH`` and the
    installed packages (not from the working directory)."""
    import sys

    return [sys.executable, "-c", _RUN_MODULE, module]


class UsageError(SystemExit):
    """A bad argument found after parsing (a bundle that does not exist, a malformed --mix): its reason on
    stderr and exit code 2, as argparse does for the ones it checks."""

    def __init__(self, reason: str):
        import sys

        print(reason, file=sys.stderr)
        super().__init__(2)


class Parser(cliparser.Parser):
    """recserve's parser (errors in one line, exit code 2) that also refuses a bad RECSERVE_* environment."""

    def parse_args(self, args=None, namespace=None):
        """The arguments, then the environment: a RECSERVE_* variable that the servers this script starts
        would refuse (an unknown name, a value of the wrong type or out of its range, a bad RECSERVE_CONFIG
        file) is a bad argument too, refused before any work."""
        from recserve import config

        out = super().parse_args(args, namespace)
        try:
            cfg = config.load({}, env=os.environ)
        except ValueError as exc:
            self.error(str(exc))
        try:
            config.validate(cfg)
        except ValueError as exc:
            self.error(f"the servers' settings (RECSERVE_*): {exc}")
        return out


def check_bundle(ap: argparse.ArgumentParser, path: str, flag: str = "--bundle") -> None:
    """A named bundle that is not one (a missing path, no manifest.json, no CURRENT): exit 2 with the reason
    in one line, before any work or server starts."""
    from recserve.bundle import BundleError, resolve

    try:
        resolve(path)
    except BundleError as exc:
        ap.error(f"{flag}: {exc}")


def check_concurrency(ap: argparse.ArgumentParser, concurrency: int, clients: int) -> None:
    """Exit 2 unless ``--concurrency`` splits evenly over the ``--clients`` processes (each runs as many
    calls in flight: a remainder would be dropped, the run closer to a lower concurrency than it says)."""
    if concurrency < clients or concurrency % clients:
        ap.error(f"--concurrency {concurrency}: must be a multiple of --clients {clients} (each client process "
                 f"runs as many calls in flight)")


def check_dir(ap: argparse.ArgumentParser, path: str, flag: str) -> None:
    """A directory named on the command line that is not one: exit 2, one line."""
    if not Path(path).is_dir():
        ap.error(f"{flag}: {path} is not a directory" if Path(path).exists() else f"{flag}: {path} does not exist")


def movielens_files(path: Path) -> bool:
    """Whether ``path`` holds MovieLens ratings as ``trainer.movielens`` reads them (ml-100k or ml-latest)."""
    return (path / "u.data").is_file() or (path / "ratings.csv").is_file()


def check_movielens(ap: argparse.ArgumentParser, path: str, flag: str) -> None:
    """A MovieLens directory named on the command line that is missing or holds no MovieLens ratings: exit 2,
    one line, before any work."""
    check_dir(ap, path, flag)
    if not movielens_files(Path(path)):
        ap.error(f"{flag}: {path} holds neither ml-100k's u.data nor ml-latest's ratings.csv")


def output_file(path: str) -> str:
    """Argument type of an output file (``--json``, ``--png``): one that could not be written is refused while
    the arguments are read, not after the whole run. Tried, not guessed from mode bits (root may write
    anywhere by the bits, yet not in /proc or on a read-only mount); an existing file is left as it is."""
    import tempfile

    p = Path(os.path.realpath(path))       # through links, even to a file not there yet: where it is written
    parent = p.parent
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {parent} does not exist")
    try:
        if p.exists():
            open(p, "ab").close()
        else:
            tempfile.NamedTemporaryFile(dir=parent, prefix=".recserve-probe-").close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not writable ({exc.strerror})") from None
    return path


def png_file(path: str) -> str:
    """Argument type of a ``--png`` plot: :func:`output_file` (checked first: a path that cannot be written is
    refused as such, matplotlib or not), and refused while the arguments are read when matplotlib, which
    draws it, cannot be imported (not found out after the whole run)."""
    import importlib

    path = output_file(path)
    try:
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise argparse.ArgumentTypeError(f"matplotlib, which draws the PNG, cannot be imported ({exc}); "
                                         "install it or leave out --png") from None
    return path


def sizes(text: str, interactions: bool = False) -> list[tuple]:
    """``"2000x1000,8000x4000"`` -> [(2000, 1000), (8000, 4000)]: users x items, both at least 2. With
    ``interactions``, a size may add an interaction count (at least 1): ``"50000x20000x1000000"`` ->
    (50000, 20000, 1000000), and a size without one gets None."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            nums = [int(b) for b in part.lower().split("x")]
        except ValueError:
            nums = []
        lengths = (2, 3) if interactions else (2,)
        if len(nums) not in lengths or min(nums[:2]) < 2 or (len(nums) == 3 and nums[2] < 1):
            more = ", or USERSxITEMSxINTERACTIONS" if interactions else ""
            raise argparse.ArgumentTypeError(f"USERSxITEMS like 2000x1000 (both at least 2){more}, not {part!r}")
        out.append((*nums, None) if interactions and len(nums) == 2 else tuple(nums))
    if not out:
        raise argparse.ArgumentTypeError("at least one USERSxITEMS size")
    return out


def git_commit(tree: Path) -> str:
    """The short commit of the git checkout at ``tree`` ("" when it is none)."""
    try:
        p = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def versions() -> dict:
    """The software a figure depends on, the commit it was measured at and whether tracked files differed
    from it (``git_dirty``)."""
    import grpc

    v = {"python": platform.python_version(), "grpcio": grpc.__version__, "numpy": np.__version__,
         "platform": platform.platform()}
    from importlib import metadata

    for mod in ("lightgbm", "hnswlib", "implicit", "uvloop"):
        try:
            v[mod] = metadata.version(mod)      # hnswlib's module has no __version__
        except metadata.PackageNotFoundError:
            pass
    try:
        v["git"] = git_commit(REPO)
        # tracked files changed since that commit: the figures are not the commit's alone
        st = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
        if st.returncode == 0:
            changed = [line[3:] for line in st.stdout.splitlines() if line.strip()]
            v["git_dirty"] = bool(changed)
            v["git_changed"] = changed[:50]      # which files: a changed RESULTS.md is not changed code
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def record(args: argparse.Namespace, **fields) -> dict:
    """The head of a JSON record: when, where, with what, and every argument, then ``fields``."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "nproc": NPROC,
            "versions": versions(), "config": dict(vars(args)), **fields}


def _finite(v):
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return _finite(v.tolist())
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, np.generic):
        return _finite(v.item())
    return v


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Standard JSON: a figure that was not measured (NaN) is written as null, never as NaN."""
    Path(path).write_text(json.dumps(_finite(obj), indent=1, default=float))
