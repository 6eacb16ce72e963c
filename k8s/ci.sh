#!/usr/bin/env bash
# One entry point for every check of k8s/ (called by .ci/run as
# `bash k8s/ci.sh target/debug/sloguard`, as root, on a fresh Debian 12 machine):
#   1. installs what is missing: promtool (Debian's prometheus package), PyYAML,
#      kubernetes-validate and promql-parser (PyPI); kubectl or kustomize must be there;
#   2. k8s/validate.sh [sloguard]: manifests vs policy vs code, the dashboard and rules
#      against the metrics contract, PromQL syntax, `sloguard check` on both policies;
#   3. k8s/monitoring/test-rules.sh: `promtool check rules` on the PrometheusRule's groups
#      and `promtool test rules` on monitoring/tests/ (every alert fires and stays quiet);
#   4. k8s/schema.sh: the rendered manifests against the Kubernetes API schema, offline.
# Runs every step even after a failure, prints a summary, exits non-zero if any failed.
# Usage: bash k8s/ci.sh [path/to/sloguard]
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sloguard="${1:-}"
if [ -n "$sloguard" ] && [ ! -x "$sloguard" ]; then
    echo "k8s/ci.sh: $sloguard is not an executable sloguard binary"
    exit 2
fi

# Pinned so that a new release of a checker cannot change the verdict on its own.
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
PROMQL_PARSER="promql-parser==0.12.0"
# Where Python packages go when pip may not install into the interpreter (Debian's own
# python3 refuses, PEP 668): a private directory on PYTHONPATH.
pylib="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sloguard-k8s-ci/python"
if [ -d "$pylib" ]; then
    export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
    echo "k8s/ci.sh: apt-get install $*"
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -qq || return 1
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
pip_install() {
    echo "k8s/ci.sh: pip install $*"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip || return 1
    fi
    local pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
    if "${pip[@]}" "$@" 2>/dev/null; then
        return 0
    fi
    mkdir -p "$pylib"
    "${pip[@]}" --target "$pylib" --upgrade "$@" || return 1
    case ":${PYTHONPATH:-}:" in
        *":$pylib:"*) ;;
        *) export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
}

setup_failed=()
command -v python3 >/dev/null 2>&1 || apt_install python3 || setup_failed+=(python3)
if ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus || setup_failed+=("promtool (apt-get install prometheus)")
fi
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml || setup_failed+=(PyYAML)
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_install "$KUBERNETES_VALIDATE" || setup_failed+=(kubernetes-validate)
# Optional: validate.sh checks PromQL syntax with it, and says SKIP without it.
python3 -c 'import promql_parser' 2>/dev/null || pip_install "$PROMQL_PARSER" || echo "k8s/ci.sh: note: promql-parser could not be installed; validate.sh skips PromQL syntax (promtool still parses the rules)"
if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1; then
    setup_failed+=("kubectl or kustomize (not in Debian 12 at a usable version: install one by hand)")
fi

echo "k8s/ci.sh: tools: promtool $(promtool --version 2>/dev/null | head -1 | awk '{print $3}'), kubernetes-validate $(python3 -c 'from kubernetes_validate.version import __version__ as v; print(v)' 2>/dev/null), $(kubectl version --client 2>/dev/null | head -1 || kustomize version 2>/dev/null)"

results=()
failed=0
step() {
    local name="$1"
    shift
    echo
    echo "=== k8s/ci.sh: $name"
    if "$@"; then
        results+=("ok    $name")
    else
        results+=("FAIL  $name")
        failed=1
    fi
}

if [ ${#setup_failed[@]} -gt 0 ]; then
    for t in "${setup_failed[@]}"; do
        results+=("FAIL  setup: $t is missing and could not be installed")
    done
    failed=1
fi

if [ -n "$sloguard" ]; then
    step "validate.sh: manifests, policy (sloguard check), dashboard and rules vs the metrics contract" bash "$here/validate.sh" "$sloguard"
else
    step "validate.sh: manifests, policy, dashboard and rules vs the metrics contract (no binary: sloguard check skipped)" bash "$here/validate.sh"
fi
step "promtool: check rules and unit tests of every alert" bash "$here/monitoring/test-rules.sh"
step "schema: rendered manifests vs the Kubernetes API (kubernetes-validate), custom resources loosely" bash "$here/schema.sh"

echo
echo "=== k8s/ci.sh: summary"
printf '  %s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
    echo "k8s/ci.sh: FAILED"
    exit 1
fi
echo "k8s/ci.sh: all k8s checks passed"
