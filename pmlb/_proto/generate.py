"""Regenerate the committed code from protos/ (run by ``nox -s protos``).

Needs the ``test`` extra (grpcio-tools, betterproto[compiler]). The drift test
calls :func:`generate` into a temporary folder and compares the result with
the committed files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = Path(__file__).resolve().parent
# What the generators write, relative to OUT_DIR; nothing else there is touched.
PB2_FILES = ("upstream_pb2.py", "upstream_pb2.pyi")
BETTERPROTO_DIR = "bp"


def generate(out_dir: Path) -> list[Path]:
    """Write both code sets under ``out_dir``; return the files written."""
    protos = sorted(str(p) for p in PROTO_DIR.glob("*.proto"))
    bp_out = out_dir / BETTERPROTO_DIR
    bp_out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--python_betterproto_out={bp_out}",
            *protos,
        ],
        check=True,
        capture_output=True,
        # the betterproto plugin is a console script beside this interpreter
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def generated_files(root: Path) -> dict[str, bytes]:
    """The generated files under ``root`` by relative path."""
    files = [root / name for name in PB2_FILES]
    files += [p for p in (root / BETTERPROTO_DIR).rglob("*.py")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        shutil.rmtree(OUT_DIR / BETTERPROTO_DIR, ignore_errors=True)
        for rel, data in generated_files(Path(tmp)).items():
            target = OUT_DIR / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
