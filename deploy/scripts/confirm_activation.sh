# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.confirm
# Parsed by: deploy.confirm.magic_rollback.confirm
# $1: the watchdog's state directory. The deployer's claim, in one round trip:
# only a finished, successful activation is confirmed. Prints pending,
# "failed STATUS", confirmed or too-late.

dir=$1
[ -e "$dir/activated" ] || { echo pending; exit 0; }
status=$(cat "$dir/activated")
[ "$status" = 0 ] || { echo "failed $status"; exit 0; }
if mkdir "$dir/verdict" 2>/dev/null; then
  rm -rf "$dir"
  echo confirmed
else
  echo too-late
fi
