"""The Kubernetes manifests: schema-valid offline, renderable, and consistent with the CLIs."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import kubernetes_validate
import pytest

from server.main import ServerConfig
from tests.deploy.support import (
    K8S,
    KUBERNETES_VERSION,
    CliHelp,
    Doc,
    Invocation,
    check_invocation,
    dockerfile,
    k8s_invocations,
    kustomize,
    load_docs,
    manifest_files,
    pod_template_labels,
    workloads,
)

FILES = manifest_files()


def validate(doc: Doc) -> None:
    """Strict schema validation (unknown fields are errors) for the pinned Kubernetes version."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def base_objects() -> list[Doc]:
    return [d for f in FILES for d in load_docs(f)]


def one(objs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(obj: Doc, name: str | None = None) -> Doc:
    (_, spec) = next(iter(workloads([obj])))
    cs = [c for c in spec["containers"] if name in (None, c["name"])]
    assert len(cs) == 1
    return cs[0]  # type: ignore[no-any-return]


def server_invocation(objs: list[Doc]) -> Invocation:
    (inv,) = [i for i in k8s_invocations(objs) if i.cli == "rbm-serve"]
    return inv


def listen_port(inv: Invocation) -> int:
    """The port rbm-serve binds given its args and environment (as its parser decides)."""
    return int(inv.flag("--port") or inv.env.get("RBMREC_PORT") or ServerConfig.port)


# ---- schemas ----------------------------------------------------------------------------


def test_there_are_manifests() -> None:
    assert len(FILES) >= 8, FILES


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(K8S)) for f in FILES])
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc)


def test_the_validation_is_strict() -> None:
    deployment = one(base_objects(), "Deployment", "rbmrec-server")
    validate(deployment)
    misspelt = copy.deepcopy(deployment)
    container(misspelt)["readinessProbe"]["grpc"]["portt"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(misspelt)
    wrong_type = copy.deepcopy(deployment)
    container(wrong_type)["ports"][0]["containerPort"] = "50051"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)


@pytest.mark.parametrize("overlay", ["", "cuda"], ids=["cpu", "cuda"])
def test_kustomize_renders_objects_that_validate(overlay: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    rendered = kustomize(K8S / overlay if overlay else K8S)
    assert len(rendered) == len(base_objects())
    for doc in rendered:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "rbmrec", doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_docs(K8S / "base" / "kustomization.yaml")
    listed = {(K8S / "base" / r).resolve() for r in kustomization["resources"]}
    on_disk = {f.resolve() for f in FILES}
    assert listed == on_disk, "a manifest that is validated but never applied, or the reverse"


# ---- what the deployment must contain ---------------------------------------------------------


def test_the_objects_the_deployment_needs(rendered: list[Doc]) -> None:
    deployment = one(rendered, "Deployment", "rbmrec-server")
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rbmrec-server",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod_labels = pod_template_labels(deployment)
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in (
        one(rendered, "Service", "rbmrec-server"),
        one(rendered, "Service", "rbmrec-server-headless"),
    ):
        assert service["spec"]["selector"].items() <= pod_labels.items()
    pvc = one(rendered, "PersistentVolumeClaim", "rbmrec-registry")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    one(rendered, "ConfigMap", "rbmrec-server-config")
    one(rendered, "CronJob", "rbmrec-trainer")


def test_every_container_has_requests_and_limits(rendered: list[Doc]) -> None:
    for obj, spec in workloads(rendered):
        for c in spec["containers"] + spec.get("initContainers", []):
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert what in resources.get(part, {}), (
                        f"{obj['metadata']['name']}/{c['name']}: {part}.{what}"
                    )


def test_every_pod_is_non_root_and_unprivileged(rendered: list[Doc]) -> None:
    seen = 0
    for obj, spec in workloads(rendered):
        name = obj["metadata"]["name"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser", 0) != 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{name}: {host}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            assert sc.get("privileged", False) is False, f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            assert sc.get("runAsUser", 1) != 0, f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            seen += 1
    assert seen >= 3


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = one(base_objects(), "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_image_user_is_the_pods_user() -> None:
    users = [i.value for i in dockerfile() if i.keyword == "USER"]
    uid = int(users[-1].split(":")[0])
    for obj, spec in workloads(base_objects()):
        image = spec["containers"][0]["image"]
        if image.startswith("rbmrec"):
            ctx = spec["securityContext"]
            assert (ctx["runAsUser"], ctx["fsGroup"]) == (uid, uid), obj["metadata"]["name"]


# ---- cross-checks against the real CLIs ---------------------------------------------------------


def test_flags_and_env_the_containers_pass_exist(
    rendered: list[Doc], helps: dict[str, CliHelp]
) -> None:
    invocations = k8s_invocations(rendered)
    assert {i.cli for i in invocations} == set(helps)
    problems = [p for inv in invocations for p in check_invocation(inv, helps[inv.cli])]
    assert problems == []


def test_the_cross_check_catches_what_a_cli_lacks(helps: dict[str, CliHelp]) -> None:
    bad = Invocation(
        "test",
        "rbm-serve",
        ["--port", "50051", "--no-such-flag", "--device", "tpu", "stray"],
        {"RBMREC_NO_SUCH_VARIABLE": "1", "RBMREC_PORT": "50051", "SOMETHING_ELSE": "x"},
    )
    problems = check_invocation(bad, helps["rbm-serve"])
    assert len(problems) == 5, problems
    for needle in ("--no-such-flag", "tpu", "stray", "RBMREC_NO_SUCH_VARIABLE", "SOMETHING_ELSE"):
        assert any(needle in p for p in problems), needle


def test_the_cross_check_knows_subcommands_and_what_they_require(
    helps: dict[str, CliHelp],
) -> None:
    good = Invocation("test", "rbm-registry gc", ["rbm", "--keep", "3"])
    assert check_invocation(good, helps["rbm-registry gc"]) == []
    bad = Invocation("test", "rbm-registry gc", ["--json"])
    problems = check_invocation(bad, helps["rbm-registry gc"])
    assert len(problems) == 2, problems
    assert any("--keep" in p for p in problems) and any("MODEL" in p for p in problems)
    extra = Invocation("test", "rbm-registry gc", ["rbm", "other", "--keep", "3"])
    assert check_invocation(extra, helps["rbm-registry gc"]) == [
        "test: rbm-registry gc takes no positional argument 'other'"
    ]


def test_probes_ask_grpc_health_on_the_port_the_server_listens_on(rendered: list[Doc]) -> None:
    deployment = one(rendered, "Deployment", "rbmrec-server")
    server = container(deployment)
    port = listen_port(server_invocation(rendered))
    assert server_invocation(rendered).env.get("RBMREC_HOST") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["grpc"]["port"] == port, probe
        assert server[probe]["grpc"].get("service", "") == "", probe
    service = one(rendered, "Service", "rbmrec-server")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["targetPort"] in ("grpc", port)


def test_metrics_port_matches(rendered: list[Doc]) -> None:
    server = container(one(rendered, "Deployment", "rbmrec-server"))
    inv = server_invocation(rendered)
    metrics = int(inv.flag("--metrics-port") or inv.env["RBMREC_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in server["ports"]}["metrics"] == metrics


def _step(obj: Doc, name: str) -> Doc:
    """The container or init container ``name`` of a workload."""
    (_, spec) = next(iter(workloads([obj])))
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found  # type: ignore[no-any-return]


def _mounts(obj: Doc, name: str | None = None) -> dict[str, tuple[str, bool]]:
    """claimName -> (mountPath, read-only) for container ``name`` (else the first) of ``obj``."""
    (_, spec) = next(iter(workloads([obj])))
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    out = {}
    c = _step(obj, name) if name else spec["containers"][0]
    for m in c.get("volumeMounts", []):
        if m["name"] in claims:
            out[claims[m["name"]]] = (m["mountPath"], bool(m.get("readOnly", False)))
    return out


def test_server_and_trainer_share_the_registry(rendered: list[Doc]) -> None:
    invs = {i.cli: i for i in k8s_invocations(rendered)}
    server = _mounts(one(rendered, "Deployment", "rbmrec-server"))
    assert server["rbmrec-registry"] == (invs["rbm-serve"].env["RBMREC_REGISTRY"], True)
    trainer_root = invs["rbm-train"].flag("--registry") or invs["rbm-train"].env["RBMREC_REGISTRY"]
    cronjob = one(rendered, "CronJob", "rbmrec-trainer")
    for step in ("train", "gc", "trim"):  # each writes it: a version, deletions, the archive
        assert _mounts(cronjob, step)["rbmrec-registry"] == (trainer_root, False), step


def test_trainer_promotes_and_reads_the_servers_rating_log(rendered: list[Doc]) -> None:
    invs = {i.cli: i for i in k8s_invocations(rendered)}
    trainer, server = invs["rbm-train"], invs["rbm-serve"]
    assert "--promote" in trainer.args
    assert "--no-register" not in trainer.args
    log_url = trainer.flag("--ratings-log")
    if log_url is not None:
        assert log_url == (server.flag("--redis-url") or server.env["REDIS_URL"])
        prefix = server.flag("--redis-prefix") or server.env.get("RBMREC_REDIS_PREFIX", "rbmrec")
        assert (trainer.flag("--ratings-log-prefix") or "rbmrec") == prefix
    data = trainer.flag("--data-dir") or trainer.env["RBMREC_DATA"]
    cronjob = one(rendered, "CronJob", "rbmrec-trainer")
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _step(cronjob, "train")["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[data])
    assert "emptyDir" in volume, "MovieLens is downloaded per run, never kept in an image"


def _redis_argv(obj: Doc) -> list[str]:
    c = container(obj)
    return [str(a) for a in c.get("command", []) + c.get("args", [])]


def _setting(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _service_url(rendered: list[Doc], workload: Doc, service_name: str) -> str:
    """redis://SERVICE:PORT/ for a Service that selects ``workload``'s pods on its port."""
    service = one(rendered, "Service", service_name)
    assert service["spec"]["selector"].items() <= pod_template_labels(workload).items()
    port = container(workload)["ports"][0]
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    return f"redis://{service_name}:{service['spec']['ports'][0]['port']}/"


def test_the_log_redis_is_durable_and_never_evicts(rendered: list[Doc]) -> None:
    redis = one(rendered, "StatefulSet", "redis")
    argv = _redis_argv(redis)
    assert _setting(argv, "--appendonly") == "yes"
    assert _setting(argv, "--appendfsync") == "always", "no acknowledged rating lost"
    assert _setting(argv, "--maxmemory-policy") == "noeviction", "the log is never evicted"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in container(redis)["volumeMounts"]
    }
    server = server_invocation(rendered)
    assert server.env["REDIS_URL"].startswith(_service_url(rendered, redis, "redis"))


def test_the_cache_redis_evicts_and_keeps_nothing(rendered: list[Doc]) -> None:
    cache = one(rendered, "Deployment", "redis-cache")
    argv = _redis_argv(cache)
    assert _setting(argv, "--save") == "", "no RDB snapshots"
    assert _setting(argv, "--appendonly") == "no"
    assert _setting(argv, "--maxmemory-policy") == "allkeys-lru"
    assert _setting(argv, "--maxmemory")
    (_, spec) = next(iter(workloads([cache])))
    assert not any("persistentVolumeClaim" in v for v in spec.get("volumes", []))
    server = server_invocation(rendered)
    url = server.flag("--cache-redis-url") or server.env["RBMREC_CACHE_REDIS_URL"]
    assert url.startswith(_service_url(rendered, cache, "redis-cache")), url
    assert url != server.env["REDIS_URL"], "the cache and the log are two Redis"


def test_each_redis_admits_only_its_clients(rendered: list[Doc]) -> None:
    admitted = {}
    for name in ("redis", "redis-cache"):
        policy = one(rendered, "NetworkPolicy", name)
        workload = next(o for o, _ in workloads(rendered) if o["metadata"]["name"] == name)
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_template_labels(workload).items(), name
        (rule,) = policy["spec"]["ingress"]
        (peer,) = rule["from"]
        match = peer["podSelector"]
        components = set(match.get("matchLabels", {}).values()) - {"rbmrec"}
        for expr in match.get("matchExpressions", []):
            components |= set(expr["values"])
        admitted[name] = components
    # The trainer reads and trims the log; only the servers use the cache.
    assert admitted == {"redis": {"server", "trainer"}, "redis-cache": {"server"}}


def test_the_trainer_job_retrains_collects_then_trims(rendered: list[Doc]) -> None:
    cronjob = one(rendered, "CronJob", "rbmrec-trainer")
    (_, spec) = next(iter(workloads([cronjob])))
    # Init containers run one after another, each only once the one before succeeded, and
    # the main container last; with restartPolicy Never a failed step fails the pod.
    assert spec["restartPolicy"] == "Never"
    steps = [*spec.get("initContainers", []), *spec["containers"]]
    assert [c["name"] for c in steps] == ["train", "gc", "trim"]
    assert [c["command"][0] for c in steps] == ["rbm-train", "rbm-registry", "rbm-ratings"]
    invs = {i.cli: i for i in k8s_invocations([cronjob])}
    train, gc, trim = invs["rbm-train"], invs["rbm-registry gc"], invs["rbm-ratings trim"]
    server = server_invocation(rendered)
    assert "--promote" in train.args
    log_url = server.flag("--redis-url") or server.env["REDIS_URL"]
    assert train.flag("--ratings-log") == log_url
    model = train.flag("--model") or "rbm"
    assert gc.args == [model, "--keep", "3"]
    assert (trim.flag("--redis-url") or trim.env["REDIS_URL"]) == log_url, "the log, not the cache"
    prefix = server.flag("--redis-prefix") or server.env.get("RBMREC_REDIS_PREFIX", "rbmrec")
    assert (train.flag("--ratings-log-prefix") or "rbmrec") == prefix
    assert (trim.flag("--prefix") or "rbmrec") == prefix
    assert (trim.flag("--model") or "rbm") == model
    root = train.flag("--registry") or train.env["RBMREC_REGISTRY"]
    for step in (gc, trim):
        assert (step.flag("--registry") or step.env["RBMREC_REGISTRY"]) == root, step.where


def test_the_cuda_overlay_asks_for_a_gpu() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    objs = kustomize(K8S / "cuda")
    server = container(one(objs, "Deployment", "rbmrec-server"))
    assert server["image"].endswith(":cuda")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # An ml-25m model during a swap needs 5.3 GB of host memory (docs/scaling.md).
    assert server["resources"]["requests"]["memory"] == "4Gi"
    assert server["resources"]["limits"]["memory"] == "6Gi"
    train = _step(one(objs, "CronJob", "rbmrec-trainer"), "train")
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "1", "the train step gets the GPU"
    cpu = container(one(kustomize(K8S), "Deployment", "rbmrec-server"))
    assert cpu["image"].endswith(":cpu")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
