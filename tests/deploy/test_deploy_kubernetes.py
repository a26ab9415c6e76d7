"""The Kubernetes manifests: Kubernetes' own schemas, the CRD we use, and how they fit.

- Every built-in resource is validated by kubernetes-validate in strict mode (unknown
  fields are errors) against the three newest Kubernetes minor releases it knows,
  which are the ones upstream still maintains.
- ServiceMonitor is a CRD (Prometheus Operator), for which kubernetes-validate has no
  schema, and no PyPI package ships the CRD's schema on its own. So it is checked against
  CRD_SUBSET below: the CRD's own field names for `spec` and `endpoints[]` and its
  Duration pattern, copied from monitoring.coreos.com/v1. It is structural, not the full
  schema, and says so.
- Certificate is cert-manager's CRD, checked the same way against CERTIFICATE_SUBSET: the
  v1 CRD's `spec` field names, with the types and enums of the fields certificate.yaml
  sets (issuerRef, privateKey), from cert-manager.io/v1.
- The Kustomization (no schema either) must list every manifest and nothing else.
- Cross references: selectors, named ports, volumes, the image's uid, the probes and the
  config they probe must agree, since no schema can see across files.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_kit import DEPLOY, REPO

pytestmark = pytest.mark.timeout(120)

MANIFESTS = DEPLOY / "kubernetes"
KUBERNETES_VERSIONS = ("1.35", "1.36", "1.37")
NOT_BUILT_IN = {"Kustomization", "ServiceMonitor", "Certificate"}

DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
CRD_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector"],
            "additionalProperties": False,
            "properties": {
                key: {}
                for key in (
                    "attachMetadata",
                    "bodySizeLimit",
                    "fallbackScrapeProtocol",
                    "jobLabel",
                    "keepDroppedTargets",
                    "labelLimit",
                    "labelNameLengthLimit",
                    "labelValueLengthLimit",
                    "namespaceSelector",
                    "nativeHistogramBucketLimit",
                    "nativeHistogramMinBucketFactor",
                    "podTargetLabels",
                    "sampleLimit",
                    "scrapeClass",
                    "scrapeClassicHistograms",
                    "scrapeProtocols",
                    "selectorMechanism",
                    "targetLabels",
                    "targetLimit",
                )
            }
            | {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            key: {}
                            for key in (
                                "authorization",
                                "basicAuth",
                                "bearerTokenFile",
                                "bearerTokenSecret",
                                "enableHttp2",
                                "filterRunning",
                                "followRedirects",
                                "honorLabels",
                                "honorTimestamps",
                                "metricRelabelings",
                                "oauth2",
                                "params",
                                "proxyUrl",
                                "relabelings",
                                "scheme",
                                "targetPort",
                                "tlsConfig",
                                "trackTimestampsStaleness",
                            )
                        }
                        | {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


# cert-manager.io/v1 Certificate, from the CRD (certificates.cert-manager.io): every `spec`
# field name, and the types and enums of those certificate.yaml sets. Size's allowed values
# per algorithm are the CRD's description (cert-manager's webhook enforces them).
CERTIFICATE_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["issuerRef", "secretName"],
            "additionalProperties": False,
            "properties": {
                key: {}
                for key in (
                    "additionalOutputFormats",
                    "commonName",
                    "duration",
                    "emailAddresses",
                    "encodeUsagesInRequest",
                    "ipAddresses",
                    "isCA",
                    "keystores",
                    "literalSubject",
                    "nameConstraints",
                    "otherNames",
                    "renewBefore",
                    "renewBeforePercentage",
                    "revisionHistoryLimit",
                    "secretTemplate",
                    "signatureAlgorithm",
                    "subject",
                    "uris",
                    "usages",
                )
            }
            | {
                "secretName": {"type": "string", "minLength": 1},
                "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "size": {"type": "integer"},
                    },
                    "allOf": [
                        {
                            "if": {"properties": {"algorithm": {"const": "ECDSA"}}},
                            "then": {"properties": {"size": {"enum": [256, 384, 521]}}},
                        },
                        {
                            "if": {"properties": {"algorithm": {"const": "RSA"}}},
                            "then": {"properties": {"size": {"enum": [2048, 4096, 8192]}}},
                        },
                    ],
                },
            },
        },
    },
}
CRD_SUBSETS = {"ServiceMonitor": CRD_SUBSET, "Certificate": CERTIFICATE_SUBSET}


def _load(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path
    return docs


MANIFEST_FILES = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = {
    (doc["kind"], doc["metadata"]["name"]): doc
    for name in MANIFEST_FILES
    for doc in _load(MANIFESTS / name)
}


def resource(kind: str, name: str = "proxyd") -> dict[str, Any]:
    return RESOURCES[(kind, name)]


def _kubernetes_validate() -> Any:
    from harness import require_tool

    return require_tool("kubernetes_validate")


def test_the_kubernetes_validate_package_knows_these_versions() -> None:
    _kubernetes_validate()
    from kubernetes_validate.utils import all_versions

    known = {".".join(v.split(".")[:2]) for v in all_versions()}
    assert set(KUBERNETES_VERSIONS) <= known, f"kubernetes-validate knows {sorted(known)}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_manifest_is_valid_for_kubernetes(name: str, version: str) -> None:
    kv = _kubernetes_validate()
    for doc in _load(MANIFESTS / name):
        if doc["kind"] in NOT_BUILT_IN:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(
                f"{name}: {doc['kind']} invalid for {version}: {e.message} at {list(e.path)}"
            )


def test_strict_validation_is_not_vacuous() -> None:
    kv = _kubernetes_validate()
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    service = yaml.safe_load((MANIFESTS / "service.yaml").read_text())
    service["spec"]["ports"][0]["port"] = "proxy"
    with pytest.raises(kv.ValidationError):
        kv.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def test_servicemonitor_matches_the_crd_fields() -> None:
    import jsonschema  # kubernetes-validate's own dependency

    monitor = resource("ServiceMonitor")
    jsonschema.validate(monitor, CRD_SUBSET)
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, CRD_SUBSET)
    # And it scrapes what exists: the admin Service, by its port's name.
    admin = resource("Service", "proxyd-admin")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    ports = {p["name"] for p in admin["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def test_certificate_matches_the_crd_fields() -> None:
    import jsonschema  # kubernetes-validate's own dependency

    certificate = resource("Certificate")
    jsonschema.validate(certificate, CERTIFICATE_SUBSET)
    spec = certificate["spec"]
    for typo in (
        {**spec, "secretname": spec["secretName"]},
        {**spec, "privateKey": {**spec["privateKey"], "algorithm": "ecdsa"}},
        {**spec, "privateKey": {**spec["privateKey"], "size": 2048}},
        {**spec, "issuerRef": {"kind": "ClusterIssuer"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**certificate, "spec": typo}, CERTIFICATE_SUBSET)
    # An issuer of cert-manager's own group; a fresh key at every renewal.
    assert spec["issuerRef"].get("group", "cert-manager.io") == "cert-manager.io"
    assert spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
    assert spec["privateKey"]["rotationPolicy"] == "Always"


def test_every_custom_resource_has_its_crd_check() -> None:
    kinds = {kind for kind, _ in RESOURCES if kind in NOT_BUILT_IN}
    assert kinds == set(CRD_SUBSETS) == NOT_BUILT_IN - {"Kustomization"}


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    known = {"apiVersion", "kind", "namespace", "resources", "images", "labels"}
    assert set(kustomization) <= known, set(kustomization) - known
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    assert sorted(listed) == MANIFEST_FILES
    assert kustomization["namespace"] == resource("Namespace")["metadata"]["name"]
    images = {image["name"] for image in kustomization["images"]}
    containers = _pod_spec()["containers"]
    assert {c["image"].rsplit(":", 1)[0] for c in containers} <= images


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    (container,) = _pod_spec()["containers"]
    return dict(container)


def _container_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        resource("ConfigMap", "proxyd-config")["data"]["proxyd.yaml"]
    )
    return data


def test_configmap_carries_the_container_config_and_it_loads(tmp_path: Path) -> None:
    text = resource("ConfigMap", "proxyd-config")["data"]["proxyd.yaml"]
    assert text == (DEPLOY / "container" / "proxyd.yaml").read_text()
    (tmp_path / "proxyd.yaml").write_text(text)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "proxyd"),
            "check-config",
            str(tmp_path / "proxyd.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deployment_replicas_probes_resources_and_security() -> None:
    deployment = resource("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _container_config()
    assert ports["proxy"] == int(config["listen"].rpartition(":")[2])
    assert ports["admin"] == int(config["admin_listen"].rpartition(":")[2])
    assert config["admin_listen"].startswith("0.0.0.0:"), "the kubelet probes the pod's IP"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]

    pod_security = _pod_spec()["securityContext"]
    dockerfile = (REPO / "Dockerfile").read_text()
    (image_user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert pod_security["runAsNonRoot"] is True
    assert (str(pod_security["runAsUser"]), str(pod_security["runAsGroup"])) == image_user
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The image's entry point is proxyd: args are a subcommand proxyd's CLI accepts.
    from deploy_kit import proxyd_argv_ok

    assert proxyd_argv_ok(container["args"]) is None
    assert container["args"][container["args"].index("--config") + 1] == "/etc/proxyd/proxyd.yaml"


def test_volumes_bring_the_config_and_the_auth_files_where_the_config_expects() -> None:
    container, pod = _container(), _pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts["/etc/proxyd/proxyd.yaml"]
    config_volume = volumes[config_mount["name"]]["configMap"]
    assert config_mount["subPath"] in resource("ConfigMap", config_volume["name"])["data"]

    auth = _container_config()["auth"]
    folder = posixpath.dirname(auth["users_file"])
    assert posixpath.dirname(auth["nonce_secret_file"]) == folder
    auth_volume = volumes[mounts[folder]["name"]]["secret"]
    secret = resource("Secret", auth_volume["secretName"])
    assert set(secret["stringData"]) == {
        posixpath.basename(auth["users_file"]),
        posixpath.basename(auth["nonce_secret_file"]),
    }
    assert auth_volume["defaultMode"] & 0o007 == 0, "the auth files are not world-readable"
    # The shipped Secret is a placeholder proxyd refuses to start with (too short a key).
    assert len(secret["stringData"]["nonce.secret"]) < 16
    # A read-only root: whatever must be writable is a volume.
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_the_tls_secret_is_a_folder_mount_where_the_commented_tls_keys_point() -> None:
    """Turning on the ConfigMap's commented-out TLS keys finds the Secret's files: the
    whole Secret mounted at their folder (never subPath, which a rotation never updates),
    optional (pods start before it exists), not world-readable, and the Secret that
    certificate.yaml has cert-manager write."""
    from deploy_kit import uncommented_tls

    _, keys = uncommented_tls(resource("ConfigMap", "proxyd-config")["data"]["proxyd.yaml"])
    tls = keys["tls"]
    folder = posixpath.dirname(tls["certificate"])
    assert posixpath.dirname(tls["key"]) == folder
    # A kubernetes.io/tls Secret's keys, as `kubectl create secret tls` and cert-manager
    # write them.
    assert posixpath.basename(tls["certificate"]) == "tls.crt"
    assert posixpath.basename(tls["key"]) == "tls.key"

    container, pod = _container(), _pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert "subPath" not in mount and "subPathExpr" not in mount, mount
    assert mount["readOnly"] is True
    assert [m for m in container["volumeMounts"] if m["name"] == mount["name"]] == [mount]
    inside = [m for m in container["volumeMounts"] if m["mountPath"].startswith(folder + "/")]
    assert not inside, "nothing is mounted over a file of the Secret's folder"
    secret = volumes[mount["name"]]["secret"]
    assert secret["optional"] is True, "pods start before the Secret exists"
    assert "items" not in secret, "both keys, under their own names"
    assert secret["defaultMode"] & 0o007 == 0, "the key is not world-readable"
    # The files are the pod's group's (fsGroup), the group proxyd runs as.
    security = pod["securityContext"]
    assert security["fsGroup"] == security["runAsGroup"]
    assert secret["defaultMode"] & 0o040, "readable by that group"

    certificate = resource("Certificate")
    assert certificate["spec"]["secretName"] == secret["secretName"]
    # The manifests don't ship that Secret too: cert-manager (or kubectl) owns it.
    assert ("Secret", secret["secretName"]) not in RESOURCES

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["proxy-tls"] == int(keys["tls_listen"].rpartition(":")[2])


def test_termination_grace_covers_the_drain() -> None:
    pod, container = _pod_spec(), _container()
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _container_config()["drain_timeout"]
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_services_expose_the_proxy_publicly_and_the_admin_port_inside_only() -> None:
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _container()["ports"]}
    public = resource("Service")
    assert public["spec"]["type"] == "LoadBalancer"
    assert public["spec"]["externalTrafficPolicy"] == "Local", "source rules need client IPs"
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["proxy", "proxy-tls"]
    # Partners use the pod's own port numbers: 3128, and 3129 for the TLS listener.
    numbers = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert all(p["port"] == numbers[p["targetPort"]] for p in public["spec"]["ports"])
    admin = resource("Service", "proxyd-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    for service in (public, admin):
        assert _selects(service["spec"]["selector"], pod_labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


def test_disruption_budget_and_autoscaler_fit_the_deployment() -> None:
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = resource("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] >= 1
    hpa = resource("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "proxyd")
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "a drain can always evict one"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and _container()["resources"]["requests"]["cpu"]
