#!/usr/bin/env python3
"""Offline tests of botfleet's Kubernetes packaging: the Helm chart
(helm/botfleet), the kustomize base and production overlay
(deploy/kubernetes), and the Compose stack (deploy/compose.yaml).

No Kubernetes API server can run here, so these are the proof: the chart is
rendered with helm-python-sdk (the Helm v4 Go SDK; it enforces
values.schema.json) for the default, production-like and minimal value files
(helm/botfleet/ci/), linted strictly, and every rendered manifest is validated
with kubernetes-validate --strict for the oldest and newest supported Kubernetes
versions, checked with yamllint and scanned with checkov (zero failed checks;
each skipped check has its reason below). Assertions over the rendered objects
cover the restricted Pod Security Standard, probes on the admin listener, the
checksum annotation, the generated botfleet.toml, the schema's refusals and
the render errors for missing Secret references. When a botfleet binary is
given (BOTFLEET_BIN), every generated configuration is also run through
`botfleet check-config`, and every metric the alert rules use is looked up in
a running botfleet's /metrics.

Run by scripts/chart-test (which makes the virtual environment); prints one
line per test and "chart tests: N passed, N failed" at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "botfleet"
KUSTOMIZE = {"kustomize-base": REPO / "deploy/kubernetes/base",
             "kustomize-production": REPO / "deploy/kubernetes/overlays/production"}
# Oldest (Pod Security admission GA; Chart.yaml kubeVersion) and newest
# versions kubernetes-validate bundles schemas for.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
# Custom resources: kubernetes-validate has no schema for them; the assertions
# below check the fields the chart sets.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
VALUE_FILES = {name: CHART / "ci" / f"{name}-values.yaml" for name in ("default", "production", "minimal")}
RELEASE, NAMESPACE = "botfleet", "botfleet"
SECRETS_DIR = "/var/run/secrets/botfleet/"

# checkov checks skipped, with the reason. Applies to every rendered set unless
# the set is named.
CHECKOV_SKIPS: dict[str, tuple[str, set[str] | None]] = {
    "CKV_K8S_43": ("Images are pinned by digest when image.digest is set (the production "
                   "values do); the defaults cannot know the digest of the user's build.",
                   {"default", "minimal", "kustomize-base"}),
    "CKV2_K8S_6": ("NetworkPolicy is opt-in (networkPolicy.enabled): which namespace runs the "
                   "ingress controller and where Redis lives differ per cluster; the "
                   "production values and overlay enable it.",
                   {"default", "minimal", "kustomize-base"}),
    "CKV_K8S_15": ("imagePullPolicy IfNotPresent: checkov accepts it for an image pinned by digest "
                   "(the production Deployment is); the defaults and the helm test image use tags, "
                   "and Always would make every pod restart depend on the registry.",
                   {"default", "minimal", "kustomize-base", "production"}),
    "CKV_K8S_21": ("The kustomize base has no namespace on purpose (kubectl apply -k ... -n NS); "
                   "the production overlay and the chart set one.",
                   {"kustomize-base"}),
}


# --- the runner ----------------------------------------------------------------

TESTS: list[tuple[str, Callable[[], str | None]]] = []


def test(fn: Callable[[], str | None]) -> Callable[[], str | None]:
    TESTS.append((fn.__name__, fn))
    return fn


class Skip(Exception):
    """A test that cannot run here (prints SKIPPED with the reason)."""


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def tool(name: str) -> str:
    """A console script of the virtual environment this runs in."""
    return str(Path(sys.executable).parent / name)


# --- rendering ---------------------------------------------------------------------

def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(VALUE_FILES[name].read_text()) or {}


_chart: helm.Chart | None = None


def chart() -> helm.Chart:
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(str(CHART))
    return _chart


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text (empty templates left out)."""
    out = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {k: v for k, v in out.items() if v.strip() and not k.endswith("NOTES.txt")}


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                docs.append(doc)
    return docs


def kustomize(path: Path) -> str:
    p = run(["kubectl", "kustomize", str(path)])
    if p.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path}: {p.stderr.strip()}")
    return p.stdout


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


class Sets:
    """Every manifest set under test, rendered once: label -> (text, objects)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.text: dict[str, str] = {}
        self.rendered: dict[str, dict[str, str]] = {}
        self.objs: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, Path] = {}
        for name in VALUE_FILES:
            r = render(load_values(name))
            self.rendered[name] = r
            self.add(name, "".join(f"---\n# Source: {p}\n{t.strip()}\n" for p, t in sorted(r.items())))
        for name, path in KUSTOMIZE.items():
            self.add(name, kustomize(path))

    def add(self, name: str, text: str) -> None:
        self.text[name] = text
        self.objs[name] = [d for d in yaml.safe_load_all(text) if d]
        f = self.work / f"{name}.yaml"
        f.write_text(text)
        self.files[name] = f


SETS: Sets


# --- lint, schema validation, yamllint, checkov ---------------------------------------

@test
def helm_lint_strict() -> str:
    done = 0
    for name in VALUE_FILES:
        for kv in KUBE_VERSIONS:
            report = helm.lint(str(CHART), load_values(name), strict=True, namespace=NAMESPACE,
                               kube_version=f"v{kv}")
            bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            assert not report.get("errors") and not bad, f"{name} values, Kubernetes {kv}: {report}"
            done += 1
    return f"{done} lint runs (3 value files x {len(KUBE_VERSIONS)} Kubernetes versions), no warning"


@test
def kubernetes_validate_strict() -> str:
    runs = 0
    for name, f in SETS.files.items():
        for kv in KUBE_VERSIONS:
            p = run([tool("kubernetes-validate"), "--strict", "-k", kv, str(f)])
            lines = (p.stdout + p.stderr).splitlines()
            errors = [l for l in lines if l.startswith("ERROR")]
            warns = [l for l in lines if l.startswith("WARN")]
            unexpected = [w for w in warns if not any(f"kind {k} " in w for k in CRD_KINDS)]
            assert p.returncode == 0 and not errors, f"{name} on {kv}:\n" + "\n".join(errors or lines[-5:])
            assert not unexpected, f"{name} on {kv}: unexpected warnings:\n" + "\n".join(unexpected)
            runs += 1
    return f"{len(SETS.files)} manifest sets x Kubernetes {' and '.join(KUBE_VERSIONS)}"


@test
def yamllint_clean() -> str:
    config = REPO / "deploy/tests/yamllint.yaml"
    sources = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml")),
               REPO / "deploy/compose.yaml", *sorted((REPO / "deploy/kubernetes").rglob("*.yaml"))]
    files = [str(f) for f in SETS.files.values()] + [str(f) for f in sources]
    p = run([tool("yamllint"), "--strict", "-c", str(config), *files])
    assert p.returncode == 0, p.stdout + p.stderr
    return f"{len(files)} files (rendered sets and YAML sources)"


@test
def checkov_no_failed_checks() -> str:
    # One checkov per set, all at once (each spends seconds loading its policies).
    procs = {}
    for name, f in SETS.files.items():
        skips = sorted(c for c, (_, only) in CHECKOV_SKIPS.items() if only is None or name in only)
        cmd = [tool("checkov"), "-f", str(f), "--framework", "kubernetes", "--skip-download",
               "--quiet", "--compact", "-o", "json"]
        if skips:
            cmd += ["--skip-check", ",".join(skips)]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    summary, problems = [], []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            problems.append(f"checkov on {name} printed no JSON (exit {proc.returncode}): {err[-500:]}")
            continue
        if isinstance(report, list):
            report = report[0]
        failed = report.get("results", {}).get("failed_checks", [])
        if failed:
            lines = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in failed]
            problems.append(f"{name}: checkov failed checks:\n  " + "\n  ".join(lines))
        summary.append(f"{name}: {report.get('summary', {}).get('passed', '?')} passed")
    assert not problems, "\n".join(problems)
    return "; ".join(summary) + f"; skipped with reasons: {', '.join(sorted(CHECKOV_SKIPS))}"


# --- the restricted Pod Security Standard -------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted)

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for o in objs:
        if o["kind"] == "Pod":
            out.append((f"Pod/{o['metadata']['name']}", o["spec"]))
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    v = []
    psc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            v.append(f"{flag} is set")
    for vol in spec.get("volumes") or []:
        kind = next((k for k in vol if k != "name"), None)
        if kind not in ALLOWED_VOLUMES:
            v.append(f"volume {vol['name']} is a {kind}")
    if psc.get("sysctls"):
        v.append("pod sysctls are set")
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("privileged"):
            v.append(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            v.append(f"{where}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            v.append(f"{where}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            v.append(f"{where}: runs as uid 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            v.append(f"{where} uses a hostPort")
        if sc.get("procMount", "Default") != "Default":
            v.append(f"{where}: procMount {sc['procMount']}")
        # Beyond the standard, what this chart promises:
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{where}: readOnlyRootFilesystem must be true")
    return v


@test
def pods_meet_restricted_pod_security_standard() -> str:
    checked = 0
    for name, objs in SETS.objs.items():
        for what, spec in pod_specs(objs):
            problems = restricted_violations(spec)
            assert not problems, f"{name} {what}: " + "; ".join(problems)
            assert spec.get("automountServiceAccountToken") is False, f"{name} {what}: mounts a service account token"
            checked += 1
    # And the checker itself catches what it must (so a passing run means something).
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = restricted_violations(bad)
    assert len(found) >= 6, f"the checker missed violations: {found}"
    return f"{checked} pod specs (Deployments and the helm test Pod in every set)"


# --- probes, ports, services --------------------------------------------------------

def botfleet_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(objs, "Deployment")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "botfleet")


@test
def probes_use_the_admin_listener() -> str:
    for name, objs in SETS.objs.items():
        c = botfleet_container(objs)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(ports) == {"public", "admin"}, f"{name}: ports {ports}"
        want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe, path in want.items():
            got = (c.get(probe) or {}).get("httpGet") or {}
            assert got.get("path") == path and got.get("port") == "admin", f"{name}: {probe} is {got}, want {path} on admin"
        assert c["args"] == ["serve", "--config", "/etc/botfleet/botfleet.toml"], f"{name}: args {c['args']}"
    # Ports follow the values, and so does the generated configuration.
    objs = objects(render({"ports": {"public": 8443, "admin": 9443}}))
    c = botfleet_container(objs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"public": 8443, "admin": 9443}
    toml = tomllib.loads(one(objs, "ConfigMap")["data"]["botfleet.toml"])
    assert toml["server"]["listen"] == "0.0.0.0:8443" and toml["server"]["admin_listen"] == "0.0.0.0:9443", toml
    return "startup and liveness /healthz, readiness /readyz, all on the admin port, in every set"


@test
def only_the_public_listener_is_routed_outside() -> str:
    objs = SETS.objs["production"]
    svc = one(objs, "Service", f"{RELEASE}")
    admin = one(objs, "Service", f"{RELEASE}-admin")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["public"]
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
    ing = one(objs, "Ingress")
    backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b == {"name": RELEASE, "port": {"name": "public"}} for b in backends), backends
    assert all(p["path"] == "/api/messages" for r in ing["spec"]["rules"] for p in r["http"]["paths"])
    route = one(objs, "HTTPRoute")
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert refs == [{"name": RELEASE, "port": 80}], refs
    assert route["spec"]["parentRefs"][0]["name"] == "public-gateway"
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "admin"
    assert admin["metadata"]["labels"]["app.kubernetes.io/component"] == "admin"
    np = one(objs, "NetworkPolicy")
    ingress = {tuple(p["port"] for p in r["ports"]): r["from"] for r in np["spec"]["ingress"]}
    assert ingress[("admin",)] == [{"namespaceSelector": {}}], ingress
    public_from = ingress[("public",)]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in public_from
    assert not any(f == {"namespaceSelector": {}} for f in public_from), "the public port is open to the whole cluster"
    egress_ports = sorted(p["port"] for r in np["spec"]["egress"] for p in r["ports"])
    assert egress_ports == [53, 53, 443, 6380], egress_ports
    # The kustomize overlay says the same.
    kobjs = SETS.objs["kustomize-production"]
    kb = [p["backend"]["service"] for r in one(kobjs, "Ingress")["spec"]["rules"] for p in r["http"]["paths"]]
    assert kb == [{"name": "botfleet", "port": {"name": "public"}}], kb
    return "Ingress and HTTPRoute reach only the public Service; admin only in-cluster; ServiceMonitor on admin /metrics"


# --- configuration, checksum, secrets ----------------------------------------------

def config_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(one(objs, "ConfigMap")["data"]["botfleet.toml"])


@test
def checksum_annotation_rolls_pods_on_config_change() -> str:
    r = SETS.rendered["default"]
    dep = one(objects(r), "Deployment")
    got = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    want = hashlib.sha256(r["botfleet/templates/configmap.yaml"].encode()).hexdigest()
    assert got == want, f"checksum/config {got} is not the ConfigMap's sha256 {want}"

    def checksum(values: dict[str, Any]) -> str:
        d = one(objects(render(values)), "Deployment")
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    assert checksum({"config": {"runtime": {"conversation_idle": "5m"}}}) != base, "a config change kept the checksum"
    assert checksum({"ports": {"public": 8080, "admin": 9090}}) != base, "a port change kept the checksum"
    assert checksum({"podAnnotations": {"a": "b"}}) == base, "an unrelated value changed the checksum"
    # A chart-made Secret gets its own checksum, so a changed secret rolls too.
    s1 = one(objects(render({"secrets": {"values": {"admin-key": "a" * 40}}})), "Deployment")
    s2 = one(objects(render({"secrets": {"values": {"admin-key": "b" * 40}}})), "Deployment")
    a1 = s1["spec"]["template"]["metadata"]["annotations"]
    a2 = s2["spec"]["template"]["metadata"]["annotations"]
    assert a1["checksum/secret"] != a2["checksum/secret"], "a changed chart-made Secret kept its checksum"
    k = [o for o in SETS.objs["kustomize-production"] if o["kind"] == "ConfigMap"][0]["metadata"]["name"]
    assert re.fullmatch(r"botfleet-config-[a-z0-9]{10}", k), f"kustomize ConfigMap {k} has no content hash"
    kdep = one(SETS.objs["kustomize-production"], "Deployment")
    assert any(v.get("configMap", {}).get("name") == k for v in kdep["spec"]["template"]["spec"]["volumes"])
    return "sha256 of the rendered ConfigMap; changes with config and ports, not with pod annotations; kustomize hash suffix"


@test
def generated_botfleet_toml() -> str:
    prod = config_of(SETS.objs["production"])
    assert prod["server"] == {"listen": "0.0.0.0:3978", "admin_listen": "0.0.0.0:9090",
                              "log_format": "json", "handler_deadline": "10s",
                              "shutdown_delay": "10s", "shutdown_grace": "40s"}, prod["server"]
    assert prod["store"]["backend"] == "redis" and prod["store"]["redis_cluster"] is False
    # Whole numbers stay integers (Helm's toToml would write 32.0, which botfleet refuses).
    assert prod["store"]["redis_pool_size"] == 32 and isinstance(prod["store"]["redis_pool_size"], int)
    assert prod["runtime"]["tenant_activities_per_sec"] == 50
    assert "redis_urls" not in prod["store"], "the Redis URL must come from the Secret, not the ConfigMap"
    assert prod["store"]["redis_urls_file"] == SECRETS_DIR + "redis-url", prod["store"]
    assert prod["admin"] == {"bootstrap_key_file": SECRETS_DIR + "admin-key"}
    assert [b["id"] for b in prod["bots"]] == ["helpdesk", "alerts"]
    assert prod["bots"][1]["handler"] == {"kind": "webhook", "url": "https://alerts.example.com/teams",
                                          "secret_file": SECRETS_DIR + "alerts-webhook-secret", "timeout": "5s"}
    minimal = config_of(SETS.objs["minimal"])
    assert minimal == {"server": {"listen": "0.0.0.0:3978", "admin_listen": "0.0.0.0:9090", "log_format": "json",
                                  "shutdown_delay": "5s", "shutdown_grace": "25s"},
                       "store": {"backend": "memory"}}, minimal
    # Awkward values survive: quotes, backslashes, non-ASCII, HTML characters,
    # floats, nested tables, lists, keys that need quoting.
    odd = {"config": {
        "runtime": {"tenant_activities_per_sec": 1000000, "note": 'a "quoted" \\ back <b>&</b> é 🤖'},
        "clouds": [{"name": "sim", "service_url_hosts": [], "nested": {"a": {"b": [1, 2.5, True]}}}],
        "outbound": {"ratio": 0.25, "weird key": "x"},
    }}
    got = config_of(objects(render(odd)))
    assert got["runtime"] == odd["config"]["runtime"], got["runtime"]
    assert got["clouds"] == odd["config"]["clouds"], got["clouds"]
    assert got["outbound"] == {"ratio": 0.25, "weird key": "x"}, got["outbound"]
    # A null has no TOML form: a clear error naming the key (Helm itself
    # drops a null map value, so the case is a null inside a list).
    msg = render_error({"config": {"bots": [{"id": "a", "tenant_id": None}]}})
    assert "config.bots[0].tenant_id is null" in msg, msg
    return "production, minimal and awkward values parse back exactly (tomllib); integers stay integers"


def render_error(values: dict[str, Any]) -> str:
    try:
        render(values)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"rendered without error: {values}")


@test
def schema_rejects_bad_values() -> str:
    cases = [
        ({"replicaCount": "two"}, "/replicaCount", "got string, want integer"),
        ({"replicaCunt": 2}, "additional properties 'replicaCunt' not allowed", ""),
        ({"image": {"repository": "x", "tagg": "1"}}, "/image", "'tagg' not allowed"),
        ({"store": {"backend": "mysql"}}, "/store/backend", ""),
        ({"config": {"sever": {}}}, "/config", "'sever' not allowed"),
        ({"config": {"server": "0.0.0.0"}}, "/config/server", "want object"),
        ({"probes": {"liveness": {"periodSeconds": 0, "failureThreshold": 1, "timeoutSeconds": 1}}}, "/probes/liveness/periodSeconds", ""),
        ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled", "want boolean"),
        ({"image": {"repository": "x", "digest": "latest"}}, "/image/digest", ""),
        ({"networkPolicy": {"httpsCidr": "everywhere"}}, "/networkPolicy/httpsCidr", ""),
        ({"podLabels": {"team": 5}}, "/podLabels/team", "want string"),
        ({"ingress": {"hosts": [{"host": "a", "paths": [{"path": "api", "pathType": "Prefix"}]}]}}, "/ingress/hosts/0/paths/0/path", ""),
        # Derived from shutdown.* now; setting it directly would silently disagree.
        ({"terminationGracePeriodSeconds": 30}, "additional properties 'terminationGracePeriodSeconds' not allowed", ""),
        ({"shutdown": {"delaySeconds": 5, "graceSeconds": "25s", "killMarginSeconds": 5}}, "/shutdown/graceSeconds", "want integer"),
        ({"shutdown": {"delaySeconds": 5, "graceSeconds": 25, "killMarginSeconds": 0}}, "/shutdown/killMarginSeconds", ""),
    ]
    for values, where, what in cases:
        msg = render_error(values)
        assert "values don't meet the specifications of the schema" in msg, f"{values}: not a schema error: {msg}"
        assert where in msg and what in msg, f"{values}: want {where!r} {what!r} in: {msg}"
    return f"{len(cases)} bad value sets refused by values.schema.json, each naming the key"


@test
def missing_secret_references_are_clear_errors() -> str:
    cases = [
        ({"store": {"backend": "redis"}},
         "store.backend=redis reads the Redis URL from a Secret: set secrets.existingSecret"),
        ({"store": {"backend": "redis"}, "secrets": {"values": {"admin-key": "k" * 40}}},
         'secrets.values has no key "redis-url"'),
        ({"admin": {"bootstrapKey": True}},
         "admin.bootstrapKey=true reads the key from a Secret: set secrets.existingSecret"),
        ({"admin": {"bootstrapKey": True}, "secrets": {"values": {"redis-url": "redis://r:6379"}}},
         'secrets.values has no key "admin-key"'),
        ({"replicaCount": 2}, "store.backend=memory keeps state inside one pod"),
        ({"autoscaling": {"enabled": True}}, "store.backend=memory keeps state inside one pod"),
        ({"config": {"server": {"listen": "0.0.0.0:1"}}}, "config.server.listen is set by the chart"),
        ({"config": {"store": {"redis_urls": ["redis://x"]}}}, "config.store.redis_urls is set by the chart"),
        ({"config": {"store": {"redis_urls_file": "/x"}}}, "config.store.redis_urls_file is set by the chart"),
        ({"config": {"server": {"shutdown_grace": "60s"}}}, "config.server.shutdown_grace is set by the chart"),
        ({"shutdown": {"delaySeconds": 20, "graceSeconds": 20, "killMarginSeconds": 5}},
         "shutdown.graceSeconds (20) must be more than shutdown.delaySeconds (20)"),
        ({"workloadIdentity": {"enabled": True}}, "workloadIdentity.enabled=true needs workloadIdentity.clientId"),
        ({"httpRoute": {"enabled": True}}, "httpRoute.enabled=true needs httpRoute.parentRefs"),
    ]
    for values, want in cases:
        msg = render_error(values)
        assert want in msg, f"{values}: want {want!r} in: {msg}"
    return f"{len(cases)} inconsistent value sets stop the render with a message naming the value to set"


@test
def secrets_stay_in_secrets() -> str:
    marker_url = "redis://:MARKER-redis-password@redis.example:6379"
    marker_key = "MARKER-admin-key-" + "x" * 32
    objs = objects(render({"store": {"backend": "redis"}, "admin": {"bootstrapKey": True},
                           "secrets": {"values": {"redis-url": marker_url, "admin-key": marker_key}}}))
    for o in objs:
        if o["kind"] == "Secret":
            continue
        text = yaml.safe_dump(o)
        assert "MARKER" not in text, f"{o['kind']}/{o['metadata']['name']} holds a secret value"
    secret = one(objs, "Secret")
    assert set(secret["data"]) == {"redis-url", "admin-key"}
    c = botfleet_container(objs)
    # Every secret is a file of the mounted Secret, the Redis URL included: no
    # environment variable from a Secret (CKV_K8S_35 passes without a skip).
    assert not any("valueFrom" in e for e in c.get("env", [])), c.get("env")
    assert config_of(objs)["store"]["redis_urls_file"] == SECRETS_DIR + "redis-url"
    dep = one(objs, "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["secrets"]["secret"]["secretName"] == RELEASE
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["secrets"]["mountPath"] + "/" == SECRETS_DIR and mounts["secrets"]["readOnly"] is True
    # With an existing Secret the chart creates none and refers to yours.
    prod = SETS.objs["production"]
    assert "Secret" not in kinds(prod)
    pspec = one(prod, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pspec["volumes"]}["secrets"]["secret"]["secretName"] == "botfleet"
    assert not any("valueFrom" in e for e in botfleet_container(prod).get("env", []))
    # Nothing that looks like a credential in any ConfigMap of any set.
    for name, objs2 in SETS.objs.items():
        for o in objs2:
            if o["kind"] == "ConfigMap":
                cfg = tomllib.loads(o["data"]["botfleet.toml"])
                flat = json.dumps(cfg)
                for key in ('"app_password"', '"secret"', '"bootstrap_key"', '"redis_urls"', '"otlp_headers"'):
                    assert key not in flat, f"{name}: ConfigMap has {key}"
    return "secret values only in the Secret; every secret (Redis URL included) a file under " + SECRETS_DIR


@test
def optional_objects_follow_their_switches() -> str:
    assert kinds(SETS.objs["minimal"]) == ["ConfigMap", "Deployment", "Pod", "Service", "Service"], kinds(SETS.objs["minimal"])
    assert kinds(SETS.objs["default"]) == ["ConfigMap", "Deployment", "Pod", "PodDisruptionBudget",
                                           "Service", "Service", "ServiceAccount"], kinds(SETS.objs["default"])
    prod = SETS.objs["production"]
    assert kinds(prod) == ["ConfigMap", "Deployment", "HTTPRoute", "HorizontalPodAutoscaler", "Ingress",
                           "NetworkPolicy", "Pod", "PodDisruptionBudget", "PrometheusRule", "Service",
                           "Service", "ServiceAccount", "ServiceMonitor"], kinds(prod)
    dep = one(prod, "Deployment")
    assert "replicas" not in dep["spec"], "with an HPA the Deployment must not set replicas"
    hpa = one(prod, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 20
    assert one(prod, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    spec = dep["spec"]["template"]["spec"]
    assert [t["topologyKey"] for t in spec["topologySpreadConstraints"]] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(t["whenUnsatisfiable"] == "DoNotSchedule" for t in spec["topologySpreadConstraints"])
    assert spec["terminationGracePeriodSeconds"] == 45
    sa = one(prod, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "33333333-4444-4555-8666-777777777777"
    assert dep["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    c = botfleet_container(prod)
    assert c["image"] == "registry.example.com/platform/botfleet@sha256:" + "0123456789abcdef" * 4
    assert botfleet_container(SETS.objs["default"])["image"] == "botfleet:" + chart().metadata["appVersion"]
    minimal = one(SETS.objs["minimal"], "Deployment")["spec"]["template"]["spec"]
    assert minimal["serviceAccountName"] == "default" and "topologySpreadConstraints" not in minimal
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    for o in prod:
        assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']} has no namespace"
    return "minimal / default / production object sets; HPA owns replicas; workload identity; digest"


@test
def shutdown_timings_match_the_pod() -> str:
    """terminationGracePeriodSeconds = shutdown.graceSeconds + killMarginSeconds,
    and botfleet's own server.shutdown_delay / shutdown_grace from the same
    values, so the kubelet's SIGKILL never cuts a shutdown within its grace."""
    sets = {name: SETS.objs[name] for name in ("default", "production", "minimal")}
    custom = {"delaySeconds": 15, "graceSeconds": 50, "killMarginSeconds": 10}
    sets["custom"] = objects(render({"shutdown": custom}))
    seen = []
    for name, objs in sets.items():
        values = custom if name == "custom" else \
            {**yaml.safe_load((CHART / "values.yaml").read_text())["shutdown"],
             **(load_values(name) or {}).get("shutdown", {})}
        spec = one(objs, "Deployment")["spec"]["template"]["spec"]
        server = config_of(objs)["server"]
        tgps = spec["terminationGracePeriodSeconds"]
        assert tgps == values["graceSeconds"] + values["killMarginSeconds"], f"{name}: {tgps} vs {values}"
        assert server["shutdown_delay"] == f"{values['delaySeconds']}s", f"{name}: {server}"
        assert server["shutdown_grace"] == f"{values['graceSeconds']}s", f"{name}: {server}"
        assert values["delaySeconds"] < values["graceSeconds"] < tgps
        # The delay is in the process: no preStop hook (the image has no shell to sleep in).
        assert "lifecycle" not in botfleet_container(objs), f"{name}: unexpected lifecycle hook"
        seen.append(f"{name} {values['delaySeconds']}/{values['graceSeconds']}s -> {tgps}s")
    # The kustomize manifests follow the same rule by hand.
    for name, delay, grace in (("kustomize-base", 5, 25), ("kustomize-production", 10, 40)):
        objs = SETS.objs[name]
        server = config_of(objs)["server"]
        assert server.get("shutdown_delay", "5s") == f"{delay}s" and server.get("shutdown_grace", "25s") == f"{grace}s", server
        tgps = one(objs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert tgps == grace + 5, f"{name}: terminationGracePeriodSeconds {tgps}, shutdown_grace {grace}s"
    return "terminationGracePeriodSeconds = grace + margin; delay/grace in botfleet.toml: " + "; ".join(seen)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@test
def selectors_pick_only_botfleet_pods() -> str:
    checked = 0
    for name, objs in SETS.objs.items():
        pods = [(o["kind"], o["metadata"]["labels"]) for o in objs if o["kind"] == "Pod"]
        pods += [("Deployment", o["spec"]["template"]["metadata"]["labels"]) for o in objs if o["kind"] == "Deployment"]
        selectors = [(f"Service/{o['metadata']['name']}", o["spec"]["selector"]) for o in objs if o["kind"] == "Service"]
        selectors += [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["selector"]["matchLabels"])
                      for o in objs if o["kind"] == "PodDisruptionBudget"]
        selectors += [(f"NetworkPolicy/{o['metadata']['name']}", o["spec"]["podSelector"]["matchLabels"])
                      for o in objs if o["kind"] == "NetworkPolicy"]
        dep = one(objs, "Deployment")
        assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
        for what, sel in selectors:
            matched = [kind for kind, labels in pods if selects(sel, labels)]
            # A helm test pod behind a Service would receive Teams' traffic.
            assert matched == ["Deployment"], f"{name}: {what} selects {matched}, want only the Deployment's pods"
            checked += 1
    # The NetworkPolicy lets the helm test pod reach the public port.
    prod = SETS.objs["production"]
    test_labels = one(prod, "Pod")["metadata"]["labels"]
    public_from = one(prod, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert any(selects(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), test_labels) for p in public_from)
    return f"{checked} selectors (Services, PodDisruptionBudget, NetworkPolicy) select the botfleet pods and nothing else"


@test
def prometheus_rules_are_well_formed() -> str:
    # The chart ships deploy/observability/alerts.yaml (the one place the alert
    # rules are kept) as files/alerts.yaml: Helm reads only the chart's files.
    source = REPO / "deploy/observability/alerts.yaml"
    copy = CHART / "files/alerts.yaml"
    assert copy.read_text() == source.read_text(), \
        f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}: cp {source.relative_to(REPO)} {copy.relative_to(REPO)}"
    shipped = [r for g in yaml.safe_load(source.read_text())["groups"] for r in g["rules"]]
    rule = one(SETS.objs["production"], "PrometheusRule")
    rules = rule["spec"]["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    for r in shipped:
        got = by_name.get(r["alert"])
        assert got is not None, f"alert {r['alert']} of {source.name} is not in the PrometheusRule"
        assert {k: v for k, v in got.items() if k != "expr"} == {k: v for k, v in r.items() if k != "expr"}, r["alert"]
        # Only the selector was added: removing it gives the file's expression back.
        sel = f'job="{RELEASE}-admin", namespace="{NAMESPACE}"'
        assert got["expr"].replace("{" + sel + "}", "").replace(sel + ", ", "") == r["expr"], got["expr"]
    assert len(rules) == len(shipped) + 2, "the chart's own two up{} alerts plus the file's"
    for r in rules:
        assert r["alert"].startswith("Botfleet") and r["labels"]["severity"] in ("critical", "warning", "info")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        expr = r["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{r['alert']}: {expr}"
        assert f'job="{RELEASE}-admin", namespace="{NAMESPACE}"' in expr, f"{r['alert']} selects no job: {expr}"
        # Every botfleet series is scoped, not only the first one.
        for m in re.finditer(r"\b(botfleet_[a-z0-9_]+)(.)", expr):
            assert m.group(2) == "{" and expr[m.end():].startswith(f'job="{RELEASE}-admin"'), f"{r['alert']}: unscoped {m.group(1)} in {expr}"
    extra = {"alert": "Mine", "expr": "vector(1)", "labels": {"severity": "info"}}
    more = one(objects(render({"prometheusRule": {"enabled": True, "extraRules": [extra]}})), "PrometheusRule")
    assert more["spec"]["groups"][0]["rules"][-1] == extra
    return (f"{len(rules)} alerts ({len(shipped)} from deploy/observability/alerts.yaml, the copy identical), "
            "each with severity, summary, description and every botfleet series scoped to the admin job")


# --- documentation ---------------------------------------------------------------------

def leaf_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("config",) and not path.endswith(("Context", "resources")):
            out.extend(leaf_paths(v, path + "."))
        else:
            out.append(path)
    return out


@test
def readme_lists_every_value() -> str:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if f"`{p}`" not in readme]
    assert not missing, "helm/botfleet/README.md does not list: " + ", ".join(missing)
    props = json.loads((CHART / "values.schema.json").read_text())["properties"]
    undeclared = [k for k in values if k not in props]
    assert not undeclared, f"values.schema.json does not declare {undeclared}"
    return f"{len(leaf_paths(values))} values in the README table; every top-level value in the schema"


# --- compose ---------------------------------------------------------------------------

@test
def compose_stack_is_consistent() -> str:
    path = REPO / "deploy/compose.yaml"
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    assert set(services) == {"redis", "botfleet", "sim", "send"}, set(services)
    bf = services["botfleet"]
    assert bf["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (path.parent / bf["build"]["context"] / bf["build"]["dockerfile"]).is_file()
    assert bf["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("botfleet", "sim", "send"):
        s = services[name]
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"] and s["user"] == "65532:65532", name
        assert "no-new-privileges:true" in s["security_opt"], name
    for name in ("sim", "send"):
        # botfleet-sim listens on loopback only: it must share botfleet's network namespace.
        assert services[name]["network_mode"] == "service:botfleet", name
        assert services[name]["entrypoint"] == ["/usr/local/bin/botfleet-sim"]
    assert all(p.startswith("127.0.0.1:") for p in bf["ports"]), "published on every interface"
    mount = next(v for v in bf["volumes"] if v.endswith(":/etc/botfleet/botfleet.toml:ro"))
    cfg_file = path.parent / mount.split(":")[0]
    cfg = tomllib.loads(cfg_file.read_text())
    assert cfg["store"] == {"backend": "redis", "redis_urls": ["redis://redis:6379"]}
    assert cfg["server"]["listen"].startswith("0.0.0.0:") and cfg["server"]["admin_listen"].startswith("0.0.0.0:")
    ports = {p.split(":")[-1] for p in bf["ports"]}
    assert ports == {cfg["server"]["listen"].split(":")[1], cfg["server"]["admin_listen"].split(":")[1]}
    sim_args = services["sim"]["command"]
    app_id, secret = sim_args[sim_args.index("--bot") + 1].split(":")
    bot = cfg["bots"][0]
    assert bot["app_id"] == app_id and bot["cloud"] == "sim"
    secret_file = compose["secrets"]["echo-app-password"]["file"]
    assert (path.parent / secret_file).read_text() == secret, "the bot's secret file differs from the sim's"
    assert bot["app_password_file"] == "/run/secrets/echo-app-password"
    sim_port = sim_args[sim_args.index("--port") + 1]
    assert cfg["clouds"][0]["openid_metadata_url"].startswith(f"http://127.0.0.1:{sim_port}/")
    send = services["send"]["command"]
    assert send[send.index("--app-id") + 1] == app_id and send[send.index("--sim") + 1].endswith(f":{sim_port}")
    validated = "parsed and cross-checked"
    for cmd in (["docker", "compose"], ["podman", "compose"]):
        if shutil.which(cmd[0]) and run([*cmd, "version"]).returncode == 0:
            p = run([*cmd, "-f", str(path), "config", "--quiet"])
            assert p.returncode == 0, f"{' '.join(cmd)} config: {p.stderr}"
            validated += f"; {' '.join(cmd)} config passes"
            break
    else:
        validated += " (no docker compose / podman compose v2 here to run `config`)"
    return validated


# --- with a botfleet binary --------------------------------------------------------------

def botfleet_bin() -> str:
    b = os.environ.get("BOTFLEET_BIN", "")
    if not b or not os.access(b, os.X_OK):
        raise Skip("no botfleet binary (set BOTFLEET_BIN; scripts/chart-test finds a built one)")
    return b


def check_config(b: str, toml_text: str, tmp: Path, label: str) -> None:
    """`botfleet check-config` on a configuration written for a pod, with the
    secret files it names created (random) under tmp and the environment the
    pod would have."""
    secrets_dir = tmp / f"{label}-secrets"
    secrets_dir.mkdir()
    for prefix in (SECRETS_DIR, "/run/secrets/"):
        for name in set(re.findall(re.escape(prefix) + r"([a-zA-Z0-9][-_a-zA-Z0-9.]*[a-zA-Z0-9])", toml_text)):
            value = "redis://:" + secrets.token_urlsafe(20) + "@127.0.0.1:6379\n" if name == "redis-url" \
                else secrets.token_urlsafe(40)
            (secrets_dir / name).write_text(value)
        toml_text = toml_text.replace(prefix, str(secrets_dir) + "/")
    token = tmp / f"{label}-federated-token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    f = tmp / f"{label}.toml"
    f.write_text(toml_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTFLEET")}
    env.update({"AZURE_FEDERATED_TOKEN_FILE": str(token),
                "AZURE_CLIENT_ID": "33333333-4444-4555-8666-777777777777",
                "AZURE_TENANT_ID": "99999999-8888-4777-8666-555555555555",
                "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"})
    p = run([b, "check-config", "--config", str(f)], env=env)
    assert p.returncode == 0, f"botfleet check-config refuses the {label} configuration:\n{p.stderr.strip()}"


@test
def botfleet_accepts_every_generated_configuration() -> str:
    b = botfleet_bin()
    texts = {name: next(o for o in SETS.objs[name] if o["kind"] == "ConfigMap")["data"]["botfleet.toml"]
             for name in ("default", "production", "minimal", "kustomize-base", "kustomize-production")}
    texts["compose"] = (REPO / "deploy/compose/botfleet.toml").read_text()
    texts["image"] = (REPO / "deploy/image/botfleet.toml").read_text()
    with tempfile.TemporaryDirectory() as d:
        for name, text in texts.items():
            check_config(b, text, Path(d), name)
    return "botfleet check-config passes " + ", ".join(texts)


@test
def schema_knows_every_botfleet_section() -> str:
    b = botfleet_bin()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTFLEET")}
    p = run([b, "check-config"], env=env)
    assert p.returncode == 0, f"botfleet check-config on the defaults: {p.stderr}"
    effective = set(tomllib.loads(p.stdout.split("# effective configuration", 1)[1].split("\n", 1)[1]))
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    missing = sorted(effective - set(schema))
    assert not missing, f"values.schema.json refuses botfleet sections {missing}: add them to config's properties"
    # Empty lists (clouds, bots) are left out of the effective configuration:
    # ask botfleet whether it accepts each remaining section, empty.
    with tempfile.TemporaryDirectory() as d:
        for section in sorted(set(schema) - effective):
            probe = Path(d) / f"{section}.toml"
            probe.write_text(f"{section} = []\n" if schema[section]["type"] == "array" else f"[{section}]\n")
            q = run([b, "check-config", "--config", str(probe)], env=env)
            assert q.returncode == 0, f"values.schema.json accepts config.{section}, botfleet does not: {q.stderr.strip()}"
    return f"config sections {sorted(schema)}: each one botfleet has, and no other"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@test
def alert_rules_use_metrics_botfleet_exposes() -> str:
    b = botfleet_bin()
    rule = one(SETS.objs["production"], "PrometheusRule")
    exprs = " ".join(r["expr"] for r in rule["spec"]["groups"][0]["rules"])
    used = sorted(set(re.findall(r"\b(botfleet_[a-z0-9_]+)\b", exprs)))
    assert used, "the rules use no botfleet metric"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        public, admin = free_port(), free_port()
        cfg = tmp / "metrics.toml"
        cfg.write_text(f'[server]\nlisten = "127.0.0.1:{public}"\nadmin_listen = "127.0.0.1:{admin}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTFLEET")}
        proc = subprocess.Popen([b, "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            port = admin
            deadline = time.time() + 30
            text = ""
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        text = r.read().decode()
                    break
                except OSError:
                    time.sleep(0.2)
            assert text, "botfleet's /metrics never answered"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    exposed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    # OpenTelemetry's Prometheus exporter shows a counter only after its first
    # event (a Redis error, a refused token, ...), which this bare botfleet
    # never has: those must be instruments of the one metrics registry (the
    # exporter adds _total to counters). crates/server/tests/telemetry_metrics.rs
    # scrapes them live with Redis, bots and faults.
    # (the exporter adds _total to counters and the unit, e.g. _seconds).
    registry = "".join(p.read_text() for d in ("crates/telemetry/src", "crates/server/src")
                       for p in (REPO / d).rglob("*.rs"))

    def registered(m: str) -> bool:
        names = {m, m.removesuffix("_total"), m.removesuffix("_total").removesuffix("_seconds")}
        return any(f'"{n}"' in registry for n in names)
    later = [m for m in used if m not in exposed]
    unknown = [m for m in later if not registered(m)]
    assert not unknown, f"alert rules use metrics botfleet neither exposes nor registers: {unknown}"
    return (f"{len(used)} metrics used by the alerts: {len(used) - len(later)} in a bare botfleet's /metrics, "
            f"{len(later)} registered instruments shown after their first event")


# --- main ---------------------------------------------------------------------------------

def main() -> int:
    global SETS
    # The Go SDK logs merge notes to stderr (e.g. for the schema's bad values).
    helm.disable_logging()
    started = time.time()
    passed = failed = skipped = 0
    with tempfile.TemporaryDirectory(prefix="botfleet-chart-test.") as d:
        work = Path(d)
        try:
            SETS = Sets(work)
        except Exception:
            print("FAILED rendering the manifest sets:\n" + traceback.format_exc())
            print("chart-tests: 0 passed, 1 failed")
            return 1
        if os.environ.get("KEEP_RENDERED"):
            keep = Path(os.environ["KEEP_RENDERED"])
            keep.mkdir(parents=True, exist_ok=True)
            for f in SETS.files.values():
                shutil.copy(f, keep / f.name)
        only = sys.argv[1:]
        for name, fn in TESTS:
            if only and not any(o in name for o in only):
                continue
            t0 = time.time()
            try:
                detail = fn()
                passed += 1
                print(f"ok      {name} ({time.time() - t0:.1f} s): {detail}")
            except Skip as e:
                skipped += 1
                print(f"SKIPPED {name}: {e}")
            except AssertionError as e:
                failed += 1
                print(f"FAILED  {name}: {e}")
            except Exception:
                failed += 1
                print(f"FAILED  {name}:\n{traceback.format_exc()}")
    print(f"chart tests took {time.time() - started:.0f} s")
    print(f"chart-tests: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
