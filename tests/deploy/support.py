"""Helpers for the deployment tests: YAML loading, CLI help parsing, Dockerfile parsing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cli import BIN, ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.34.0"  # schemas shipped by kubernetes-validate; fixed for repeatability
# Variables the containers set for the runtime rather than for our CLIs; everything in the
# project's namespaces (RBMREC_*, REDIS_*) must instead be named by the CLI's --help.
RUNTIME_ENV = frozenset({"OMP_NUM_THREADS"})
PROJECT_ENV = re.compile(r"^(RBMREC|REDIS)_")
# Console scripts whose first argument is a subcommand with flags of its own.
SUBCOMMANDS = frozenset({"rbm-registry", "rbm-ratings"})

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document in ``path``."""
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def manifest_files() -> list[Path]:
    """Every Kubernetes object file under deploy/k8s (kustomization files excluded)."""
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    return [f for f in files if f.name not in ("kustomization.yaml", "kustomization.yml")]


def kustomize(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize directory`` renders."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@dataclass(frozen=True)
class CliHelp:
    """What a console script's --help says it accepts."""

    options: dict[str, bool]  # --flag -> whether it takes a value
    choices: dict[str, frozenset[str]]
    env: frozenset[str]
    text: str
    required: frozenset[str] = frozenset()  # flags the usage shows without brackets
    positionals: tuple[str, ...] = ()  # e.g. ("MODEL",)

    @classmethod
    def parse(cls, text: str) -> CliHelp:
        """Read the usage block's ``[--flag VALUE]`` items, its required flags and
        positionals (outside brackets, after the program's name), and every ``$NAME``."""
        usage = text.split("\n\n", 1)[0]
        options: dict[str, bool] = {}
        choices: dict[str, frozenset[str]] = {}
        for flag, value in re.findall(r"\[(--[a-z0-9][a-z0-9-]*)(?: ([^\]]+))?\]", usage):
            options[flag] = bool(value)
            if value.startswith("{"):
                choices[flag] = frozenset(value.strip("{}").split(","))
        # argparse writes "PROG [-h] ...": what follows the first bracket, brackets removed,
        # is the required flags (each with its value) and then the positionals.
        _, bracket, rest = usage.partition("[")
        words = re.sub(r"\[[^\]]*\]", " ", bracket + rest).split()
        required, positionals = set(), []
        while words:
            word = words.pop(0)
            if word.startswith("--"):
                required.add(word)
                options[word] = bool(words) and not words[0].startswith("-")
                if options[word]:
                    words.pop(0)
            else:
                positionals.append(word)
        env = frozenset(re.findall(r"\$([A-Z][A-Z0-9_]*)", text))
        return cls(options, choices, env, text, frozenset(required), tuple(positionals))


def cli_help(name: str) -> CliHelp:
    """Run the real console script ``name --help`` from the venv and parse it; ``name`` may
    hold a subcommand (``rbm-registry gc``)."""
    program, *subcommand = name.split()
    proc = subprocess.run(
        [str(BIN / program), *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    return CliHelp.parse(proc.stdout)


@dataclass
class Invocation:
    """One container's call of a console script: where it was found, args and environment."""

    where: str
    cli: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> str | None:
        """The value given to ``--name``, if any."""
        for i, token in enumerate(self.args):
            if token == name and i + 1 < len(self.args):
                return self.args[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
        return None


def split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the console script, with its subcommand if it takes one; the arguments after)."""
    if argv[0] in SUBCOMMANDS and len(argv) > 1:
        return f"{argv[0]} {argv[1]}", list(argv[2:])
    return argv[0], list(argv[1:])


def check_invocation(inv: Invocation, help_: CliHelp) -> list[str]:
    """Every flag, flag value and project env var of ``inv`` that ``help_`` does not know,
    every required flag missing and every positional argument too many or missing."""
    problems = []
    args = list(inv.args)
    given: set[str] = set()
    positionals = 0
    while args:
        token = args.pop(0)
        if not token.startswith("--"):
            positionals += 1
            if positionals > len(help_.positionals):
                problems.append(f"{inv.where}: {inv.cli} takes no positional argument {token!r}")
            continue
        name, has_inline, inline = token.partition("=")
        if name not in help_.options:
            problems.append(f"{inv.where}: {inv.cli} has no flag {name}")
            continue
        given.add(name)
        if not help_.options[name]:
            continue
        value = inline if has_inline else (args.pop(0) if args else None)
        if value is None:
            problems.append(f"{inv.where}: {name} needs a value")
        elif name in help_.choices and value not in help_.choices[name]:
            problems.append(
                f"{inv.where}: {name} {value!r} is not one of {sorted(help_.choices[name])}"
            )
    for name in sorted(help_.required - given):
        problems.append(f"{inv.where}: {inv.cli} needs {name}")
    for name in help_.positionals[positionals:]:
        problems.append(f"{inv.where}: {inv.cli} needs its {name} argument")
    for name in inv.env:
        if PROJECT_ENV.match(name):
            if name not in help_.env:
                problems.append(f"{inv.where}: `{inv.cli} --help` names no ${name}")
        elif name not in RUNTIME_ENV:
            problems.append(f"{inv.where}: ${name} is neither {inv.cli}'s nor a known runtime's")
    return problems


# ---- Kubernetes ---------------------------------------------------------------------------


def pod_spec(obj: Doc) -> Doc | None:
    """The pod template's spec of a workload object, else None."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return spec["template"]["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "Pod":
        return spec  # type: ignore[no-any-return]
    return None


def pod_template_labels(obj: Doc) -> dict[str, str]:
    """The labels of a workload's pods."""
    spec = obj["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else spec["template"]
    )
    return dict(template["metadata"].get("labels", {}))


def workloads(objs: Sequence[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(object, pod spec) for every workload."""
    for obj in objs:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def k8s_invocations(objs: Sequence[Doc]) -> list[Invocation]:
    """Every container that runs one of our console scripts, its ConfigMap env resolved."""
    configmaps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"
    }
    out = []
    for obj, spec in workloads(objs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            command = list(c.get("command", []))
            if not command or not command[0].startswith("rbm-"):
                continue
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef")
                assert ref, f"{obj['metadata']['name']}: only configMapRef env sources are checked"
                assert ref["name"] in configmaps, f"ConfigMap {ref['name']} is not in the manifests"
                env.update({str(k): str(v) for k, v in configmaps[ref["name"]].items()})
            env.update({e["name"]: str(e.get("value", "")) for e in c.get("env", [])})
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            cli, args = split_command(command + list(c.get("args", [])))
            out.append(Invocation(where, cli, args, env))
    return out


# ---- Docker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    stage: str  # the name (or index) of the stage it belongs to; "" before the first FROM


def dockerfile(path: Path = DEPLOY / "Dockerfile") -> list[Instruction]:
    """The instructions of a Dockerfile, in order."""
    out: list[Instruction] = []
    stage, pending, count = "", "", 0
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full, pending = pending + line, ""
        keyword, _, value = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = value.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(count)
            count += 1
        out.append(Instruction(keyword, " ".join(value.split()), stage))
    return out


def env_assignments(instructions: Sequence[Instruction], stages: Sequence[str]) -> dict[str, str]:
    """ENV values set in ``stages`` (later ones win)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage in stages:
            for pair in shlex.split(ins.value):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def compose_invocation(name: str, service: Mapping[str, Any]) -> Invocation:
    """A compose service's console-script call (its command must name the script)."""
    command = service.get("command")
    assert isinstance(command, list) and command, f"service {name}: give command as a list"
    env = service.get("environment", {})
    assert isinstance(env, dict), f"service {name}: give environment as a mapping"
    cli, args = split_command([str(c) for c in command])
    return Invocation(f"compose/{name}", cli, args, {k: str(v) for k, v in env.items()})
