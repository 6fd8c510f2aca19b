#!/bin/sh
# Makes a private CA and a certificate for localhost, 127.0.0.1 and ::1 signed by it, for
# running ocm-server with TLS on this machine (never on the open network: it is a test CA).
#
#   scripts/dev-cert.sh [DIR [NAME...]]    (DIR defaults to ./dev-cert)
#
# Then:
#   ocm-server --tls-cert DIR/cert.pem --tls-key DIR/key.pem
#   ocm-client --tls --ca DIR/ca.pem --server localhost:9001 ...
set -eu
cd "$(dirname "$0")/.."
dir=${1:-dev-cert}
[ $# -gt 0 ] && shift
exec cargo run --quiet --example dev-cert -- "$dir" "$@"
