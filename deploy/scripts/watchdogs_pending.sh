# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.pending_watchdogs, deploy.engine.lock.acquire, deploy.plan.status.probe
# Parsed by: deploy.confirm.magic_rollback.parse_pending
# $1: the watchdogs' state directory. One "TOKEN<TAB>AGE" line for each
# watchdog that has no verdict yet (AGE: seconds since it was armed).
# preflight.sh and host_state.sh run it too, from its text passed as an argument.

for dir in "$1"/*/; do
  [ -d "$dir" ] || continue
  dir=${dir%/}
  [ -e "$dir/verdict" ] && continue
  printf '%s\t%s\n' "${dir##*/}" "$(( $(date +%s) - $(stat -c %Y "$dir") ))"
done
exit 0
