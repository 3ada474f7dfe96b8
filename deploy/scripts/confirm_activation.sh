# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.confirm
# Parsed by: deploy.confirm.magic_rollback.confirm
# $1: the watchdog's state directory; $2: the directory of verdicts; then,
# optionally, the deploy's last command (its lock's release), to run once
# confirmed when nothing else is left to do on the host.
# The deployer's claim, in one round trip: only a finished, successful
# activation is confirmed. Prints pending, "failed STATUS", confirmed or
# too-late; a confirmation leaves "confirmed" as the run's verdict (in
# rollback_watchdog.sh's format), and "ended" follows when the last command
# ran and succeeded.

dir=$1 verdicts=$2
shift 2
[ -e "$dir/activated" ] || { echo pending; exit 0; }
status=''
read -r status < "$dir/activated"
[ "$status" = 0 ] || { echo "failed $status"; exit 0; }
if mkdir "$dir/verdict" 2>/dev/null; then
  { [ -d "$verdicts" ] || mkdir -p "$verdicts"; } && printf 'verdict\tconfirmed\nby\tdeployer\n' > "$verdicts/${dir##*/}"
  rm -rf "$dir"
  echo confirmed
  if [ "$#" -gt 0 ] && "$@" >/dev/null; then echo ended; fi
else
  echo too-late
fi
