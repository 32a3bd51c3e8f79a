# shellcheck shell=bash
# Shared helpers for backup.sh, restore-drill.sh and restore.sh. Sourced, never run.
#
# Two concerns live here so the three scripts treat them identically:
#   - finding the PostgreSQL client tools (PATH first, then the newest Debian versioned bindir);
#   - passing connection strings to them without ever printing a password or putting it on a
#     command line, where any local user could read it in `ps` or /proc/PID/cmdline. Whatever
#     form the password takes (postgres://user:pass@…, postgres://…?password=…, or password=…
#     in a key=value string, quoted or not), pg_with cuts it out of the connection string and
#     hands it to libpq through PGPASSWORD, which only the tool's own environment carries.
#
# Connection strings may be URIs (postgres://user:pass@host:port/db?opts) or libpq key=value
# strings ("host=/run/postgresql dbname=callmeback"); an empty string means "libpq defaults and
# the PG* environment variables".

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# Prints the path of a PostgreSQL client tool: PATH first (Debian's pg_wrapper picks a matching
# version there), else the newest /usr/lib/postgresql/*/bin that has it.
pg_tool() {
    local name="$1" dir dirs=()
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
    for dir in "${dirs[@]}"; do
        if [[ -x $dir/$name ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    die "$name not found on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql-client)"
}

# Decodes %XX escapes of a URI component into the variable named $1.
percent_decode_into() {
    local rest="$2" decoded="" byte
    while [[ $rest =~ ^([^%]*)%([0-9A-Fa-f]{2})(.*)$ ]]; do
        decoded+="${BASH_REMATCH[1]}"
        printf -v byte '%b' "\\x${BASH_REMATCH[2]}"
        decoded+="$byte"
        rest="${BASH_REMATCH[3]}"
    done
    printf -v "$1" '%s' "$decoded$rest"
}

# pg_uri_split URI: sets _pg_conn to URI without any password, _pg_password to the (decoded)
# password and _pg_has_password to 1 if there was one. Declare those three `local` in the caller.
# Follows libpq: the userinfo ends at the first '@' before any '/' (so a password cannot hold a
# raw '@' or '/': they must be percent-encoded), the password is what follows the first ':' in
# it, the parameters start at the first '?' after it, and a later password parameter wins.
pg_uri_split() {
    local uri="$1" prefix rest userinfo="" hostdb query="" kept="" param key params=()
    _pg_password="" _pg_has_password=0
    [[ $uri =~ ^(postgres(ql)?://)(.*)$ ]] || die "unsupported connection URI scheme (use postgres:// or postgresql://)"
    prefix="${BASH_REMATCH[1]}" rest="${BASH_REMATCH[3]}"
    if [[ $rest =~ ^([^@/]*)@(.*)$ ]]; then
        userinfo="${BASH_REMATCH[1]}" rest="${BASH_REMATCH[2]}"
        if [[ $userinfo == *:* ]]; then
            percent_decode_into _pg_password "${userinfo#*:}"
            _pg_has_password=1
            userinfo="${userinfo%%:*}"
        fi
    fi
    hostdb="${rest%%\?*}"
    [[ $rest == *\?* ]] && query="${rest#*\?}"
    [[ -n $query ]] && IFS='&' read -r -a params <<<"$query"
    for param in "${params[@]}"; do
        percent_decode_into key "${param%%=*}"
        if [[ $key == password && $param == *=* ]]; then
            percent_decode_into _pg_password "${param#*=}"
            _pg_has_password=1
        else
            kept+="${kept:+&}$param"
        fi
    done
    _pg_conn="$prefix${userinfo:+$userinfo@}$hostdb${kept:+?$kept}"
}

# pg_conninfo_split CONNINFO: like pg_uri_split for a libpq key=value string. Parses it the way
# libpq does (whitespace around '=', values in single quotes, backslash escapes inside and
# outside quotes; the last password wins) and rebuilds it from the other pairs, every value
# quoted. Errors name the problem, never the string (it may hold the password).
pg_conninfo_split() {
    local s="$1" i=0 n=${#1} c key value quoted out=""
    _pg_password="" _pg_has_password=0
    while ((i < n)); do
        c="${s:i:1}"
        if [[ $c == [[:space:]] ]]; then
            i=$((i + 1))
            continue
        fi
        key=""
        while ((i < n)) && [[ ${s:i:1} != "=" && ${s:i:1} != [[:space:]] ]]; do
            key+="${s:i:1}"
            i=$((i + 1))
        done
        while ((i < n)) && [[ ${s:i:1} == [[:space:]] ]]; do i=$((i + 1)); done
        [[ ${s:i:1} == "=" ]] || die "malformed connection string: a keyword without '=' (expected key=value pairs)"
        i=$((i + 1))
        while ((i < n)) && [[ ${s:i:1} == [[:space:]] ]]; do i=$((i + 1)); done
        value=""
        if [[ ${s:i:1} == "'" ]]; then
            i=$((i + 1))
            while :; do
                ((i < n)) || die "malformed connection string: unterminated quoted value"
                c="${s:i:1}"
                i=$((i + 1))
                if [[ $c == "\\" ]]; then
                    if ((i < n)); then
                        value+="${s:i:1}"
                        i=$((i + 1))
                    fi
                elif [[ $c == "'" ]]; then
                    break
                else
                    value+="$c"
                fi
            done
        else
            while ((i < n)); do
                c="${s:i:1}"
                i=$((i + 1))
                if [[ $c == [[:space:]] ]]; then
                    break
                elif [[ $c == "\\" ]]; then
                    if ((i < n)); then
                        value+="${s:i:1}"
                        i=$((i + 1))
                    fi
                else
                    value+="$c"
                fi
            done
        fi
        if [[ $key == password ]]; then
            _pg_password="$value"
            _pg_has_password=1
        else
            quoted="${value//\\/\\\\}"
            quoted="${quoted//\'/\\\'}"
            out+="${out:+ }$key='$quoted'"
        fi
    done
    _pg_conn="$out"
}

# pg_with CONN TOOL ARGS...: runs a libpq tool (psql, pg_dump, pg_restore) against CONN. A
# password in CONN, in any form, reaches the tool only through PGPASSWORD.
pg_with() {
    local conn="$1" tool="$2" _pg_conn _pg_password _pg_has_password
    shift 2
    if [[ -z $conn ]]; then
        "$tool" "$@"
        return
    fi
    if [[ $conn == *://* ]]; then
        pg_uri_split "$conn"
    else
        pg_conninfo_split "$conn"
    fi
    if ((_pg_has_password)); then
        # A prefix assignment reaches only the tool's environment, never any argv.
        PGPASSWORD="$_pg_password" "$tool" --dbname="$_pg_conn" "$@"
    else
        "$tool" --dbname="$conn" "$@"
    fi
}

# conn_with_db CONN DBNAME: prints CONN aimed at another database on the same server. The result
# still holds any password, so keep it in a variable and pass it to pg_with, never to a terminal.
conn_with_db() {
    local conn="$1" db="$2"
    [[ $db =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$db' must match [A-Za-z0-9_]+"
    if [[ -z $conn ]]; then
        printf 'dbname=%s\n' "$db"
    elif [[ $conn =~ ^(postgres(ql)?://)([^@/]*@)?([^/?]*)(/[^?]*)?(\?.*)?$ ]]; then
        printf '%s%s%s/%s%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}" "$db" "${BASH_REMATCH[6]}"
    elif [[ $conn == *://* ]]; then
        die "unsupported connection URI scheme (use postgres:// or postgresql://)"
    else
        # In a key=value string the last occurrence of a keyword wins.
        printf '%s dbname=%s\n' "$conn" "$db"
    fi
}

# psql_query CONN: runs the SQL on stdin, unaligned and tab-separated, stopping at the first error.
psql_query() {
    local conn="$1" psql="${PSQL:-}"
    [[ -n $psql ]] || psql="$(pg_tool psql)"
    pg_with "$conn" "$psql" --no-psqlrc --no-password --quiet --tuples-only --no-align \
        --field-separator=$'\t' --set=ON_ERROR_STOP=1 --file=-
}

# table_counts CONN: prints "table<TAB>exact row count" for every table of schema public, sorted.
# One UNION ALL statement, so all counts come from a single snapshot.
table_counts() {
    psql_query "$1" <<'SQL'
SELECT string_agg(format('SELECT %L::text, count(*) FROM %I.%I', c.relname, n.nspname, c.relname),
                  ' UNION ALL ' ORDER BY c.relname) || ' ORDER BY 1'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
\gexec
SQL
}

# newest_dump DIR PREFIX: prints the newest PREFIX-*.dump in DIR (names sort by their UTC stamp).
newest_dump() {
    local dir="$1" prefix="$2" dumps=()
    [[ -d $dir ]] || die "backup directory $dir does not exist"
    mapfile -t dumps < <(find "$dir" -maxdepth 1 -type f -name "$prefix-*.dump" -printf '%f\n' | LC_ALL=C sort -r)
    ((${#dumps[@]} > 0)) || die "no $prefix-*.dump in $dir"
    printf '%s\n' "$dir/${dumps[0]}"
}

# verify_dump FILE: refuses a dump whose FILE.sha256 is missing or does not match its bytes.
verify_dump() {
    local dump="$1" sums="$1.sha256" expected="" actual
    [[ -f $dump ]] || die "no such dump file: $dump"
    [[ -f $sums ]] || die "checksum file $sums is missing; refusing an unverifiable dump"
    read -r expected _ <"$sums" || true
    [[ $expected =~ ^[0-9a-f]{64}$ ]] || die "checksum file $sums is malformed"
    actual="$(sha256sum <"$dump")"
    actual="${actual%% *}"
    [[ $actual == "$expected" ]] ||
        die "checksum mismatch for $dump (expected $expected, computed $actual): the dump is damaged or was changed"
    say "checksum ok: $dump"
}
