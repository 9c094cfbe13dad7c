"""deploy/Dockerfile: hadolint clean, both variants, non-root, stubs built in, no MovieLens."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import DEPLOY, Instruction, dockerfile, env_assignments
from tests.harness.cli import BIN, ROOT

HADOLINT = BIN / "hadolint"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def stage(name: str) -> list[Instruction]:
    found = [i for i in dockerfile() if i.stage == name]
    assert found, f"no stage {name}"
    return found


def runs(name: str) -> str:
    return "\n".join(i.value for i in stage(name) if i.keyword == "RUN")


def test_hadolint_is_clean() -> None:
    proc = hadolint(DEPLOY / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n", encoding="utf-8")
    proc = hadolint(bad)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout


def test_every_ignore_is_justified() -> None:
    lines = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[n - 1]
            assert above.startswith("#") and "hadolint" not in above, f"line {n + 1}: why?"


def test_variant_picks_the_torch_build() -> None:
    instructions = dockerfile()
    assert Instruction("ARG", "VARIANT=cpu", "") in instructions, "VARIANT=cpu before any FROM"
    froms = [i.value for i in instructions if i.keyword == "FROM"]
    assert "torch-${VARIANT} AS build" in froms
    assert froms[-1] == "runtime-${VARIANT}"
    cpu, cuda = runs("torch-cpu"), runs("torch-cuda")
    assert "torch==2.13.0" in cpu and "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "torch==2.13.0" in cuda and "/whl/cpu" not in cuda
    assert "NVIDIA_VISIBLE_DEVICES" in env_assignments(instructions, ("runtime-cuda",))


def test_runs_as_a_non_root_user() -> None:
    users = [i for i in dockerfile() if i.keyword == "USER"]
    assert users and users[-1].stage == "runtime"
    uid = users[-1].value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, for runAsNonRoot"
    assert f"--uid {uid}" in runs("runtime")


def test_healthcheck_uses_grpc_health_on_the_server_port() -> None:
    runtime = stage("runtime")
    (check,) = [i.value for i in runtime if i.keyword == "HEALTHCHECK"]
    exec_form = json.loads(check.split(" CMD ", 1)[1])
    assert exec_form[0] == "rbm-healthcheck"
    env = env_assignments(dockerfile(), ("python-base", "runtime"))
    assert env["RBMREC_HOST"] == "0.0.0.0"
    assert env["RBMREC_ADDRESS"].rsplit(":", 1)[1] == env["RBMREC_PORT"]
    exposed = next(i.value for i in runtime if i.keyword == "EXPOSE").split()
    assert env["RBMREC_PORT"] in exposed and env["RBMREC_METRICS_PORT"] in exposed
    (cmd,) = [i.value for i in runtime if i.keyword == "CMD"]
    assert json.loads(cmd)[0] == "rbm-serve"


def test_stubs_are_generated_in_the_build_stage() -> None:
    build = runs("build")
    assert re.search(r"gen_proto\.sh .*&& pip install [^&]*\.", build), build
    copies = [i.value for i in stage("build") if i.keyword == "COPY"]
    assert "proto ./proto" in copies
    assert not any(c.split()[0].startswith("rbmrec") for c in copies)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "rbmrec" in ignored, "stale local stubs must never enter the build context"


def test_every_package_is_copied() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file()
        and any(Path(p.name).match(pat) for pat in patterns)
        and p.name != "rbmrec"  # generated in the image
    }
    assert {"rbm", "registry", "trainer", "server", "ratinglog"} <= packages
    copied = {i.value.split()[0] for i in stage("build") if i.keyword == "COPY"}
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    # rbm-client imports the client library, a distribution of its own: it is installed too.
    assert "client" in copied
    assert re.search(r"pip install [^&]*\./client ", runs("build")), runs("build")


def test_movielens_never_enters_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for pattern in ("data", "**/ml-100k", "**/ml-25m", "**/*.zip", ".venv", ".git"):
        assert pattern in ignored, pattern
    copies = " ".join(i.value for i in dockerfile() if i.keyword in ("COPY", "ADD"))
    assert "data" not in copies.replace("/var/lib/rbmrec/data", "")
    assert not any(i.keyword == "ADD" for i in dockerfile())


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line}: pin with =="
            pins[canonicalize_name(name)] = version
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} outside {spec}"
    assert pins["torch"] == "2.13.0"
