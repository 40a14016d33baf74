# Shared by tests/contract/run and tests/contract/hsds (sourced, from the repository
# root): the pinned Python tools, and a throw-away gateway on a free loopback port.
# The tools come from PyPI, pinned, in a virtualenv under $CROSSWAY_TOOLS_DIR (default
# ~/.cache/crossway-tools), installed when missing or when the pins change.
ROOT="$PWD"
TOOLS="${CROSSWAY_TOOLS_DIR:-$HOME/.cache/crossway-tools}"
VENV="$TOOLS/contract-venv"
PY_TOOLS=(schemathesis==4.32.5 openapi-python-client==0.29.1)

install_tools() {
    local stamp="$VENV/.crossway-tools"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PY_TOOLS[*]}" ]; then
        echo "installing ${PY_TOOLS[*]} into $VENV"
        mkdir -p "$TOOLS"
        python3 -m venv --clear "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
        printf '%s\n' "${PY_TOOLS[*]}" >"$stamp"
    fi
}

# $WORK (a fresh temporary directory) and the gateway's pid, cleaned up on exit unless
# CROSSWAY_CONTRACT_KEEP is set.
WORK="$(mktemp -d /tmp/crossway-contract.XXXXXX)"
GATEWAY_PID=""
stop() {
    if [ -n "$GATEWAY_PID" ]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap stop EXIT
[ -z "${CROSSWAY_CONTRACT_KEEP:-}" ] || trap 'kill "$GATEWAY_PID" 2>/dev/null; echo "kept $WORK"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

json_field() { # json_field NAME < JSON
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# The environment of a throw-away gateway (SQLite under $WORK, no MLLP, no Redis);
# `"$BIN" migrate` has run. Commands of "$BIN" (clients, directory) use it too.
gateway_env() {
    export CROSSWAY_DATA_DIR="$WORK/data" CROSSWAY_MLLP_ADDR="" CROSSWAY_LOG=warn
    export CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1 CROSSWAY_MAPPINGS_DIR="$ROOT/mappings"
    unset CROSSWAY_DATABASE_URL CROSSWAY_REDIS_URL CROSSWAY_DEV_AUTH
    local port
    port="$(free_port)"
    export CROSSWAY_HTTP_ADDR="127.0.0.1:$port"
    BASE="http://127.0.0.1:$port"
    "$BIN" migrate --config "$ROOT/config/default.toml" >"$WORK/migrate.log" 2>&1
}

start_gateway() {
    "$BIN" serve --config "$ROOT/config/default.toml" >"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 100); do
        curl -fs "$BASE/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$GATEWAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "the gateway did not start:"; cat "$WORK/gateway.log"; return 1
}
