#!/usr/bin/env bash
# promtool on the alerting and recording rules of prometheus-rules.yaml:
#   1. extracts the PrometheusRule's spec.groups into a plain Prometheus rule file (promtool
#      does not read the Operator's CRD wrapper), in a temporary directory;
#   2. `promtool check rules` on it (syntax, PromQL, templates, duplicate rules);
#   3. checks that tests/*.yaml give every alert (and each of its severities) a case where it
#      fires and a case where it stays quiet;
#   4. `promtool test rules` on tests/*.yaml, copied next to the extracted file (their
#      `rule_files: [sloguard.rules.yml]` is relative to the test file).
# Usage: k8s/monitoring/test-rules.sh. Needs promtool (Debian: apt-get install prometheus)
# and python3 with PyYAML. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v promtool >/dev/null 2>&1; then
    echo "FAIL: promtool not found (Debian: apt-get install prometheus)"
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$here/prometheus-rules.yaml" "$work/sloguard.rules.yml" "$here/tests" <<'PY'
import glob, os, sys
import yaml

src, dst, tests_dir = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
prs = [d for d in docs if d.get("kind") == "PrometheusRule"]
if len(prs) != 1:
    sys.exit(f"FAIL: {src}: one PrometheusRule expected, found {len(prs)}")
groups = prs[0].get("spec", {}).get("groups") or []
if not groups:
    sys.exit(f"FAIL: {src}: no spec.groups")
with open(dst, "w") as f:
    f.write(f"# Extracted from {os.path.basename(src)} (spec of the PrometheusRule) by test-rules.sh.\n")
    yaml.safe_dump({"groups": groups}, f, sort_keys=False, width=1000, allow_unicode=True)
print(f"ok: extracted {len(groups)} rule groups from k8s/monitoring/{os.path.basename(src)}")

# Coverage: every (alert, severity) fires in some test; every alert has a quiet case.
wanted = {(r["alert"], r.get("labels", {}).get("severity")) for g in groups for r in g.get("rules", []) if "alert" in r}
fires, quiet = set(), set()
files = sorted(glob.glob(os.path.join(tests_dir, "*.yaml")))
if not files:
    sys.exit(f"FAIL: no promtool tests in {tests_dir}")
for path in files:
    t = yaml.safe_load(open(path))
    if t.get("rule_files") != ["sloguard.rules.yml"]:
        sys.exit(f"FAIL: {path}: rule_files must be [sloguard.rules.yml] (the extracted file)")
    for case in t.get("tests", []):
        for a in case.get("alert_rule_test", []):
            exp = a.get("exp_alerts") or []
            if not exp:
                quiet.add(a["alertname"])
            for e in exp:
                fires.add((a["alertname"], e.get("exp_labels", {}).get("severity")))
missing_fire = sorted(f"{a} ({s})" for a, s in wanted - fires)
missing_quiet = sorted({a for a, _ in wanted} - quiet)
unknown = sorted({a for a, _ in fires} - {a for a, _ in wanted})
ok = True
if missing_fire:
    print("FAIL: no firing test for: " + ", ".join(missing_fire)); ok = False
if missing_quiet:
    print("FAIL: no quiet test (exp_alerts: []) for: " + ", ".join(missing_quiet)); ok = False
if unknown:
    print("FAIL: tests expect alerts the rules do not have: " + ", ".join(unknown)); ok = False
if not ok:
    sys.exit(1)
print(f"ok: every alert has a firing and a quiet test ({len(wanted)} alert/severity pairs, {len({a for a, _ in wanted})} alerts)")
PY

echo "promtool check rules (the extracted PrometheusRule):"
if (cd "$work" && promtool check rules sloguard.rules.yml) >"$work/check.log" 2>&1; then
    sed 's/^/    /' "$work/check.log"
    echo "ok: promtool check rules"
else
    sed 's/^/    /' "$work/check.log"
    echo "FAIL: promtool check rules"
    exit 1
fi

cp "$here"/tests/*.yaml "$work/"
echo "promtool test rules:"
if (cd "$work" && promtool test rules ./*_test.yaml) >"$work/test.log" 2>&1; then
    sed 's/^/    /' "$work/test.log"
    echo "ok: promtool test rules ($(find "$here/tests" -name '*_test.yaml' | wc -l) file(s))"
else
    sed 's/^/    /' "$work/test.log"
    echo "FAIL: promtool test rules"
    exit 1
fi
