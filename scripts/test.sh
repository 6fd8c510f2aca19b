#!/usr/bin/env bash
# Every test of the project, in one command: the Rust workspace (unit tests, fuzz-corpus
# replay, whole-process tests over loopback), then the browser client's JavaScript tests
# (node --test; the interop test drives the ocm-server that cargo just built).
#
# Under CI=true a missing tool is installed (apt-get) rather than skipped, so that CI
# never passes by running less than a developer would.
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

echo "== cargo test --workspace"
cargo test --workspace

echo "== node --test web/test/ (the browser client's codec and session)"
if need node nodejs; then
    node --test web/test/
else
    echo "SKIPPED: node is not installed, so the JavaScript tests of web/ did not run" \
        "(apt-get install nodejs)." >&2
fi
