"""Subprocess helper for the registry concurrency tests; run as a script, not collected.

registry_worker.py ROOT register COUNT TAG   register COUNT versions, print their numbers
registry_worker.py ROOT hang                 start a publish, print WRITING, then sleep
registry_worker.py ROOT alias COUNT TAG      move alias "staging" COUNT times
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from registry import FileRegistry, VersionMeta


def main() -> None:
    root, mode = Path(sys.argv[1]), sys.argv[2]
    reg = FileRegistry(root)
    if mode == "register":
        count, tag = int(sys.argv[3]), sys.argv[4]
        for i in range(count):

            def write(directory: Path, i: int = i) -> None:
                (directory / "weights.bin").write_bytes(f"{tag}:{i};".encode() * 2000)

            meta = VersionMeta(metrics={"val_rmse": 1.0}, params={"tag": tag, "i": i})
            print(reg.register("rbm", write, meta).version, flush=True)
    elif mode == "hang":

        def write_forever(directory: Path) -> None:
            with (directory / "weights.bin").open("wb") as fh:
                fh.write(b"partial" * 1000)
                fh.flush()
                print("WRITING", flush=True)
                time.sleep(60)

        reg.register("rbm", write_forever, VersionMeta())
    elif mode == "alias":
        count, tag = int(sys.argv[3]), sys.argv[4]
        versions = [info.version for info in reg.list_versions("rbm")]
        for i in range(count):
            reg.set_alias("rbm", "staging", versions[i % len(versions)], reason=f"{tag}-{i}")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
