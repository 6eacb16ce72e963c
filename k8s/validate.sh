#!/usr/bin/env bash
# Offline checks of the k8s/ files (no cluster needed):
#   - every YAML file parses; the kustomizations build (with kubectl or kustomize, if present)
#     and the shadow overlay changes nothing but the policy ConfigMap;
#   - the dashboard is valid JSON, uses the ${datasource} variable everywhere, and every
#     metric, label and label value its queries use is in the metrics contract below (the
#     same for the PrometheusRule; PromQL syntax too when the promql_parser module is
#     installed); the contract's metrics are all written by src/telemetry/ and its reason
#     labels are exactly src/stages/reason.rs's;
#   - the manifests agree with the policy (sloguard a native sidecar: an init container with
#     restartPolicy Always; ports, config path, no subPath, preStop and grace period vs drain
#     timeout, replicas_hint vs HPA, SLO thresholds in the alerts vs the routes' SLOs,
#     worker ports in the app container, Unix-socket workers in a volume both containers
#     mount),
#     the policy uses only keys documented in config/README.md, and the shadow overlay's
#     policy is the base policy with its modes set to "shadow";
#   - with a sloguard binary as $1: `sloguard check` on both policies.
# Usage: k8s/validate.sh [path/to/sloguard]. Exits non-zero on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sloguard="${1:-}"
status=0

if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "PyYAML missing: installing it into a temporary directory"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if python3 -m pip install --quiet --disable-pip-version-check --target "$tmp" pyyaml >/dev/null 2>&1; then
        export PYTHONPATH="$tmp${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "FAIL: PyYAML is not installed and pip could not install it (apt-get install python3-yaml)"
        exit 2
    fi
fi

# kustomize builds, rendered to files for the Python checks.
builds="$(mktemp -d)"
trap 'rm -rf "$builds" ${tmp:+"$tmp"}' EXIT
if command -v kubectl >/dev/null 2>&1; then
    kustomize_cmd=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    kustomize_cmd=(kustomize build)
else
    kustomize_cmd=()
    echo "SKIP: kustomize builds (neither kubectl nor kustomize on the PATH)"
fi
if [ ${#kustomize_cmd[@]} -gt 0 ]; then
    for dir in base overlays/shadow monitoring; do
        out="$builds/$(echo "$dir" | tr / _).yaml"
        if "${kustomize_cmd[@]}" "$here/$dir" >"$out" 2>"$out.err"; then
            echo "ok: ${kustomize_cmd[*]} k8s/$dir"
        else
            echo "FAIL: ${kustomize_cmd[*]} k8s/$dir:"
            sed 's/^/    /' "$out.err"
            rm -f "$out"
            status=1
        fi
    done
fi

python3 - "$here" "$builds" <<'PY' || status=1
import glob, json, math, os, re, sys, tomllib
import yaml

K8S, BUILDS = sys.argv[1], sys.argv[2]
REPO = os.path.dirname(K8S)
failures = []

def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)

def ok(msg):
    print("ok: " + msg)

def rel(p):
    return os.path.relpath(p, REPO)

# --- The metrics contract with src/telemetry/ ----------------------------------------------
# metric -> its labels; histograms also have _bucket (with le), _sum and _count.
METRICS = {
    "sloguard_requests_total": {"route", "status_class", "worker"},
    "sloguard_request_duration_seconds": {"route", "outcome"},
    "sloguard_shed_total": {"route", "reason"},
    "sloguard_rejections_total": {"route", "reason"},
    "sloguard_ratelimit_decisions_total": {"rule", "result"},
    "sloguard_ratelimit_redis_errors_total": set(),
    "sloguard_ratelimit_fallback_active": set(),
    "sloguard_worker_state": {"worker", "state"},
    "sloguard_worker_in_flight": {"worker"},
    "sloguard_worker_concurrency_limit": {"worker"},
    "sloguard_worker_latency_seconds": {"worker"},
    "sloguard_worker_loop_lag_seconds": {"worker"},
    "sloguard_worker_probe_seconds": {"worker"},
    "sloguard_worker_ejections_total": {"worker"},
    "sloguard_admission_queue_depth": set(),
    "sloguard_admission_wait_seconds": set(),
    "sloguard_retries_total": set(),
    "sloguard_hedges_total": {"result"},
    "sloguard_config_reloads_total": {"result"},
    "sloguard_config_info": {"version"},
    "sloguard_requests_over_slo_total": {"route", "slo"},
    "sloguard_route_slo_target_seconds": {"route", "slo"},
    "sloguard_loop_lateness_seconds": set(),
    "sloguard_loop_held_up_seconds_total": {"thread"},
    "sloguard_client_connections": set(),
    "sloguard_client_connections_max": set(),
}
HISTOGRAMS = {"sloguard_request_duration_seconds", "sloguard_admission_wait_seconds"}
DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.4, 0.5, 1, 2.5, 5, 10, 30]
# Labels added by the scrape (PodMonitor / kubernetes_sd relabelling), on every series.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint", "service"}
SHED_REASONS = {"deadline_unreachable", "queue_timeout", "queue_full", "evicted", "priority"}
REJECT_REASONS = {
    "body_too_large", "url_too_long", "headers_too_large", "bad_chunked_body", "bad_host",
    "body_timeout", "invalid_json", "json_limit", "rate_limited", "missing_rate_limit_key",
    "rate_limit_unavailable", "upstream_unavailable", "local_resources", "upstream_timeout",
    "upstream_error", "bad_request", "http_error", "internal_error", "header_timeout",
    "too_many_connections", "bad_proxy_protocol",
}

# --- Policies ----------------------------------------------------------------------------
base_policy_path = os.path.join(K8S, "base/policy/sloguard.toml")
shadow_policy_path = os.path.join(K8S, "overlays/shadow/policy/sloguard.toml")
policies = {}
for p in (base_policy_path, shadow_policy_path):
    try:
        with open(p, "rb") as f:
            policies[p] = tomllib.load(f)
        ok(f"{rel(p)} is TOML")
    except Exception as e:
        fail(f"{rel(p)}: {e}")
base = policies.get(base_policy_path, {})
shadow = policies.get(shadow_policy_path, {})

ENUMS = {
    "status_class": {"2xx", "3xx", "4xx", "5xx"},
    "outcome": {"ok", "error", "shed", "limited", "rejected"},
    "state": {"healthy", "suspect", "ejected"},
    "slo": {"p95", "p99"},
    "result": {"ok", "error", "allowed", "limited", "shadow_denied", "near_limit", "launched", "won"},
    "reason": SHED_REASONS | REJECT_REASONS,
    "route": {r.get("name") for r in base.get("route", [])} | {"default"},
    "rule": {r.get("name") for r in base.get("ratelimit", {}).get("rule", [])},
    "worker": {"none"} | {str(i) for i in range(1, len(base.get("upstream", {}).get("workers", [])) + 1)},
    # sloguard_request_duration_seconds buckets, as the exporter ("1") or Prometheus 3 ("1.0")
    # writes them.
    "le": {"%g" % b for b in DURATION_BUCKETS} | {repr(float(b)) for b in DURATION_BUCKETS} | {"+Inf"},
}

def documented_keys():
    """Every identifier inside backticks in config/README.md."""
    path = os.path.join(REPO, "config/README.md")
    if not os.path.exists(path):
        return None
    words = set()
    for span in re.findall(r"`([^`]*)`", open(path).read()):
        for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span):
            words.add(w)
    return words

def leaf_keys(d, prefix=""):
    for k, v in d.items():
        yield prefix + k, k
        if isinstance(v, dict):
            yield from leaf_keys(v, prefix + k + ".")
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, dict):
                    yield from leaf_keys(item, prefix + k + "[].")

documented = documented_keys()
for p, pol in policies.items():
    if documented is None:
        print("SKIP: config/README.md not found; keys not checked against it")
        break
    unknown = sorted({path for path, k in leaf_keys(pol) if k not in documented})
    if unknown:
        fail(f"{rel(p)}: keys not documented in config/README.md: {', '.join(unknown)}")
    else:
        ok(f"{rel(p)}: every key is documented in config/README.md")

def with_modes(pol, mode):
    pol = json.loads(json.dumps(pol))
    pol.setdefault("guard", {})["mode"] = mode
    for rule in pol.get("ratelimit", {}).get("rule", []):
        rule["mode"] = mode
    return pol

if base and shadow:
    if base.get("guard", {}).get("mode", "enforce") != "enforce":
        fail(f"{rel(base_policy_path)}: [guard] mode must be \"enforce\" in the base")
    if with_modes(base, "shadow") != shadow:
        fail(f"{rel(shadow_policy_path)} is not {rel(base_policy_path)} with every mode set to \"shadow\": edit them together")
    else:
        ok("the shadow policy is the base policy with every mode set to \"shadow\"")

listen = base.get("listen", {})
def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])
if base:
    if not str(listen.get("admin", "")).startswith("0.0.0.0:"):
        fail("base policy: listen.admin must bind 0.0.0.0 in a pod (probes and scrapes use the pod IP)")
    bad = [w for w in base.get("upstream", {}).get("workers", []) if not w.startswith(("127.0.0.1:", "unix:/"))]
    if bad:
        fail(f"base policy: workers must be on 127.0.0.1 or a Unix socket (same pod): {bad}")
    if not base.get("ratelimit", {}).get("redis_url"):
        fail("base policy: ratelimit.redis_url is not set")

# --- YAML files --------------------------------------------------------------------------
docs = {}
for path in sorted(glob.glob(os.path.join(K8S, "**/*.yaml"), recursive=True)):
    try:
        loaded = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{rel(path)}: {e}")
        continue
    # promtool's rule unit tests (monitoring/tests/) are not Kubernetes objects.
    is_manifest = not os.path.relpath(path, K8S).startswith("monitoring/tests/")
    for d in loaded:
        if is_manifest and (not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d):
            fail(f"{rel(path)}: a document without apiVersion and kind")
    docs[os.path.relpath(path, K8S)] = loaded
ok(f"{len(docs)} YAML files parse")

def doc(name, kind):
    for d in docs.get(name, []):
        if d.get("kind") == kind:
            return d
    fail(f"k8s/{name}: no {kind}")
    return {}

# --- Manifests vs policy ------------------------------------------------------------------
dep = doc("base/deployment.yaml", "Deployment")
pod = dep.get("spec", {}).get("template", {}).get("spec", {})
# sloguard is a native sidecar: an init container with restartPolicy Always (Kubernetes
# >= 1.29), the app a regular container.
containers = {c.get("name"): c for c in pod.get("containers", [])}
init_containers = {c.get("name"): c for c in pod.get("initContainers", [])}
sg, app = init_containers.get("sloguard"), containers.get("app")
cm_gen = doc("base/configmap.yaml", "ConfigMapGenerator")
svc = doc("base/service.yaml", "Service")
hpa = doc("base/hpa.yaml", "HorizontalPodAutoscaler")
doc("base/pdb.yaml", "PodDisruptionBudget")
kust = doc("base/kustomization.yaml", "Kustomization")
over = doc("overlays/shadow/kustomization.yaml", "Kustomization")

def check(cond, msg):
    if not cond:
        fail(msg)
    return cond

failed_before = len(failures)
if "sloguard" in containers:
    fail("base/deployment.yaml: sloguard is under `containers`; it must be a native sidecar (under `initContainers`, restartPolicy: Always)")
if sg is not None and sg.get("restartPolicy") != "Always":
    fail("base/deployment.yaml: the sloguard init container needs `restartPolicy: Always` (a native sidecar); without it the pod waits for it to exit before starting the app")
if sg is None or app is None:
    fail("base/deployment.yaml: the init container (native sidecar) `sloguard` and the container `app` expected")
elif base:
    ports = {p.get("name"): p.get("containerPort") for p in sg.get("ports", [])}
    check(ports.get("proxy") == port_of(listen.get("proxy", ":0")), "sloguard container port `proxy` != listen.proxy port")
    check(ports.get("admin") == port_of(listen.get("admin", ":0")), "sloguard container port `admin` != listen.admin port")
    args = sg.get("args", [])
    cfg = args[args.index("--config") + 1] if "--config" in args else None
    check(cfg is not None and "run" in args, "sloguard args: `run --config FILE` expected")
    vols = {v.get("name"): v for v in pod.get("volumes", [])}
    cm_name = cm_gen.get("metadata", {}).get("name")
    mounts = [m for m in sg.get("volumeMounts", []) if vols.get(m.get("name"), {}).get("configMap", {}).get("name") == cm_name]
    if check(len(mounts) == 1, f"sloguard: one volumeMount of the ConfigMap {cm_name} expected"):
        m = mounts[0]
        check("subPath" not in m and "subPathExpr" not in m, "sloguard: the policy ConfigMap is mounted with subPath: hot reload would never see an update")
        files = [f.split("=", 1)[0] for f in cm_gen.get("files", [])]
        check(cfg is not None and os.path.dirname(cfg) == m.get("mountPath").rstrip("/") and os.path.basename(cfg) in files,
              f"--config {cfg} is not a file of the ConfigMap mounted at {m.get('mountPath')}")
    check(cm_gen.get("options", {}).get("disableNameSuffixHash") is True, "base/configmap.yaml: disableNameSuffixHash must be true (in-place reload)")
    for f in cm_gen.get("files", []):
        check(os.path.exists(os.path.join(K8S, "base", f.split("=", 1)[-1])), f"base/configmap.yaml: {f} not found")
    for g in over.get("configMapGenerator", []):
        check(g.get("name") == cm_name and g.get("behavior") == "replace", "shadow overlay: its configMapGenerator must replace " + str(cm_name))
        for f in g.get("files", []):
            check(os.path.exists(os.path.join(K8S, "overlays/shadow", f.split("=", 1)[-1])), f"shadow overlay: {f} not found")
    check(cm_gen.get("metadata", {}).get("name") is not None and "configmap.yaml" in kust.get("generators", []), "base/kustomization.yaml must list configmap.yaml under generators")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        g = sg.get(probe, {}).get("httpGet", {})
        check(g.get("path") == path and g.get("port") in ("admin", ports.get("admin")), f"sloguard {probe}: GET {path} on the admin port expected")
    sc = sg.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and "ALL" in sc.get("capabilities", {}).get("drop", [])
          and (sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")),
          "sloguard securityContext: runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL expected")
    res = sg.get("resources", {})
    check(all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")), "sloguard: cpu and memory requests and limits expected")
    def prestop(c):
        ps = c.get("lifecycle", {}).get("preStop", {})
        if "sleep" in ps:
            return ps["sleep"].get("seconds", 0)
        cmd = ps.get("exec", {}).get("command", [])
        return int(cmd[-1]) if cmd and cmd[-1].isdigit() else 0
    drain_s = math.ceil(listen.get("drain_timeout_ms", 10000) / 1000)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(prestop(sg) > 0, "sloguard: a preStop sleep expected (endpoints update before SIGTERM)")
    check(grace > prestop(sg) + drain_s, f"terminationGracePeriodSeconds {grace} must exceed sloguard's preStop {prestop(sg)} s + drain_timeout {drain_s} s")
    # A native sidecar gets its SIGTERM only after the app has exited, so the app's preStop
    # keeps the workers up through the endpoint-propagation window (sloguard's preStop) and
    # the drain of what sloguard accepted in it; then sloguard's own drain must still fit.
    check(prestop(app) > prestop(sg) + drain_s, f"app preStop {prestop(app)} s must outlast sloguard's preStop {prestop(sg)} s + drain_timeout {drain_s} s (the workers must outlive the drain)")
    check(grace > prestop(app), "terminationGracePeriodSeconds must exceed the app's preStop")
    check(grace > prestop(app) + drain_s, f"terminationGracePeriodSeconds {grace} must exceed the app's preStop {prestop(app)} s + sloguard's drain_timeout {drain_s} s (the sidecar is signalled after the app exits)")
    app_text = json.dumps(app)
    for w in base.get("upstream", {}).get("workers", []):
        if w.startswith("unix:"):
            # A worker's socket file lives in a volume both containers mount.
            sock_dir = os.path.dirname(w[len("unix:"):])
            for name, c in (("app", app), ("sloguard", sg)):
                mounts = [m.get("mountPath", "").rstrip("/") for m in c.get("volumeMounts", [])]
                check(any(sock_dir == m or sock_dir.startswith(m + "/") for m in mounts if m),
                      f"worker {w} (policy): {sock_dir} is not a volume mounted in the {name} container")
            continue
        check(str(port_of(w)) in app_text, f"worker port {port_of(w)} (policy) does not appear in the app container")
    # analytics-backend's flags, when the app is it: worker N on base-port + N - 1.
    app_args = app.get("command", []) + app.get("args", [])
    def flag(name):
        return app_args[app_args.index(name) + 1] if name in app_args[:-1] else None
    if flag("--base-port") is not None:
        n, first = int(flag("--workers") or 4), int(flag("--base-port"))
        want = [f"{flag('--bind') or '127.0.0.1'}:{first + i}" for i in range(n)]
        check(want == base.get("upstream", {}).get("workers", []),
              f"the app's workers ({', '.join(want)}) are not upstream.workers of the policy")
    ann = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    check(ann.get("prometheus.io/port") in (None, str(ports.get("admin"))), "prometheus.io/port must be the admin port")
    tp = [p.get("targetPort") for p in svc.get("spec", {}).get("ports", [])]
    check(tp and all(t in ("proxy", ports.get("proxy")) for t in tp), "the Service must target sloguard's proxy port only")
    # A named targetPort resolves against native sidecars (init containers) only from
    # Kubernetes 1.32 (kubernetes/kubernetes#127958); before that the Service gets no endpoints.
    check(all(t == ports.get("proxy") for t in tp), "the Service's targetPort must be the proxy port's number, not its name (sloguard is an init container)")
    hint = base.get("ratelimit", {}).get("replicas_hint", 1)
    check(hpa.get("spec", {}).get("minReplicas") == hint, f"hpa minReplicas != ratelimit.replicas_hint ({hint})")
    if "replicas" in dep.get("spec", {}):
        check(dep["spec"]["replicas"] == hint, f"deployment replicas != ratelimit.replicas_hint ({hint})")
    if len(failures) == failed_before:
        ok("the manifests agree with the policy")

# --- Rendered kustomizations -------------------------------------------------------------
def rendered(name):
    p = os.path.join(BUILDS, name + ".yaml")
    if not os.path.exists(p):
        return None
    return [d for d in yaml.safe_load_all(open(p)) if d]
rb, rs = rendered("base"), rendered("overlays_shadow")
if rb is not None and rs is not None:
    key = lambda d: (d["kind"], d["metadata"]["name"])
    mb, ms = {key(d): d for d in rb}, {key(d): d for d in rs}
    diff = sorted(k for k in set(mb) | set(ms) if mb.get(k) != ms.get(k))
    if diff != [("ConfigMap", "sloguard-policy")]:
        fail(f"the shadow overlay should change only the policy ConfigMap; differs: {diff}")
    else:
        ok("the shadow overlay changes only the policy ConfigMap")
    rendered_cm = ms[("ConfigMap", "sloguard-policy")]["data"].get("sloguard.toml", "")
    if tomllib.loads(rendered_cm) != shadow:
        fail("the shadow overlay's rendered ConfigMap is not overlays/shadow/policy/sloguard.toml")

# --- PromQL ------------------------------------------------------------------------------
STRING = r'"(?:[^"\\]|\\.)*"'
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(' + STRING + ')')
SELECTOR = re.compile(r'([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}')
ALL_LABELS = set().union(*METRICS.values()) | TARGET_LABELS | {"le"}

def base_metric(name):
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None

def check_promql(where, expr, recorded, allow_recorded):
    """Metric names, label names and enumerated label values of one expression."""
    errors = []
    code = re.sub(STRING, '""', expr)
    code = re.sub(r"\[[^\]]*\]", "", code)  # range and subquery durations
    for name in set(re.findall(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)", code)):
        if name.startswith("sloguard_") and base_metric(name) is None:
            errors.append(f"unknown metric {name}")
        elif ":" in name and (not allow_recorded or name not in recorded):
            errors.append(f"{name} is not a recorded series here")
    for name, body in SELECTOR.findall(expr):
        bm = base_metric(name)
        labels = (METRICS.get(bm, set()) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())) if bm else ALL_LABELS | {"slo_p95_seconds"}
        for label, op, value in MATCHER.findall(body):
            value = value[1:-1]
            if label not in labels:
                errors.append(f"{name} has no label {label}")
            elif label in ENUMS and "$" not in value and ".*" not in value:
                alternatives = value.split("|") if op in ("=~", "!~") else [value]
                if label == "le" and bm != "sloguard_request_duration_seconds" and name.endswith("_bucket"):
                    continue
                for v in alternatives:
                    if v not in ENUMS[label]:
                        errors.append(f"{name}: {label}=\"{v}\" is not a value of {label} ({', '.join(sorted(ENUMS[label]))})")
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", code):
        for label in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", clause):
            if label not in ALL_LABELS:
                errors.append(f"grouping by unknown label {label}")
    for e in errors:
        fail(f"{where}: {e}")
    return not errors

try:
    import promql_parser
except ImportError:
    promql_parser = None
    print("SKIP: PromQL syntax (pip install promql-parser to check it); names and labels are still checked")

def parse_promql(where, expr):
    if promql_parser is None:
        return
    e = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", expr)
    e = re.sub(r"\$\{?(\w+)\}?", "x", e)
    try:
        promql_parser.parse(e)
    except Exception as ex:
        fail(f"{where}: PromQL does not parse: {ex}\n    {expr}")

# Rules.
rules_doc = doc("monitoring/prometheus-rules.yaml", "PrometheusRule")
groups = rules_doc.get("spec", {}).get("groups", [])
recorded = {r["record"] for g in groups for r in g.get("rules", []) if "record" in r}
seen_groups, seen_alerts, n_alerts = set(), set(), 0
for g in groups:
    if g.get("name") in seen_groups:
        fail(f"rules: duplicate group {g.get('name')}")
    seen_groups.add(g.get("name"))
    for r in g.get("rules", []):
        name = r.get("alert") or r.get("record")
        where = f"prometheus-rules.yaml {name}"
        expr = str(r.get("expr", ""))
        check_promql(where, expr, recorded, True)
        parse_promql(where, expr)
        if "record" in r:
            check(":" in r["record"], f"{where}: a recorded name has the level:metric:operations form")
            continue
        n_alerts += 1
        labels, ann = r.get("labels", {}), r.get("annotations", {})
        check("for" in r, f"{where}: no `for:`")
        check(labels.get("severity") in ("critical", "warning", "info"), f"{where}: severity label critical|warning|info expected")
        check(ann.get("summary") and len(ann.get("description", "")) > 80, f"{where}: a summary and a runbook-style description expected")
        check((name, labels.get("severity")) not in seen_alerts, f"{where}: duplicate alert and severity")
        seen_alerts.add((name, labels.get("severity")))
        # Metric names quoted in descriptions (what to check first) must exist too.
        for m in set(re.findall(r"\bsloguard_[a-z_]+", ann.get("description", ""))):
            check(base_metric(m) is not None, f"{where}: description names unknown metric {m}")
# An SLO threshold written into a rule as a bucket bound must be its route's p95 target (the
# shipped rules write none: sloguard counts requests against the policy's own targets).
slos = {r.get("name"): r.get("slo", {}) for r in base.get("route", [])}
for g in groups:
    for r in g.get("rules", []):
        for route, le in re.findall(r'route="(\w+)"[^}]*le="([\d.]+)"', str(r.get("expr", ""))):
            want = slos.get(route, {}).get("p95_ms")
            check(want is not None and abs(float(le) * 1000 - want) < 1e-9,
                  f"rules {r.get('record') or r.get('alert')}: le=\"{le}\" for route {route} but its p95 target is {want} ms")
            check(float(le) in DURATION_BUCKETS, f"rules: le=\"{le}\" is not a bucket bound of sloguard_request_duration_seconds")
ok(f"prometheus-rules.yaml: {len(recorded)} recorded series, {n_alerts} alerts checked")

# Dashboard.
dash_path = os.path.join(K8S, "monitoring/grafana-dashboard.json")
try:
    dash = json.load(open(dash_path))
    ok("grafana-dashboard.json is valid JSON")
except Exception as e:
    fail(f"grafana-dashboard.json: {e}")
    dash = {}
if dash:
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    check(tvars.get("datasource", {}).get("type") == "datasource" and tvars["datasource"].get("query") == "prometheus",
          "dashboard: a `datasource` variable of type datasource (prometheus) expected")
    for v in ("pod", "route"):
        check(v in tvars, f"dashboard: a `{v}` template variable expected")
    check(dash.get("schemaVersion", 0) >= 36, "dashboard: schemaVersion >= 36 expected")
    ids, cells, n_queries = set(), {}, 0
    def ds_ok(ds):
        return isinstance(ds, dict) and ds.get("uid") == "${datasource}"
    exprs = []
    for v in tvars.values():
        if v.get("type") == "query":
            check(ds_ok(v.get("datasource")), f"dashboard variable {v['name']}: datasource must be ${{datasource}}")
            q = v.get("query", {})
            q = q.get("query", "") if isinstance(q, dict) else q
            m = re.match(r"label_values\((.*),\s*(\w+)\)$", q)
            if m:
                exprs.append((f"variable {v['name']}", m.group(1)))
                check(m.group(2) in ALL_LABELS, f"dashboard variable {v['name']}: unknown label {m.group(2)}")
            else:
                exprs.append((f"variable {v['name']}", q))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            check(ds_ok(a.get("datasource")), f"dashboard annotation {a.get('name')}: datasource must be ${{datasource}}")
            exprs.append((f"annotation {a.get('name')}", a["expr"]))
    for p in dash.get("panels", []):
        title = p.get("title")
        if p.get("id") in ids:
            fail(f"dashboard: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        gp = p.get("gridPos", {})
        for x in range(gp.get("x", 0), gp.get("x", 0) + gp.get("w", 0)):
            for y in range(gp.get("y", 0), gp.get("y", 0) + gp.get("h", 0)):
                if (x, y) in cells:
                    fail(f"dashboard: panels {cells[(x, y)]!r} and {title!r} overlap")
                    break
                cells[(x, y)] = title
        check(gp.get("x", 0) + gp.get("w", 0) <= 24, f"dashboard panel {title!r}: wider than the grid")
        if p.get("type") == "row":
            continue
        check(ds_ok(p.get("datasource")), f"dashboard panel {title!r}: datasource must be ${{datasource}}")
        for t in p.get("targets", []):
            check(ds_ok(t.get("datasource")), f"dashboard panel {title!r} target {t.get('refId')}: datasource must be ${{datasource}}")
            exprs.append((f"panel {title!r}", t.get("expr", "")))
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                check(label in ALL_LABELS, f"dashboard panel {title!r}: legend uses unknown label {label}")
    for where, e in exprs:
        # The dashboard must work without the recording rules: raw metrics only.
        check_promql(f"dashboard {where}", e, recorded, False)
        if not where.startswith("variable"):
            parse_promql(f"dashboard {where}", e)
        n_queries += 1
    ok(f"grafana-dashboard.json: {len(ids)} panels, {n_queries} queries checked")

# The contract against the code: every metric above must be written by the proxy (its
# names are string literals in src/telemetry/), and the reason labels are exactly the code's
# (src/stages/reason.rs).
telemetry = os.path.join(REPO, "src/telemetry")
reason_rs = os.path.join(REPO, "src/stages/reason.rs")
if not os.path.isdir(telemetry) or not os.path.exists(reason_rs):
    fail("src/telemetry/ or src/stages/reason.rs is missing: the contract cannot be checked against the code")
else:
    code = "".join(open(os.path.join(telemetry, f)).read() for f in sorted(os.listdir(telemetry)) if f.endswith(".rs") and not f.endswith("_tests.rs"))
    registered = set(re.findall(r"\b(sloguard_[a-z_]*[a-z])\b", code))
    missing = sorted(set(METRICS) - registered)
    if missing:
        fail(f"metrics in the contract that src/telemetry/ does not write: {', '.join(missing)}")
    else:
        ok("every metric of the contract is written by src/telemetry/")
    extra = sorted(registered - set(METRICS))
    if extra:
        print(f"note: src/telemetry/ writes metrics the dashboard and rules do not know: {', '.join(extra)}")
    code_reasons = set(re.findall(r'Reason::\w+ => "(\w+)"', open(reason_rs).read()))
    if not code_reasons:
        fail("no reason labels found in src/stages/reason.rs (Reason::X => \"label\")")
    elif code_reasons != SHED_REASONS | REJECT_REASONS:
        fail(f"reason labels differ from the code: only in the code {sorted(code_reasons - SHED_REASONS - REJECT_REASONS)}, only here {sorted((SHED_REASONS | REJECT_REASONS) - code_reasons)}")
    else:
        ok(f"the {len(code_reasons)} reason labels are exactly the code's")

sys.exit(1 if failures else 0)
PY

if [ -n "$sloguard" ]; then
    if "$sloguard" check "$here/base/policy/sloguard.toml" "$here/overlays/shadow/policy/sloguard.toml"; then
        echo "ok: sloguard check on both policies"
    else
        echo "FAIL: sloguard check"
        status=1
    fi
else
    echo "SKIP: sloguard check (pass the sloguard binary as \$1, e.g. k8s/validate.sh target/debug/sloguard)"
fi

if [ "$status" -eq 0 ]; then
    echo "k8s/validate.sh: all checks passed"
else
    echo "k8s/validate.sh: FAILED"
fi
exit "$status"
