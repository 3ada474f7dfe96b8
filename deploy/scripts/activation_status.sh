# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.activation_status
# Parsed by: deploy.confirm.magic_rollback.activation_status
# $1: the directory mark_activated.sh records in (the watchdog's, or the
# switch's own under /run/nixfab/switches). What became of an activation whose SSH
# channel was lost: "finished STATUS" (mark_activated.sh recorded its exit
# status), "running" (its process still lives) or "unknown" (neither).

dir=$1
if [ -e "$dir/activated" ]; then
  echo "finished $(cat "$dir/activated")"
elif [ -e "$dir/activated.pid" ] && kill -0 "$(cat "$dir/activated.pid")" 2>/dev/null; then
  echo running
elif [ -e "$dir/activated" ]; then
  # It finished between the two tests above.
  echo "finished $(cat "$dir/activated")"
else
  echo unknown
fi
