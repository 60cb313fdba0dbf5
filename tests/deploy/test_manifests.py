"""Kubernetes manifests: each kustomization renders, passes `kubernetes-validate --strict`, and
has the properties the service relies on (every setting wired, secrets from Secrets, non-root
read-only containers, an API without workers, probes, TLS on the callback host...)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import SecretStr

from app.core.config import Settings
from tests.deploy.tooling import DEPLOY, ROOT, run, tool

KUSTOMIZATIONS = ("base", "overlays/production")
# Oldest Kubernetes the manifests target (preStop `sleep` is beta since 1.30), and the newest
# schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", None)
# The configuration table of CONTRACT.md.
CONTRACT_VARIABLES = (
    "IMAGEGEN_DATABASE_URL",
    "IMAGEGEN_STORAGE_URL",
    "IMAGEGEN_PROVIDER",
    "IMAGEGEN_PROVIDER_BASE_URL",
    "IMAGEGEN_PROVIDER_API_KEY",
    "IMAGEGEN_PUBLIC_BASE_URL",
    "IMAGEGEN_CALLBACK_SECRET",
    "IMAGEGEN_API_KEYS",
    "IMAGEGEN_NOTIFY_SECRET",
    "IMAGEGEN_OPERATOR_KEYS",
    "IMAGEGEN_ALLOW_PRIVATE_NETWORKS",
    "IMAGEGEN_POLL_AFTER_SECONDS",
    "IMAGEGEN_RUN_WORKERS",
    "IMAGEGEN_CONSOLE_SECRET",
)
# Values that must come from a Secret: every SecretStr setting, the database URL (it carries the
# password) and the static cloud credentials.
SECRET_VARIABLES = frozenset(
    {
        f"IMAGEGEN_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    }
    | {"IMAGEGEN_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
)
SETTINGS_VARIABLES = tuple(f"IMAGEGEN_{name.upper()}" for name in Settings.model_fields)

Manifest = dict[str, Any]


@functools.cache
def rendered(kustomization: str) -> str:
    result = run(tool("kubectl"), "kustomize", str(DEPLOY / kustomization))
    assert result.returncode == 0, result.stderr
    return result.stdout


def manifests(kustomization: str) -> list[Manifest]:
    documents = [doc for doc in yaml.safe_load_all(rendered(kustomization)) if doc]
    assert documents, f"{kustomization} renders nothing"
    return documents


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(docs: list[Manifest]) -> Iterator[Manifest]:
    """Every object with a pod template."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest], kind: str, name: str) -> Manifest:
    containers = pod_spec(one(docs, kind, name))["containers"]
    assert len(containers) == 1
    first: Manifest = containers[0]
    return first


def env_sources(docs: list[Manifest], box: Manifest) -> dict[str, str]:
    """Variable -> where its value comes from: 'value', 'configmap', 'secret' or 'field'."""
    sources: dict[str, str] = {}
    for source in box.get("envFrom", []):
        if "configMapRef" in source:
            config_map = one(docs, "ConfigMap", source["configMapRef"]["name"])
            for key in config_map.get("data", {}):
                sources[source.get("prefix", "") + key] = "configmap"
        else:
            raise AssertionError(f"envFrom of a Secret hides which variables it sets: {source}")
    for entry in box.get("env", []):
        if "value" in entry:
            sources[entry["name"]] = "value"
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            sources[entry["name"]] = "secret"
        elif "configMapKeyRef" in entry.get("valueFrom", {}):
            sources[entry["name"]] = "configmap"
        else:
            sources[entry["name"]] = "field"
    return sources


def gateway_containers(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for workload in workloads(docs):
        for box in pod_spec(workload)["containers"]:
            yield f"{workload['kind']}/{workload['metadata']['name']}/{box['name']}", box


@pytest.fixture(params=KUSTOMIZATIONS)
def kustomization(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(kustomization: str) -> list[Manifest]:
    return manifests(kustomization)


def test_renders_every_part(docs: list[Manifest]) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for expected in [
        ("Deployment", "api"),
        ("Deployment", "worker"),
        ("Service", "api"),
        ("Ingress", "api"),
        ("Job", "migrate"),
        ("HorizontalPodAutoscaler", "api"),
        ("HorizontalPodAutoscaler", "worker"),
        ("PodDisruptionBudget", "api"),
        ("PodDisruptionBudget", "worker"),
        ("ServiceAccount", "imagegen-gateway"),
    ]:
        assert expected in kinds
    assert len(find(docs, "ConfigMap")) == 1
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {
        "imagegen"
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "latest")
def test_passes_strict_schema_validation(
    kustomization: str, version: str | None, tmp_path: Path
) -> None:
    target = tmp_path / "rendered.yaml"
    target.write_text(rendered(kustomization))
    args = [tool("kubernetes-validate"), "--strict", str(target)]
    if version:
        args[1:1] = ["--kubernetes-version", version]
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every object was checked against a schema (none skipped for lack of one).
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(manifests(kustomization)), result.stdout + result.stderr


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """The validation above can fail: a typo in a probe is refused."""
    api = one(manifests("base"), "Deployment", "api")
    broken = json.loads(json.dumps(api))
    box = pod_spec(broken)["containers"][0]
    box["readinesProbe"] = box.pop("readinessProbe")
    target = tmp_path / "broken.yaml"
    target.write_text(yaml.safe_dump(broken))
    result = run(tool("kubernetes-validate"), "--strict", str(target))
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_every_setting_is_wired(docs: list[Manifest]) -> None:
    """Each IMAGEGEN_* variable of Settings (and so of the contract) reaches some container."""
    wired: dict[str, set[str]] = {}
    for _, box in gateway_containers(docs):
        for variable, source in env_sources(docs, box).items():
            wired.setdefault(variable, set()).add(source)
    assert set(CONTRACT_VARIABLES) <= set(SETTINGS_VARIABLES)
    missing = [variable for variable in SETTINGS_VARIABLES if variable not in wired]
    assert not missing, f"not set by any container: {missing}"
    unknown = [v for v in wired if v.startswith("IMAGEGEN_") and v not in SETTINGS_VARIABLES]
    assert not unknown, f"set but not a setting (typo?): {unknown}"
    for variable in SECRET_VARIABLES:
        assert wired.get(variable) == {"secret"}, f"{variable} must come from a Secret only"
    for variable in ("AWS_REGION",):
        assert variable in wired


def test_secrets_never_sit_in_the_config_map(docs: list[Manifest]) -> None:
    (config_map,) = find(docs, "ConfigMap")
    assert not SECRET_VARIABLES & set(config_map["data"])
    assert not find(docs, "Secret"), "secrets are created out of band, not rendered"


def test_gateway_containers_get_what_they_need(docs: list[Manifest]) -> None:
    required = {"IMAGEGEN_DATABASE_URL", "IMAGEGEN_PROVIDER_API_KEY", "IMAGEGEN_CALLBACK_SECRET"}
    for where, box in gateway_containers(docs):
        sources = env_sources(docs, box)
        assert required <= set(sources), where
        assert "IMAGEGEN_PUBLIC_BASE_URL" in sources, where
    api = env_sources(docs, container(docs, "Deployment", "api"))
    assert "IMAGEGEN_API_KEYS" in api
    assert "IMAGEGEN_OPERATOR_KEYS" in api
    assert "IMAGEGEN_CONSOLE_SECRET" in api  # required with operators and evolink


def test_api_runs_without_workers_and_the_worker_runs_them(docs: list[Manifest]) -> None:
    api = container(docs, "Deployment", "api")
    run_workers = [e for e in api["env"] if e["name"] == "IMAGEGEN_RUN_WORKERS"]
    assert run_workers == [{"name": "IMAGEGEN_RUN_WORKERS", "value": "false"}]
    assert api["command"][:2] == ["imagegen-gateway", "serve"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert container(docs, "Deployment", "worker")["command"] == ["imagegen-gateway", "worker"]
    assert container(docs, "Job", "migrate")["command"] == ["imagegen-gateway", "migrate"]
    (config_map,) = find(docs, "ConfigMap")
    assert "IMAGEGEN_RUN_WORKERS" not in config_map["data"]


def test_every_container_is_non_root_with_a_read_only_root(docs: list[Manifest]) -> None:
    checked = 0
    for workload in workloads(docs):
        spec = pod_spec(workload)
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for box in spec["containers"] + spec.get("initContainers", []):
            checked += 1
            where = f"{name}/{box['name']}"
            security = box["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["runAsNonRoot"] is True, where
            assert security.get("runAsUser", pod["runAsUser"]) != 0, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            assert security.get("privileged", False) is False, where
            mounts = box.get("volumeMounts", [])
            tmp = [m for m in mounts if m["mountPath"] == "/tmp"]  # noqa: S108
            assert len(tmp) == 1, f"{where}: no writable /tmp"
            assert "emptyDir" in volumes[tmp[0]["name"]], where
            resources = box["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), where
    assert checked >= 3


def test_probes(docs: list[Manifest]) -> None:
    api = container(docs, "Deployment", "api")
    port = api["ports"][0]["name"]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    worker = container(docs, "Deployment", "worker")
    metrics_port = next(e["value"] for e in worker["env"] if e["name"].endswith("METRICS_PORT"))
    assert worker["ports"][0]["containerPort"] == int(metrics_port)
    assert worker["livenessProbe"]["httpGet"]["port"] == worker["ports"][0]["name"]


def test_graceful_shutdown_fits_in_the_grace_period(docs: list[Manifest]) -> None:
    (config_map,) = find(docs, "ConfigMap")
    grace = float(config_map["data"]["IMAGEGEN_SHUTDOWN_GRACE_SECONDS"])
    for name in ("api", "worker"):
        spec = pod_spec(one(docs, "Deployment", name))
        pre_stop = spec["containers"][0].get("lifecycle", {}).get("preStop", {})
        sleep = pre_stop.get("sleep", {}).get("seconds", 0)
        assert spec["terminationGracePeriodSeconds"] > grace + sleep, name


def test_ingress_publishes_the_callback_host_with_tls(docs: list[Manifest]) -> None:
    (config_map,) = find(docs, "ConfigMap")
    public = urlsplit(config_map["data"]["IMAGEGEN_PUBLIC_BASE_URL"])
    assert public.scheme == "https"
    ingress = one(docs, "Ingress", "api")
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert all(entry["secretName"] for entry in ingress["spec"]["tls"])
    rules = ingress["spec"]["rules"]
    assert [rule["host"] for rule in rules] == [public.hostname]
    assert {rule["host"] for rule in rules} <= tls_hosts
    service = one(docs, "Service", "api")
    for rule in rules:
        published = [(path["path"], path["pathType"]) for path in rule["http"]["paths"]]
        # Only the provider's ways in: callbacks, and the reference images it downloads.
        assert published == [("/callbacks/", "Prefix"), ("/inputs/", "Prefix")]
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == service["metadata"]["name"]
            assert path["backend"]["service"]["port"] == {"name": "http"}


def test_the_network_policy_lets_the_ingress_reach_the_published_paths(
    docs: list[Manifest],
) -> None:
    # A NetworkPolicy filters ports, not paths: it must admit, from the ingress controller's
    # namespace (any), the API port the Ingress sends /callbacks/ and /inputs/ to, and no port
    # but that one and the worker's metrics; which paths are public is the Ingress's choice.
    (policy,) = find(docs, "NetworkPolicy")
    api = one(docs, "Deployment", "api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(labels.get(key) == value for key, value in selector.items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [http] = [
        port
        for port in container(docs, "Deployment", "api")["ports"]
        if port["name"] == one(docs, "Service", "api")["spec"]["ports"][0]["targetPort"]
    ]
    admitted = {
        (port["port"], port["protocol"])
        for rule in policy["spec"]["ingress"]
        for port in rule["ports"]
        if rule["from"] == [{"namespaceSelector": {}}]
    }
    assert (http["containerPort"], "TCP") in admitted
    assert admitted == {(http["containerPort"], "TCP"), (9100, "TCP")}


def test_service_pdb_and_autoscalers_point_at_the_pods(docs: list[Manifest]) -> None:
    def selects(selector: dict[str, str], deployment: Manifest) -> bool:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        return all(labels.get(key) == value for key, value in selector.items())

    api, worker = one(docs, "Deployment", "api"), one(docs, "Deployment", "worker")
    assert selects(one(docs, "Service", "api")["spec"]["selector"], api)
    assert not selects(one(docs, "Service", "api")["spec"]["selector"], worker)
    for name, deployment in (("api", api), ("worker", worker)):
        assert selects(one(docs, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"],
                       deployment)  # fmt: skip
        hpa = one(docs, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployment["spec"], "replicas belong to the autoscaler"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_migration_job_is_ordered_before_the_rollout(docs: list[Manifest]) -> None:
    job = one(docs, "Job", "migrate")
    phase = "imagegen.example.com/phase"
    assert job["metadata"]["labels"][phase] == "pre-rollout"
    # What the Job needs is applied with it (kubectl apply -l ...).
    (config_map,) = find(docs, "ConfigMap")
    assert config_map["metadata"]["labels"][phase] == "pre-rollout"
    assert one(docs, "ServiceAccount", "imagegen-gateway")["metadata"]["labels"][phase]
    assert not [d for d in docs if d["kind"] == "Deployment" and phase in d["metadata"]["labels"]]
    # Argo CD: a Sync hook in a wave before the Deployments and after the ConfigMap.
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    wave = int(annotations["argocd.argoproj.io/sync-wave"])
    assert int(config_map["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < wave < 0
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_all_gateway_containers_run_one_image(docs: list[Manifest]) -> None:
    images = {box["image"] for _, box in gateway_containers(docs)}
    assert len(images) == 1
    (image,) = images
    assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image


def test_production_overlay() -> None:
    docs = manifests("overlays/production")
    base = manifests("base")
    image = container(docs, "Deployment", "api")["image"]
    assert image != container(base, "Deployment", "api")["image"]
    for kind, name in (("Deployment", "api"), ("Deployment", "worker"), ("Job", "migrate")):
        database = next(
            e for e in container(docs, kind, name)["env"] if e["name"] == "IMAGEGEN_DATABASE_URL"
        )
        assert database["valueFrom"]["secretKeyRef"] == {"name": "imagegen-postgres", "key": "url"}
    (config_map,) = find(docs, "ConfigMap")
    assert config_map["data"]["IMAGEGEN_STORAGE_URL"].startswith("s3://")
    assert config_map["data"]["IMAGEGEN_PROVIDER"] == "evolink"
    assert config_map["data"]["IMAGEGEN_ALLOW_PRIVATE_NETWORKS"] == "false"
    host = urlsplit(config_map["data"]["IMAGEGEN_PUBLIC_BASE_URL"]).hostname
    assert host != urlsplit(find(base, "ConfigMap")[0]["data"]["IMAGEGEN_PUBLIC_BASE_URL"]).hostname
    assert one(docs, "Ingress", "api")["spec"]["rules"][0]["host"] == host
    assert one(docs, "HorizontalPodAutoscaler", "api")["spec"]["minReplicas"] >= 3


def test_secret_example_matches_the_references() -> None:
    """deploy/base/secret.example.yaml lists exactly the keys the containers read."""
    example = yaml.safe_load((DEPLOY / "base" / "secret.example.yaml").read_text())
    referenced = {
        entry["valueFrom"]["secretKeyRef"]["key"]
        for _, box in gateway_containers(manifests("base"))
        for entry in box.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    assert set(example["stringData"]) == referenced
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


def test_yamllint_is_clean_on_deploy() -> None:
    result = run(tool("yamllint"), "--strict", "deploy/", ".yamllint.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_still_finds_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]\n")
    result = run(tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint.yaml"), str(bad))
    assert result.returncode != 0
    assert "duplication of key" in result.stdout


def test_compose_is_a_production_like_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "s3", "migrate", "api", "worker", "simulator"} <= set(services)
    api, worker, migrate = services["api"], services["worker"], services["migrate"]
    assert api["environment"]["IMAGEGEN_RUN_WORKERS"] == "false"
    assert api["environment"]["IMAGEGEN_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert api["environment"]["IMAGEGEN_STORAGE_URL"].startswith("s3://")
    assert worker["command"] == ["imagegen-gateway", "worker"]
    assert migrate["command"] == ["imagegen-gateway", "migrate"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
    assert "command" not in api, "the API runs the image's default command"
    for name in ("migrate", "api", "worker"):  # each container's configuration loads
        env = services[name]["environment"]
        values: dict[str, Any] = {
            key.removeprefix("IMAGEGEN_").lower(): value
            for key, value in env.items()
            if key.startswith("IMAGEGEN_")
        }
        Settings(_env_file=None, **values)
