#!/usr/bin/env bash
# Validates the rendered manifests against the Kubernetes API schema, offline:
#   - renders k8s/base, k8s/overlays/shadow and k8s/monitoring with kubectl kustomize (or
#     kustomize build);
#   - every built-in object (Deployment, Service, ConfigMap, PDB, HPA) goes through
#     kubernetes-validate --strict (unknown fields are errors) for the oldest Kubernetes this
#     base supports (1.30: native sidecars, the preStop sleep action, the HPA's
#     ContainerResource metric) and the newest one the installed kubernetes-validate ships.
#     Its schemas are in the package: no network, no cluster. An object without a schema
#     fails (a typo in apiVersion or kind would otherwise pass with a warning);
#   - custom resources (PodMonitor, PrometheusRule of the Prometheus Operator) have no
#     built-in schema: they are checked against a loose schema here (the fields this repo
#     uses, their types, the Operator's duration format, and no unknown fields in rule
#     groups and rules);
#   - a self-test: a copy of the Deployment with a misspelt field must fail, so a validator
#     that passes everything cannot go unnoticed.
# Usage: k8s/schema.sh. Needs python3 with PyYAML and kubernetes-validate
# (python3 -m pip install kubernetes-validate; k8s/ci.sh installs both).
# Environment: K8S_MIN_VERSION (default 1.30.0). Exits non-zero on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v kubectl >/dev/null 2>&1; then
    kustomize_cmd="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
    kustomize_cmd="kustomize build"
else
    echo "FAIL: neither kubectl nor kustomize on the PATH: cannot render the kustomizations"
    exit 2
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    echo "FAIL: kubernetes-validate is not installed (python3 -m pip install kubernetes-validate)"
    exit 2
fi

python3 - "$here" "$kustomize_cmd" "${K8S_MIN_VERSION:-1.30.0}" <<'PY'
import copy, os, re, subprocess, sys, tempfile
import jsonschema
import yaml
from kubernetes_validate import utils as kv

K8S, KUSTOMIZE, MIN_VERSION = sys.argv[1], sys.argv[2].split(), sys.argv[3]
versions = [MIN_VERSION]
if kv.latest_version() != MIN_VERSION:
    versions.append(kv.latest_version())
failures = []

def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)

# --- Loose schemas for the Prometheus Operator's custom resources ------------------------
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object", "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"}, "labels": STRMAP, "annotations": STRMAP,
    },
}
SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": STRMAP, "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"],
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}},
    "additionalProperties": False,
}
def cr(kind, spec):
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                       "metadata": METADATA, "spec": spec},
        "additionalProperties": False,
    }
CR_SCHEMAS = {
    "PodMonitor": cr("PodMonitor", {
        "type": "object", "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "anyOf": [{"required": ["port"]}, {"required": ["portNumber"]}, {"required": ["targetPort"]}],
                "properties": {
                    "port": {"type": "string"}, "portNumber": {"type": "integer"},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": {"type": "string", "pattern": DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": DURATION},
                    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": {"type": "object"}},
                    "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                }}},
        }}),
    "PrometheusRule": cr("PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": {"type": "string", "pattern": DURATION},
                "query_offset": {"type": "string", "pattern": DURATION},
                "limit": {"type": "integer"}, "labels": STRMAP,
                "partial_response_strategy": {"type": "string"},
                "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                    "properties": {
                        "record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": ["string", "integer"]},
                        "for": {"type": "string", "pattern": DURATION},
                        "keep_firing_for": {"type": "string", "pattern": DURATION},
                        "labels": STRMAP, "annotations": STRMAP,
                    }}},
            }}}},
    }),
}

def kn(d):
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"

def validate_builtin(docs, where):
    """kubernetes-validate's CLI on the built-in objects; returns False on any problem."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
        path = f.name
    try:
        cmd = ["kubernetes-validate", "--strict", "--quiet"] + [a for v in versions for a in ("-k", v)] + [path]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:  # installed with --target: no console script on the PATH
            r = subprocess.run([sys.executable, "-m", "kubernetes_validate"] + cmd[1:], capture_output=True, text=True)
        out = (r.stdout + r.stderr).replace(path, where)
        problems = [l for l in out.splitlines() if l.strip()]
        return r.returncode == 0 and not problems, problems
    finally:
        os.unlink(path)

renders = {}
for d in ("base", "overlays/shadow", "monitoring"):
    r = subprocess.run(KUSTOMIZE + [os.path.join(K8S, d)], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{' '.join(KUSTOMIZE)} k8s/{d}: {r.stderr.strip()}")
        continue
    renders[d] = [x for x in yaml.safe_load_all(r.stdout) if x]

for d, docs in renders.items():
    where = f"k8s/{d} (rendered)"
    builtin = [x for x in docs if not str(x.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
    custom = [x for x in docs if x not in builtin]
    if builtin:
        good, problems = validate_builtin(builtin, where)
        if good:
            print(f"ok: {where}: {', '.join(kn(x) for x in builtin)} valid against Kubernetes {', '.join(versions)} (kubernetes-validate --strict)")
        else:
            fail(f"{where} against Kubernetes {', '.join(versions)}:")
            for p in problems:
                print("    " + p)
    for x in custom:
        schema = CR_SCHEMAS.get(x.get("kind"))
        if schema is None:
            fail(f"{where}: {kn(x)}: a custom resource this script has no schema for")
            continue
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(x), key=lambda e: list(e.path))
        if errors:
            for e in errors:
                fail(f"{where}: {kn(x)}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        else:
            print(f"ok: {where}: {kn(x)} (custom resource, no built-in schema) matches the loose schema in k8s/schema.sh")

# Self-test: the validator must reject a misspelt field.
if "base" in renders:
    bad = copy.deepcopy([x for x in renders["base"] if x.get("kind") == "Deployment"])
    if bad:
        bad[0]["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
        good, _ = validate_builtin(bad, "self-test")
        if good:
            fail("self-test: kubernetes-validate accepted a Deployment with a misspelt field (restartPolicyy)")
        else:
            print("ok: self-test: a misspelt field in the Deployment is rejected")

sys.exit(1 if failures else 0)
PY
status=$?
if [ "$status" -eq 0 ]; then
    echo "k8s/schema.sh: all checks passed"
else
    echo "k8s/schema.sh: FAILED"
fi
exit "$status"
