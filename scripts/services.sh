# Throw-away PostgreSQL and Redis on loopback, for tests and benchmarks.
# Source this file, then: services_install; services_start DIR; ...; services_stop.
# Sets CROSSWAY_TEST_POSTGRES_URL and CROSSWAY_TEST_REDIS_URL.

services_install() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    # Debian's headless Chromium renders the HTML pages in the browser tests.
    command -v chromium >/dev/null || missing+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # python-hl7's mllp_send: a real third-party MLLP client for the feed tests.
    command -v mllp_send >/dev/null || python3 -m pip install --quiet hl7
    # The Standard Webhooks reference library: an independent check of our signatures.
    python3 -c 'import standardwebhooks' 2>/dev/null || python3 -m pip install --quiet standardwebhooks
}

# A free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

services_start() {
    SERVICES_DIR="$1"
    mkdir -p "$SERVICES_DIR"
    local pg_bin
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    PG_PORT="$(free_port)"
    REDIS_PORT="$(free_port)"

    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --pidfile "$SERVICES_DIR/redis.pid" --logfile "$SERVICES_DIR/redis.log" --dir "$SERVICES_DIR"

    mkdir -p "$SERVICES_DIR/pg"
    local run_as=()
    if [ "$(id -u)" -eq 0 ]; then
        # initdb refuses to run as root.
        chown -R postgres:postgres "$SERVICES_DIR/pg"
        chmod 755 "$SERVICES_DIR"
        run_as=(su postgres -s /bin/sh -c)
    else
        run_as=(sh -c)
    fi
    "${run_as[@]}" "$pg_bin/initdb -D $SERVICES_DIR/pg/data -U postgres -A trust --no-sync >$SERVICES_DIR/pg/initdb.log 2>&1"
    # The WAL settings deploy/README.md recommends for a write-heavy gateway.
    "${run_as[@]}" "$pg_bin/pg_ctl -D $SERVICES_DIR/pg/data -l $SERVICES_DIR/pg/pg.log -o '-p $PG_PORT -k $SERVICES_DIR/pg -c listen_addresses=127.0.0.1 -c max_connections=400 -c wal_compression=lz4 -c max_wal_size=4GB -c wal_init_zero=off -c backend_flush_after=256kB' -w start >/dev/null"
    PG_CTL="$pg_bin/pg_ctl"
    PG_RUN_AS=("${run_as[@]}")

    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'CREATE DATABASE crossway_test' >/dev/null
    export CROSSWAY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/crossway_test"
    export CROSSWAY_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    echo "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT (data in $SERVICES_DIR)"
}

services_stop() {
    [ -n "${SERVICES_DIR:-}" ] || return 0
    if [ -f "$SERVICES_DIR/redis.pid" ]; then
        kill "$(cat "$SERVICES_DIR/redis.pid")" 2>/dev/null || true
    fi
    if [ -n "${PG_CTL:-}" ] && [ -f "$SERVICES_DIR/pg/data/postmaster.pid" ]; then
        "${PG_RUN_AS[@]}" "$PG_CTL -D $SERVICES_DIR/pg/data -m immediate stop >/dev/null 2>&1" || true
    fi
    rm -rf "$SERVICES_DIR"
    SERVICES_DIR=""
}
