#!/usr/bin/env bash
# The manual load check with the MCP Inspector's own load mode (README "Reliability"): its CLI
# calls `exec` REQUESTS times, CONCURRENCY at a time, over stdio and over Streamable HTTP in both
# protocol eras, and prints each summary (one JSON line: ok, errors, throughput, latency p50/p99).
#
#   bash bench/inspector_load.sh [REQUESTS] [CONCURRENCY]
#
# Needs the Inspector 2.12 or later (its --load) and Node.js >= 22.19 on PATH; INSPECTOR may name
# its command (default: npx -y @modelcontextprotocol/inspector@2.12.0).
set -euo pipefail
requests=${1:-1000}
concurrency=${2:-20}
inspector=${INSPECTOR:-npx -y @modelcontextprotocol/inspector@2.12.0}
server=${MCP_SANDBOX:-mcp-sandbox}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
load=(--cli -q --format json --method tools/call --tool-name exec --tool-arg 'command=echo hi'
      --load --load-concurrency "$concurrency" --load-requests "$requests")

echo "stdio: $($inspector "${load[@]}" -e MCP_SANDBOX_BACKEND=local "$server")"
MCP_SANDBOX_AUTH_TOKEN=$token $server --backend local --transport http --port "$port" --default-sandbox \
  --log-level WARNING &
trap 'kill $! 2>/dev/null; wait' EXIT
for _ in $(seq 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.2
done
for era in legacy modern; do
  echo "http $era: $($inspector "${load[@]}" --protocol-era "$era" --header "Authorization: Bearer $token" \
    --server-url "http://127.0.0.1:$port/mcp")"
done
