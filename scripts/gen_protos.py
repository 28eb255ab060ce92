"""Regenerate the Python gRPC stubs of protos/leap/v1 into the `leap.v1` package.

    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # exit 1 when the checked-in stubs are stale

Generated files are never edited by hand; this is the only way they change.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("leap") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into out_dir/leap/v1 and return the generated files."""
    from grpc_tools import protoc  # imported here: only needed by developers
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    target = out_dir / PACKAGE_DIR
    (target / "__init__.py").write_text('"""Generated gRPC stubs of the leap.v1 contracts (do not edit)."""\n')
    (out_dir / "leap" / "__init__.py").write_text('"""LEAP-serve public contracts (generated from protos/)."""\n')
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py")


def stale_files() -> list[str]:
    """Names of generated files that differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        current_dir = ROOT / PACKAGE_DIR
        names = {p.name for p in fresh} | {
            p.name for p in current_dir.glob("*") if p.name.endswith(GENERATED_SUFFIXES)
        }
        stale = []
        for name in sorted(names):
            a, b = Path(tmp) / PACKAGE_DIR / name, current_dir / name
            if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
                stale.append(name)
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the stubs are fresh")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + "\nrun: python scripts/gen_protos.py")
            return 1
        print("generated stubs are fresh")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        target = ROOT / PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*"):
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for path in fresh:
            shutil.copy2(path, target / path.name)
        shutil.copy2(Path(tmp) / "leap" / "__init__.py", ROOT / "leap" / "__init__.py")
    print(f"generated {len(fresh)} files into {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
