"""Build hook of rbmrec-client: generate the message stubs from ../proto, then build.

So ``pip install ./client`` works straight from a clone. Built from an sdist, which holds
no proto/, the stubs the sdist was made with are used. protobuf's floor is the version of
the generated code: a protobuf runtime older than its gencode refuses to load it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent / "proto"
PROTO = "rbmrec/v1/recommender.proto"
OUT = HERE / "rbmrec_client" / "_proto"
STUBS = ("recommender_pb2.py", "recommender_pb2.pyi")


def generate_stubs() -> None:
    """Write the message stubs of ../proto into rbmrec_client/_proto/ (as gen_proto.sh does)."""
    if not (PROTO_ROOT / PROTO).is_file():
        if not all((OUT / name).is_file() for name in STUBS):
            raise SystemExit(f"rbmrec-client: neither {PROTO_ROOT / PROTO} nor its stubs found")
        return
    from grpc_tools import protoc  # a build requirement, in pyproject.toml

    # In OUT itself, so that each stub is replaced in one rename: a process importing the
    # package meanwhile sees the old file or the new one.
    with tempfile.TemporaryDirectory(dir=OUT, prefix=".gen-") as tmp:
        # The proto's own name (rbmrec/v1/...): the server's stubs may load in the same process.
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        if protoc.main([*args, str(PROTO_ROOT / PROTO)]) != 0:
            raise SystemExit(f"rbmrec-client: protoc failed on {PROTO_ROOT / PROTO}")
        for name in STUBS:
            os.replace(Path(tmp, "rbmrec", "v1", name), OUT / name)


def gencode_version() -> str:
    """The protobuf version the stubs were generated for, e.g. ``7.35.1``."""
    text = (OUT / "recommender_pb2.py").read_text(encoding="utf-8")
    found = re.search(r"^# Protobuf Python Version: ([0-9.]+)$", text, re.MULTILINE)
    if found is None:
        raise SystemExit("rbmrec-client: the stubs name no protobuf version")
    return found.group(1)


generate_stubs()
setup(install_requires=["grpcio>=1.70", f"protobuf>={gencode_version()}"])
