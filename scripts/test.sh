#!/usr/bin/env bash
# Every test of the project, in one command: the Rust workspace (unit tests, fuzz-corpus
# replay, whole-process tests over loopback), then the browser client's JavaScript tests
# (node --test; the interop test drives the ocm-server that cargo just built), then the
# end-to-end tests: the page in the system's headless Chromium against ocm-server and
# ocm-client --plain (web/e2e/).
#
# Under CI=true a missing tool is installed (apt-get, npm ci) rather than skipped, so that
# CI never passes by running less than a developer would. Elsewhere a missing browser or
# playwright-core skips the end-to-end tests with a SKIPPED line saying how to get them.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { # need TOOL DEBIAN-PACKAGE...
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $*: $1 is missing" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
        command -v "$1" >/dev/null 2>&1 && return 0
    fi
    return 1
}

# tests/kernel_loss.rs runs the server and clients in a network namespace of their own with a
# packet-filter rule dropping 5% of UDP: it needs root, unshare, ip and nft (or iptables).
# Elsewhere it skips with a line saying why; under CI the tools are installed and
# OCM_NETNS_REQUIRED makes anything still missing (root included) fail it.
if [ "${CI:-}" = "true" ]; then
    need unshare util-linux || true
    need ip iproute2 || true
    command -v iptables >/dev/null 2>&1 || need nft nftables || true
    export OCM_NETNS_REQUIRED=1
fi

# bench-client/tests/redis.rs runs bench-client --target redis:// against a real redis-server:
# elsewhere it skips with a line saying so; under CI it is installed, and missing fails it.
if [ "${CI:-}" = "true" ]; then
    need redis-server redis-server || true
fi

# tests/cluster.rs joins ocm-server nodes through a real `nats-server -js` (Debian package
# nats-server). Elsewhere a missing nats-server skips those tests with a SKIP line; under CI
# it is installed, and the tests fail if it is still missing (they see CI=true).
if [ "${CI:-}" = "true" ]; then
    need nats-server nats-server || true
fi

echo "== cargo test --workspace"
cargo test --workspace

echo "== node --test web/test/ (the browser client's codec and session)"
if need node nodejs; then
    node --test web/test/
else
    echo "SKIPPED: node is not installed, so the JavaScript tests of web/ did not run" \
        "(apt-get install nodejs)." >&2
fi

echo "== node --test web/e2e/ (the page in headless Chromium against ocm-server)"
CHROMIUM="${OCM_CHROMIUM:-/usr/bin/chromium}"
E2E_PACKAGES=(chromium fonts-noto-cjk fonts-noto-color-emoji)
# npm ci when node_modules is missing or older than the lockfile (npm keeps its own copy
# of the lockfile it installed from in node_modules/.package-lock.json).
npm_stale() {
    [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]
}
if [ "${CI:-}" = "true" ]; then
    missing=()
    for p in "${E2E_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${missing[*]} for the browser tests" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    need npm npm || true
    if npm_stale; then
        echo "== npm ci (node_modules is missing or older than package-lock.json)" >&2
        npm ci --no-audit --no-fund
    fi
fi
skip=""
if ! command -v node >/dev/null 2>&1; then
    skip="node is not installed (apt-get install nodejs npm)"
elif [ ! -x "$CHROMIUM" ]; then
    skip="no Chromium at $CHROMIUM (apt-get install ${E2E_PACKAGES[*]}; or set OCM_CHROMIUM)"
elif [ ! -d node_modules/playwright-core ]; then
    skip="playwright-core is not installed (npm ci; it drives the system Chromium and downloads no browser)"
fi
if [ -n "$skip" ]; then
    if [ "${CI:-}" = "true" ]; then
        echo "FAILED: the browser tests cannot run under CI: $skip." >&2
        exit 1
    fi
    echo "SKIPPED: the end-to-end browser tests (web/e2e/) did not run: $skip." >&2
else
    if npm_stale; then
        echo "note: node_modules is older than package-lock.json; run npm ci if the browser tests fail to start." >&2
    fi
    cargo build --bins --quiet # the ocm-server and ocm-client the tests drive
    # One file at a time: each starts a browser and a server, and the idle-timeout test
    # measures seconds. OCM_E2E_REQUIRED: a missing piece fails instead of skipping.
    OCM_E2E_REQUIRED=1 node --test --test-concurrency=1 web/e2e/
fi
