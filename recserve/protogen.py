"""Regenerate the checked-in gRPC stubs: ``python -m recserve.protogen`` (``make proto``).

Runs grpc_tools.protoc from the repository root:
``protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/recserve/v1/recommender.proto``.
``--check`` regenerates into a temporary directory and exits 1 when the checked-in stubs differ.
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "recserve/v1/recommender.proto"
OUTPUTS = ["recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py"]


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", str(ROOT / "proto" / PROTO)]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def stale() -> list[str]:
    """Names of checked-in stub files that differ from freshly generated ones."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        gen = Path(tmp) / "recserve" / "v1"
        have = ROOT / "recserve" / "v1"
        return [n for n in OUTPUTS
                if not (have / n).exists() or not filecmp.cmp(gen / n, have / n, shallow=False)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recserve.protogen")
    ap.add_argument("--check", action="store_true", help="exit 1 when the checked-in stubs are stale")
    a = ap.parse_args(argv)
    if a.check:
        bad = stale()
        if bad:
            print("stale stubs: " + ", ".join(bad), file=sys.stderr)
            return 1
        print("stubs are current")
        return 0
    generate(ROOT)
    init = ROOT / "recserve" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs for recserve.v1 (regenerate with `make proto`)."""\n')
    print(f"generated stubs for {PROTO} in recserve/v1/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
