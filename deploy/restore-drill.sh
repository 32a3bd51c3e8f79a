#!/usr/bin/env bash
# The restore drill: proves that a backup can actually be restored, and how long that takes.
#
# A backup nobody has restored is a hope, not a backup. The drill takes a real dump, checks its
# checksum, restores it into a throwaway database on the same server and compares the exact row
# count of every table in schema public with the live database. The scratch database is dropped
# on every exit path (success, failure, Ctrl-C, SIGTERM).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: restore-drill.sh [--exact] [--ignore-table NAME]... [DUMP_FILE]

Restores DUMP_FILE (default: the newest PREFIX-*.dump in BACKUP_DIR) into a scratch database
callmeback_restore_drill_<timestamp>_<pid>, compares exact row counts of every table in schema
public with the source database, prints them, and drops the scratch database.

Without --exact the source may have grown since the dump: a table passes when the source has at
least as many rows as the restored copy, and tables created after the dump are reported but
accepted. With --exact every table must exist on both sides with equal counts (use it right after
a backup of a quiet database).

Options:
  --exact              require identical tables and row counts
  --ignore-table NAME  do not compare NAME's count (it must still exist on both sides);
                       for tables that are pruned, e.g. phone_rate_limits, token_blacklist
  -h, --help           this text

Environment:
  ADMIN_DATABASE_URL  required: a connection to the same server as a role that may CREATE and DROP
                      databases (e.g. postgresql:///postgres as the postgres OS user)
  DATABASE_URL        the source database (or PGDATABASE and the other PG* variables)
  BACKUP_DIR          where to look for the newest dump (default /var/backups/callmeback)
  BACKUP_PREFIX       dump file name prefix (default callmeback)

Connection strings are never printed. Exit status: 0 when the drill passed, 1 on any mismatch or
failure, 2 on bad usage.
EOF
}

exact=0
declare -A ignored=()
dump=""
while (($# > 0)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --exact) exact=1 ;;
    --ignore-table)
        (($# >= 2)) || {
            usage >&2
            exit 2
        }
        ignored[$2]=1
        shift
        ;;
    -*)
        usage >&2
        exit 2
        ;;
    *)
        [[ -z $dump ]] || {
            usage >&2
            exit 2
        }
        dump="$1"
        ;;
    esac
    shift
done

# shellcheck source-path=SCRIPTDIR source=pg-lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/pg-lib.sh"

admin_url="${ADMIN_DATABASE_URL:-}"
source_url="${DATABASE_URL:-}"
[[ -n $admin_url ]] || die "set ADMIN_DATABASE_URL (a role on the same server that may create databases)"
[[ -n $source_url || -n ${PGDATABASE:-} ]] || die "set DATABASE_URL (or PGDATABASE) to the source database"

pg_restore="$(pg_tool pg_restore)"
PSQL="$(pg_tool psql)"

if [[ -z $dump ]]; then
    dump="$(newest_dump "${BACKUP_DIR:-/var/backups/callmeback}" "${BACKUP_PREFIX:-callmeback}")"
fi
verify_dump "$dump"

scratch="callmeback_restore_drill_$(date -u +%Y%m%d_%H%M%S)_$$"
scratch_url="$(conn_with_db "$admin_url" "$scratch")"
scratch_created=0

drop_scratch() {
    local status=$?
    if ((scratch_created)); then
        # FORCE: a failed pg_restore may leave a backend behind for a moment.
        if psql_query "$admin_url" <<<"DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)"; then
            say "dropped scratch database $scratch"
        else
            say "error: could not drop scratch database $scratch; drop it by hand"
            ((status != 0)) || status=1
        fi
    fi
    exit "$status"
}
trap drop_scratch EXIT
# Make signals run the EXIT trap, so an interrupted drill cleans up too.
trap 'exit 130' INT
trap 'exit 143' TERM

scratch_created=1
# template0: whatever was added to template1 (extensions, tables) must not collide with the dump.
psql_query "$admin_url" <<<"CREATE DATABASE \"$scratch\" TEMPLATE template0" ||
    die "cannot create scratch database $scratch"
say "restoring $(basename -- "$dump") into $scratch"
started=$SECONDS
# Owners and grants are not what the drill checks, and skipping them lets a non-superuser run it.
pg_with "$scratch_url" "$pg_restore" --no-password --exit-on-error --no-owner --no-acl "$dump" ||
    die "pg_restore failed (its message is above)"
restore_seconds=$((SECONDS - started))

restored_counts="$(table_counts "$scratch_url")" || die "cannot count rows in the restored copy"
source_counts="$(table_counts "$source_url")" || die "cannot count rows in the source database"

declare -A restored=() live=() names=()
while IFS=$'\t' read -r table count; do
    [[ -n $table ]] || continue
    restored[$table]=$count
    names[$table]=1
done <<<"$restored_counts"
while IFS=$'\t' read -r table count; do
    [[ -n $table ]] || continue
    live[$table]=$count
    names[$table]=1
done <<<"$source_counts"

((${#restored[@]} > 0)) || die "the restored copy has no tables in schema public; the dump is empty or wrong"

for table in "${!ignored[@]}"; do
    [[ -n ${names[$table]:-} ]] || die "--ignore-table $table: no such table on either side"
done

width=5
for table in "${!names[@]}"; do
    ((${#table} <= width)) || width=${#table}
done

failures=0
printf '%-*s  %12s  %12s  %s\n' "$width" table source restored status
mapfile -t sorted < <(printf '%s\n' "${!names[@]}" | LC_ALL=C sort)
for table in "${sorted[@]}"; do
    src="${live[$table]:-}"
    dst="${restored[$table]:-}"
    if [[ -z $dst ]]; then
        if ((exact)); then
            status="FAIL: not in the dump"
        else
            status="ok: created after the dump"
        fi
    elif [[ -z $src ]]; then
        status="FAIL: missing in the source"
    elif [[ -n ${ignored[$table]:-} ]]; then
        status="ignored"
    elif ((src == dst)); then
        status="ok"
    elif ((src > dst)) && ((!exact)); then
        status="ok: grew by $((src - dst)) since the dump"
    elif ((src > dst)); then
        status="FAIL: source has $((src - dst)) more"
    else
        status="FAIL: source has $((dst - src)) fewer"
    fi
    [[ $status != FAIL* ]] || failures=$((failures + 1))
    printf '%-*s  %12s  %12s  %s\n' "$width" "$table" "${src:--}" "${dst:--}" "$status"
done

mode="non-exact"
((exact)) && mode="exact"
if ((failures > 0)); then
    die "restore drill FAILED ($mode): $failures of ${#sorted[@]} tables differ"
fi
say "restore drill passed ($mode): ${#sorted[@]} tables, restored in ${restore_seconds}s from $(basename -- "$dump")"
