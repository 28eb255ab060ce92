"""The contracts: stubs fresh, importable without torch, documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh():
    proc = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stubs_and_clients_import_without_torch():
    code = (
        "import sys\n"
        "import leap.v1.environment_pb2_grpc, leap.v1.student_pb2_grpc, leap.v1.teacher_pb2_grpc, "
        "leap.v1.trainer_pb2_grpc\n"
        "import services.runtime.server, services.runtime.channels\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_rpc_and_message_is_documented():
    undocumented = []
    for proto in sorted((ROOT / "protos/leap/v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*(rpc|service)\s", line):
                prev = lines[i - 1].strip() if i else ""
                if not prev.startswith("//"):
                    undocumented.append(f"{proto.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "undocumented RPCs/services:\n" + "\n".join(undocumented)


def test_package_is_versioned():
    for proto in (ROOT / "protos/leap/v1").glob("*.proto"):
        assert "package leap.v1;" in proto.read_text(), proto.name
