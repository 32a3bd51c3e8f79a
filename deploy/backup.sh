#!/usr/bin/env bash
# Takes one logical backup of the callmeback database and prunes old ones.
#
# Run daily by callmeback-backup.timer. A backup is only ever visible under its final name once it
# is complete, fsynced, readable by pg_restore and has its checksum beside it, so a crash, a full
# disk or a failed pg_dump never leaves a half-written file that retention or a restore could
# mistake for a good one.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: backup.sh [-h]

Dumps the database (pg_dump --format=custom) into BACKUP_DIR as
PREFIX-YYYYMMDDTHHMMSS.mmmZ.dump with a sha256sum-style PREFIX-….dump.sha256 beside it, then
deletes all but the newest BACKUP_KEEP_DAILY dumps.

Environment:
  DATABASE_URL        database to dump (postgres:// URI or key=value string). If unset, libpq's
                      PG* variables are used (PGDATABASE must then be set).
  BACKUP_DIR          where dumps go (default /var/backups/callmeback; created mode 0700)
  BACKUP_KEEP_DAILY   how many dumps to keep, newest first (default 14)
  BACKUP_PREFIX       file name prefix (default callmeback)

The connection string is never printed. A password inside a postgres:// URI reaches pg_dump via
PGPASSWORD, not its command line; prefer peer authentication or ~/.pgpass anyway.
Exit status: 0 on success, 1 on any failure, 2 on bad usage.
EOF
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
"") ;;
*)
    usage >&2
    exit 2
    ;;
esac

# shellcheck source-path=SCRIPTDIR source=pg-lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/pg-lib.sh"

backup_dir="${BACKUP_DIR:-/var/backups/callmeback}"
keep="${BACKUP_KEEP_DAILY:-14}"
prefix="${BACKUP_PREFIX:-callmeback}"
database_url="${DATABASE_URL:-}"

[[ $keep =~ ^[1-9][0-9]*$ ]] || die "BACKUP_KEEP_DAILY must be a whole number from 1"
[[ $prefix =~ ^[A-Za-z0-9_.-]+$ ]] || die "BACKUP_PREFIX may only contain letters, digits, '_', '.', '-'"
[[ -n $database_url || -n ${PGDATABASE:-} ]] || die "set DATABASE_URL (or PGDATABASE and the other PG* variables)"

pg_dump="$(pg_tool pg_dump)"
pg_restore="$(pg_tool pg_restore)"

# Dumps hold every user's data: nobody but the backup user may read them.
umask 077
mkdir -p -- "$backup_dir"

# One backup at a time (a manual run during the timer's); the second one fails rather than waits.
exec 9>"$backup_dir/.backup.lock"
flock --nonblock 9 || die "another backup is running in $backup_dir"

# With the lock held, temporary files can only be leftovers of a run that crashed.
find "$backup_dir" -maxdepth 1 -type f -name ".$prefix-*.tmp" -delete

# Millisecond UTC stamps: names sort by age, and back-to-back runs do not collide.
name="$prefix-$(date -u +%Y%m%dT%H%M%S.%3NZ).dump"
final="$backup_dir/$name"
tmp="$backup_dir/.$name.tmp"
sums_tmp="$backup_dir/.$name.sha256.tmp"
[[ ! -e $final ]] || die "$final already exists"
trap 'rm -f -- "$tmp" "$sums_tmp"' EXIT

started=$SECONDS
# --no-password: under a timer nobody can answer a prompt; fail instead of hanging.
pg_with "$database_url" "$pg_dump" --format=custom --no-password --file="$tmp" ||
    die "pg_dump failed (its message is above); no backup was written"
# Reading the table of contents back catches a truncated or corrupt archive now, not at restore.
"$pg_restore" --list "$tmp" >/dev/null || die "pg_dump's output is not a readable archive"

hash="$(sha256sum <"$tmp")"
hash="${hash%% *}"
printf '%s  %s\n' "$hash" "$name" >"$sums_tmp"
# Data on disk before the names appear; then the directory entry itself.
sync -- "$tmp" "$sums_tmp"
mv -- "$tmp" "$final"
mv -- "$sums_tmp" "$final.sha256"
sync -- "$backup_dir"
say "wrote $final ($(stat -c %s "$final") bytes, sha256 $hash) in $((SECONDS - started))s"

# Retention: the newest $keep dumps stay; older ones go together with their checksum files.
mapfile -t dumps < <(find "$backup_dir" -maxdepth 1 -type f -name "$prefix-*.dump" -printf '%f\n' | LC_ALL=C sort -r)
for old in "${dumps[@]:keep}"; do
    rm -f -- "$backup_dir/$old" "$backup_dir/$old.sha256"
    say "removed old backup $old"
done
