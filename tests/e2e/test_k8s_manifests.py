"""deploy/k8s: every object of every overlay validated offline, and the overlays wired together.

Built-in kinds are checked against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) for the oldest and newest Kubernetes versions below; custom
resources against the JSON Schemas vendored in deploy/k8s/schemas. An object whose kind has
no schema fails. Rendering the overlays needs `kubectl kustomize`; the raw-file test and the
schema tests need only Python, so the schemas are exercised where kubectl is missing.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate)",
)
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

from gateway.settings import settings_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("aws", "local")
NAMESPACE = "sd-gateway"
# The oldest Kubernetes these manifests claim, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kv.latest_version())
RENDER_TIMEOUT_S = 60

Obj = dict[str, Any]


# --- validation ------------------------------------------------------------------------------


def _crd_validators() -> dict[tuple[str, str], Any]:
    validators = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        for gvk in schema["x-kubernetes-group-version-kind"]:
            key = (f"{gvk['group']}/{gvk['version']}", gvk["kind"])
            assert key not in validators, f"two schemas for {key}"
            validators[key] = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
    return validators


CRD_VALIDATORS = _crd_validators()


def _where(path: Any) -> str:
    return "/".join(str(p) for p in path) or "(top)"


def problems(obj: Obj) -> list[str]:
    """Every schema violation of `obj` (empty when valid), each 'Kind/name: path: message'."""
    kind, api_version = obj.get("kind", "?"), obj.get("apiVersion", "?")
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    validator = CRD_VALIDATORS.get((api_version, kind))
    if validator is not None:
        return [
            f"{name}: {_where(e.absolute_path)}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]
    found = []
    for version in K8S_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            found.append(f"{name} (Kubernetes {version}): {_where(e.absolute_path)}: {e.message}")
        except kv.SchemaNotFoundError:
            return [f"{name}: no schema for {api_version} {kind}; add one to deploy/k8s/schemas"]
    return found


def assert_all_valid(objects: list[Obj]) -> None:
    found = [p for obj in objects for p in problems(obj)]
    assert not found, "invalid objects:\n  " + "\n  ".join(found)


# --- sources ---------------------------------------------------------------------------------


def _load_yaml_documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _resource_files() -> Iterator[Path]:
    """Every file a kustomization lists under `resources` (directories are kustomizations)."""
    for kustomization in _kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                yield path


def _referenced_files() -> set[Path]:
    """Patch files and generator inputs named by some kustomization."""
    found = set()
    for kustomization in _kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        for patch in spec.get("patches", []):
            if "path" in patch:
                found.add((kustomization.parent / patch["path"]).resolve())
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for entry in generator.get("files", []):
                found.add((kustomization.parent / entry.rpartition("=")[2]).resolve())
    return found


@pytest.fixture(scope="module")
def render() -> Callable[[str], list[Obj]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl not found on PATH: rendering the overlays needs `kubectl kustomize` "
            "(test_raw_manifests_validate still checks every file without it)"
        )
    cache: dict[str, list[Obj]] = {}

    def _render(overlay: str) -> list[Obj]:
        if overlay not in cache:
            proc = subprocess.run(
                [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                capture_output=True,
                text=True,
                timeout=RENDER_TIMEOUT_S,
                check=False,
            )
            assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
            cache[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return cache[overlay]

    return _render


def _of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def _named(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in _of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def _pre_stop_sleep_s(container: Obj) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def _gateway_config(objects: list[Obj]) -> Any:
    maps = [
        o
        for o in _of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("sd-gateway-config")
    ]
    assert len(maps) == 1, "one generated gateway ConfigMap expected"
    return settings_from_dict(yaml.safe_load(maps[0]["data"]["gateway.yaml"]))


# --- the schemas themselves ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_vendored_schema_is_a_valid_json_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["x-kubernetes-scope"] in ("Cluster", "Namespaced")


def _first(path: str, kind: str) -> Obj:
    return next(o for o in _load_yaml_documents(K8S / path) if o["kind"] == kind)


def _set(obj: Obj, path: str, value: Any) -> Obj:
    """A deep copy of `obj` with the '/'-separated `path` set (value None deletes it)."""
    out = copy.deepcopy(obj)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node = out
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


NODEPOOL = ("overlays/aws/cluster/nodepools.yaml", "NodePool")
NODECLASS = ("overlays/aws/cluster/ec2nodeclass.yaml", "EC2NodeClass")
SCALEDOBJECT = ("overlays/aws/app/keda.yaml", "ScaledObject")
SERVICEMONITOR = ("overlays/aws/app/servicemonitor.yaml", "ServiceMonitor")
CLASSPARAMS = ("overlays/aws/cluster/ingressclass.yaml", "IngressClassParams")
DEPLOYMENT = ("base/gateway.yaml", "Deployment")

BROKEN = [
    pytest.param(NODEPOOL, "spec/template", None, id="nodepool-without-template"),
    pytest.param(NODEPOOL, "metadata/namespace", "default", id="nodepool-namespaced"),
    pytest.param(
        NODEPOOL,
        "spec/disruption/consolidationPolicy",
        "WhenUnderutilized",  # the v1beta1 name
        id="nodepool-v1beta1-policy",
    ),
    pytest.param(
        NODEPOOL, "spec/template/spec/requirements/0/values", [], id="nodepool-in-without-values"
    ),
    pytest.param(
        NODEPOOL, "spec/template/spec/nodeClassRef/group", None, id="nodepool-ref-without-group"
    ),
    pytest.param(NODECLASS, "spec/instanceProfile", "x", id="nodeclass-role-and-profile"),
    pytest.param(NODECLASS, "spec/subnetSelectorTerms", None, id="nodeclass-without-subnets"),
    pytest.param(
        NODECLASS, "spec/amiSelectorTerms/0/alias", "ubuntu@latest", id="nodeclass-bad-alias"
    ),
    pytest.param(SCALEDOBJECT, "spec/triggers", [], id="scaledobject-without-triggers"),
    pytest.param(
        SCALEDOBJECT,
        "spec/triggers/0/metadata/query",
        None,
        id="scaledobject-prometheus-without-query",
    ),
    pytest.param(SCALEDOBJECT, "spec/minReplicaCount", "1", id="scaledobject-replicas-as-string"),
    pytest.param(
        SERVICEMONITOR, "spec/endpoints/0/interval", "5 seconds", id="servicemonitor-interval"
    ),
    pytest.param(SERVICEMONITOR, "spec/selector", None, id="servicemonitor-without-selector"),
    pytest.param(CLASSPARAMS, "spec/scheme", "public", id="ingressclassparams-scheme"),
    pytest.param(
        DEPLOYMENT, "spec/template/spec/containers/0/readinesProbe", {}, id="deployment-typo"
    ),
    pytest.param(DEPLOYMENT, "spec/selector", None, id="deployment-without-selector"),
]


@pytest.mark.parametrize(("source", "path", "value"), BROKEN)
def test_schemas_reject_a_broken_object(source: tuple[str, str], path: str, value: Any) -> None:
    good = _first(*source)
    assert problems(good) == []
    assert problems(_set(good, path, value)), f"{path}={value!r} was accepted"


# --- the files as written, without kubectl ---------------------------------------------------


def test_raw_manifests_validate() -> None:
    """Every object in every file a kustomization lists validates, and no file is stray."""
    files = sorted(set(_resource_files()))
    objects = [o for path in files for o in _load_yaml_documents(path)]
    assert len(objects) >= 30, f"only {len(objects)} objects in {len(files)} files"
    assert_all_valid(objects)
    kinds = {o["kind"] for o in objects}
    assert {"NodePool", "EC2NodeClass", "ScaledObject", "ServiceMonitor"} <= kinds
    accounted = set(files) | _referenced_files() | {p.resolve() for p in _kustomizations()}
    stray = [
        p.relative_to(K8S)
        for p in K8S.rglob("*.yaml")
        if p.resolve() not in accounted and p.parent != SCHEMAS
    ]
    assert not stray, f"YAML files no kustomization uses: {stray}"


# --- rendered overlays -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate(render: Callable[[str], list[Obj]], overlay: str) -> None:
    objects = render(overlay)
    assert_all_valid(objects)
    for obj in objects:
        scoped = (obj["apiVersion"], obj["kind"]) in CRD_VALIDATORS or obj["kind"] in (
            "Namespace",
            "IngressClass",
        )
        if not scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_discovers_every_pool(render: Callable[[str], list[Obj]], overlay: str) -> None:
    """Each `dns:` pool names a headless Service in the namespace that selects its servers."""
    objects = render(overlay)
    settings = _gateway_config(objects)
    assert settings.pools
    for pool in settings.pools:
        assert pool.dns is not None, f"pool {pool.name} is not discovered through DNS"
        host, _, port = pool.dns.rpartition(":")
        service_name, ns, *rest = host.split(".")
        assert (ns, rest) == (NAMESPACE, ["svc", "cluster", "local"]), host
        service = _named(objects, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None", f"{service_name} is not headless"
        ports = {p["port"]: p for p in service["spec"]["ports"]}
        assert int(port) in ports, f"{service_name} has no port {port}"
        backends = [
            d
            for d in _of_kind(objects, "Deployment")
            if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(backends) == 1, f"{service_name} selects {len(backends)} Deployments"
        container_ports = {p["name"]: p["containerPort"] for p in _container(backends[0])["ports"]}
        assert ports[int(port)]["targetPort"] in container_ports
        assert _container(backends[0])["readinessProbe"]["httpGet"]["path"] == "/readiness"


def test_gateway_deployment(render: Callable[[str], list[Obj]]) -> None:
    objects = render("aws")
    gateway = _named(objects, "Deployment", "sd-gateway")
    container = _container(gateway)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # SIGTERM comes after the preStop sleep; then the gateway serves for its drain delay and
    # waits for in-flight work, of which batch requests may take their whole objective.
    settings = _gateway_config(objects)
    needed_s = (
        _pre_stop_sleep_s(container)
        + getattr(settings, "drain_delay_s", 0.0)
        + settings.slo.batch_seconds
    )
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > needed_s
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway's replicas"
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    pdb = _named(objects, "PodDisruptionBudget", "sd-gateway")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _named(objects, "HorizontalPodAutoscaler", "sd-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sd-gateway"
    assert hpa["spec"]["minReplicas"] >= 2, "one gateway pod is a single point of failure"


def test_alb_ingress(render: Callable[[str], list[Obj]]) -> None:
    objects = render("aws")
    ingress = _named(objects, "Ingress", "sd-gateway")
    notes = ingress["metadata"]["annotations"]
    gateway = _container(_named(objects, "Deployment", "sd-gateway"))
    assert notes["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert (
        notes["alb.ingress.kubernetes.io/healthcheck-path"]
        == gateway["readinessProbe"]["httpGet"]["path"]
    )
    idle_s = int(
        notes["alb.ingress.kubernetes.io/load-balancer-attributes"].partition(
            "idle_timeout.timeout_seconds="
        )[2]
    )
    settings = _gateway_config(objects)
    keep_alive_s = getattr(settings, "keepalive_timeout_s", None)
    if keep_alive_s is None:  # before the setting existed: uvicorn's keep-alive in the code
        found = re.search(
            r'"timeout_keep_alive": (\d+)', (ROOT / "backends/serving.py").read_text()
        )
        assert found is not None
        keep_alive_s = float(found.group(1))
    assert idle_s < keep_alive_s, "the gateway must outlive the ALB's idle connections"
    # The ALB lets requests sent before deregistration finish for this long: as long as a
    # terminating gateway may still be serving them.
    dereg = notes["alb.ingress.kubernetes.io/target-group-attributes"]
    dereg_s = int(dereg.partition("deregistration_delay.timeout_seconds=")[2])
    serving_s = (
        _pre_stop_sleep_s(gateway)
        + getattr(settings, "drain_delay_s", 0.0)
        + settings.slo.batch_seconds
    )
    assert dereg_s >= serving_s
    ingress_class = _named(objects, "IngressClass", ingress["spec"]["ingressClassName"])
    assert ingress_class["spec"]["controller"] == "ingress.k8s.aws/alb"
    _named(objects, "IngressClassParams", ingress_class["spec"]["parameters"]["name"])
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = _named(objects, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


ACCELERATORS = {"inf2": "aws.amazon.com/neuron", "g5": "nvidia.com/gpu", "g6": "nvidia.com/gpu"}


def _tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    return any(
        t.get("key") == taint["key"]
        and t.get("effect", taint["effect"]) == taint["effect"]
        and t.get("operator", "Equal") == "Exists"
        for t in tolerations
    )


@pytest.mark.parametrize(("pool", "resource"), ACCELERATORS.items())
def test_model_servers_land_on_their_accelerators(
    render: Callable[[str], list[Obj]], pool: str, resource: str
) -> None:
    objects = render("aws")
    deployment = _named(objects, "Deployment", f"sd-{pool}")
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert str(container["resources"]["limits"][resource]) == "1"
    family = spec["nodeSelector"]["karpenter.k8s.aws/instance-family"]
    capacity_types = set()
    for nodepool in _of_kind(objects, "NodePool"):
        node_spec = nodepool["spec"]["template"]["spec"]
        reqs = {r["key"]: r for r in node_spec["requirements"]}
        families = reqs.get("karpenter.k8s.aws/instance-family", {}).get("values", [])
        if family in families and all(
            _tolerates(spec.get("tolerations", []), t) for t in node_spec.get("taints", [])
        ):
            _named(objects, "EC2NodeClass", node_spec["nodeClassRef"]["name"])
            capacity_types.update(reqs["karpenter.sh/capacity-type"]["values"])
    assert capacity_types == {"spot", "on-demand"}, f"{pool}: NodePools offer {capacity_types}"
    assert any(t["key"] == resource for t in spec["tolerations"])
    assert "replicas" not in deployment["spec"], "KEDA owns the model servers' replicas"


def test_keda_scales_every_pool_on_desired_replicas(render: Callable[[str], list[Obj]]) -> None:
    objects = render("aws")
    configs = {p.name: p for p in _gateway_config(objects).pools}
    pools = set(configs)
    metric = "sd_gateway_pool_desired_replicas"
    assert f'"{metric}"' in (ROOT / "gateway/metrics.py").read_text()
    scaled = {}
    for so in _of_kind(objects, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]
        _named(objects, target.get("kind", "Deployment"), target["name"])
        (trigger,) = so["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        pool = re.search(r'pool="([^"]+)"', query)
        assert pool is not None, query
        assert metric in query
        assert f'namespace="{NAMESPACE}"' in query
        assert target["name"] == f"sd-{pool.group(1)}"
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        # The gateway plans with the same bounds the scaler enforces.
        config = configs[pool.group(1)]
        assert (config.min_replicas, config.max_replicas) == (
            so["spec"]["minReplicaCount"],
            so["spec"]["maxReplicaCount"],
        )
        scaled[pool.group(1)] = so
    assert scaled.keys() == pools


def test_service_monitors_select_services(render: Callable[[str], list[Obj]]) -> None:
    objects = render("aws")
    monitors = _of_kind(objects, "ServiceMonitor")
    assert len(monitors) == 2
    scraped = set()
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in _of_kind(objects, "Service") if _selects(selector, s["metadata"]["labels"])
        ]
        assert services, f"{monitor['metadata']['name']} selects no Service"
        for service in services:
            names = {p["name"] for p in service["spec"]["ports"]}
            assert all(e["port"] in names for e in monitor["spec"]["endpoints"])
            scraped.add(service["metadata"]["name"])
    assert scraped == {s["metadata"]["name"] for s in _of_kind(objects, "Service")}


def test_local_overlay_needs_no_accelerator_or_crd(render: Callable[[str], list[Obj]]) -> None:
    objects = render("local")
    assert not [o for o in objects if (o["apiVersion"], o["kind"]) in CRD_VALIDATORS]
    for deployment in _of_kind(objects, "Deployment"):
        container = _container(deployment)
        resources = container.get("resources", {})
        extended = [r for part in resources.values() for r in part if "/" in r]
        assert not extended, f"{deployment['metadata']['name']} asks for {extended}"
        if deployment["metadata"]["name"] != "sd-gateway":
            assert container["args"][:3] == ["serve", "--engine", "sim"]
