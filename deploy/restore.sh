#!/usr/bin/env bash
# A real restore: loads a verified dump into a named database.
#
# Deliberately hard to run by accident: it does nothing without --yes, and it refuses to touch a
# database that already holds tables unless --force is given as well. The restore runs in a single
# transaction, so a failure leaves the target exactly as it was.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: restore.sh --yes [--force] [--no-owner] [--owner ROLE] DUMP_FILE TARGET_DB

Checks DUMP_FILE against DUMP_FILE.sha256, creates TARGET_DB if it does not exist (from
template0, owned by ROLE if --owner is given) and restores the dump into it with pg_restore
--single-transaction --exit-on-error. Stop db-gateway first (systemctl stop db-gateway).

Options:
  --yes         required: confirms that TARGET_DB may be written to
  --force       restore even though TARGET_DB already has tables: objects in the dump are dropped
                and recreated (pg_restore --clean --if-exists); objects not in the dump stay
  --no-owner    do not restore object ownership (when the dump's roles do not exist here;
                everything is then owned by the connecting role)
  --owner ROLE  owner of TARGET_DB when this script creates it
  -h, --help    this text

Environment:
  ADMIN_DATABASE_URL  required: a connection to the target server as a role that may create
                      databases and, unless --no-owner, set object owners (a superuser, e.g.
                      postgresql:///postgres as the postgres OS user)

TARGET_DB must match [a-z_][a-z0-9_]*. Connection strings are never printed.
Exit status: 0 on success, 1 on failure, 2 on bad usage or missing confirmation.
EOF
}

confirmed=0
force=0
no_owner=0
owner=""
positional=()
while (($# > 0)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --yes) confirmed=1 ;;
    --force) force=1 ;;
    --no-owner) no_owner=1 ;;
    --owner)
        (($# >= 2)) || {
            usage >&2
            exit 2
        }
        owner="$2"
        shift
        ;;
    -*)
        usage >&2
        exit 2
        ;;
    *) positional+=("$1") ;;
    esac
    shift
done
((${#positional[@]} == 2)) || {
    usage >&2
    exit 2
}
dump="${positional[0]}"
target="${positional[1]}"

# shellcheck source-path=SCRIPTDIR source=pg-lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/pg-lib.sh"

[[ $target =~ ^[a-z_][a-z0-9_]*$ ]] || die "TARGET_DB must match [a-z_][a-z0-9_]*"
[[ -z $owner || $owner =~ ^[a-z_][a-z0-9_]*$ ]] || die "--owner ROLE must match [a-z_][a-z0-9_]*"
admin_url="${ADMIN_DATABASE_URL:-}"
[[ -n $admin_url ]] || die "set ADMIN_DATABASE_URL (a role on the target server that may create databases)"
if ((!confirmed)); then
    say "this restores $dump into database $target; re-run with --yes to do it"
    exit 2
fi

pg_restore="$(pg_tool pg_restore)"
PSQL="$(pg_tool psql)"

verify_dump "$dump"
target_url="$(conn_with_db "$admin_url" "$target")"

exists="$(psql_query "$admin_url" <<<"SELECT count(*) FROM pg_database WHERE datname = '$target'")" ||
    die "cannot connect to the server"
restore_args=(--no-password --exit-on-error --single-transaction)
((no_owner)) && restore_args+=(--no-owner)

if ((exists == 0)); then
    owner_clause=""
    [[ -z $owner ]] || owner_clause=" OWNER \"$owner\""
    psql_query "$admin_url" <<<"CREATE DATABASE \"$target\" TEMPLATE template0$owner_clause" ||
        die "cannot create database $target"
    say "created database $target"
else
    # Anything a dump could have created counts: tables, views, sequences, foreign tables.
    relations="$(
        psql_query "$target_url" <<'SQL'
SELECT count(*)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
SQL
    )" || die "cannot inspect database $target"
    if ((relations > 0)); then
        ((force)) || die "database $target is not empty ($relations relations); pass --force to restore over it"
        say "database $target has $relations relations; replacing the dumped objects (--force)"
        restore_args+=(--clean --if-exists)
    fi
fi

started=$SECONDS
pg_with "$target_url" "$pg_restore" "${restore_args[@]}" "$dump" ||
    die "pg_restore failed (its message is above); the transaction was rolled back"
say "restored $(basename -- "$dump") into $target in $((SECONDS - started))s"

printf '%s\t%s\n' table rows
table_counts "$target_url" || die "restored, but cannot count the rows of $target"
