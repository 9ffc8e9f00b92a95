#!/usr/bin/env bash
# Checks that a refund-worker binary built without the cargo feature `tools` (as the
# Dockerfile's production stage builds it) holds no provider simulator and no test key:
#   deploy/check-production-binary.sh PRODUCTION_BINARY TOOLS_BINARY
# The tools binary (default features) is the control: each marker must be found there, so
# a marker that stopped matching anything fails the check instead of passing it.
set -euo pipefail
cd "$(dirname "$0")/.."
prod="$1" tools="$2"

key_line="$(sed -n 3p fixtures/binance_pay/webhook-test-private-key.pem)"
markers=(
  "$key_line"                     # the sandbox's TEST-ONLY Binance Pay signing key
  "/sandbox/ledger"               # a simulator route
  "Run the provider sandbox"      # the `sandbox` subcommand's help
)
status=0
for m in "${markers[@]}"; do
  if ! grep -aqF -- "$m" "$tools"; then
    echo "control failed: the tools binary does not contain marker '${m:0:24}...'" >&2
    status=1
  fi
  if grep -aqF -- "$m" "$prod"; then
    echo "the production binary contains '${m:0:24}...' (sandbox or test key compiled in)" >&2
    status=1
  fi
done
for cmd in sandbox demo bench; do
  if "$prod" "$cmd" --help >/dev/null 2>&1; then
    echo "the production binary has the \`$cmd\` subcommand" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "production binary: no sandbox, demo, bench or test key"
exit "$status"
