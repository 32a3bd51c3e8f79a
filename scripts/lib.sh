# shellcheck shell=bash
# Shared helpers for the project's scripts. Sourced, never run.
#
# Everything the scripts create lives under .local/ (git-ignored): the Postgres cluster, logs, pid
# files, the Python venv, generated secrets and the stack's env file.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"

# Versions the project is verified with. worker-build and wasm-bindgen-cli must match Cargo.lock.
# shellcheck disable=SC2034 # used by scripts/bootstrap, which sources this file
WORKER_BUILD_VERSION="0.8.7"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() {
    printf '\033[31merror:\033[0m %s\n' "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# Cargo's bin folder must be on PATH for the tools `cargo install` puts there.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# The wasm-bindgen version pinned by Cargo.lock.
locked_wasm_bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock"
}

# PostgreSQL server binaries (Debian layout), newest version first.
pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -rn); do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

# initdb and postgres refuse to run as root: run them as the `postgres` system user then.
as_pg_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until an HTTP URL answers (any status), up to $2 seconds.
wait_http() {
    local url="$1" secs="${2:-60}" i
    for ((i = 0; i < secs * 10; i++)); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    return 1
}

# The wasm toolchain mode chosen by scripts/bootstrap: "rustup" or "debian" (see bootstrap).
wasm_mode() {
    cat "$LOCAL/wasm-toolchain" 2>/dev/null || echo rustup
}

# Runs a cargo command for the wasm32 target with whichever toolchain bootstrap set up.
wasm_cargo() {
    if [ "$(wasm_mode)" = debian ]; then
        PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 CARGO_UNSTABLE_BUILD_STD=std,panic_abort /usr/bin/cargo "$@"
    else
        cargo "$@"
    fi
}

# --- A project-local PostgreSQL cluster -----------------------------------------------------------
# pg_up DATA_DIR PORT: creates the cluster on first use (trust auth on loopback only, superuser
# `postgres`), then starts it if it is not running. Logs go to DATA_DIR/../postgres.log.
pg_up() {
    local data="$1" port="$2" bin
    bin="$(pg_bindir)" || die "PostgreSQL server not found: run scripts/bootstrap"
    if ! [ -f "$data/PG_VERSION" ]; then
        say "initdb $data"
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown -R postgres: "$(dirname "$data")"
        as_pg_user "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null ||
            die "initdb failed"
        # The benchmark and tests open many connections; 200 leaves headroom for PgBouncer + pools.
        printf "max_connections = 200\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\n" \
            "$data" >>"$data/postgresql.conf"
    fi
    if as_pg_user "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        return 0
    fi
    as_pg_user "$bin/pg_ctl" -D "$data" -o "-p $port" -l "$data/../postgres.log" -w -t 60 start >/dev/null ||
        die "postgres did not start on port $port (see $data/../postgres.log)"
}

pg_down() {
    local data="$1" bin
    bin="$(pg_bindir)" || return 0
    [ -f "$data/PG_VERSION" ] || return 0
    as_pg_user "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
}

# Starts a command in its own session (so the whole process tree can be stopped together),
# logging to $2 and recording its pid (= process group id) in $1.
spawn_bg() {
    local pidfile="$1" log="$2"
    shift 2
    setsid "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

# Stops the process group recorded in a pid file, politely then firmly.
stop_bg() {
    local pidfile="$1" pid i
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# Random secret, base64 (32 bytes).
random_b64() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }

# Runs one of the call benchmarks (a binary of workers/e2e) against a throwaway PostgreSQL, the
# release gateway and the release Worker: `run_call_bench <binary> [its arguments...]`. The
# benchmarks start their own stack through callmeback_e2e::Stack, which reads these variables.
run_call_bench() {
    local bin="$1" port
    shift
    "$ROOT/scripts/bootstrap"
    BENCH_PG="$LOCAL/$bin-pg"
    # shellcheck disable=SC2064 # the path is fixed now, on purpose
    trap "pg_down '$BENCH_PG/data'" EXIT
    pg_down "$BENCH_PG/data"
    rm -rf "$BENCH_PG"
    port="$(free_port)"
    say "throwaway postgres on 127.0.0.1:$port"
    pg_up "$BENCH_PG/data" "$port"

    say "building db-gateway, the Worker and $bin (release)"
    cargo build -q --release -p db-gateway -p callmeback-e2e --bin db-gateway --bin "$bin"
    "$ROOT/scripts/build-worker" >"$LOCAL/worker-build.log" 2>&1 || {
        cat "$LOCAL/worker-build.log" >&2
        die "the Worker did not build"
    }

    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export CALLMEBACK_GATEWAY_BIN="$ROOT/target/release/db-gateway"
    export CALLMEBACK_WORKER_MAIN="$ROOT/workers/api/build/index.js"
    say "running $bin (Worker runtime: ${CALLMEBACK_WORKER_RUNTIME:-wrangler dev})"
    "$ROOT/target/release/$bin" "$@"
}
