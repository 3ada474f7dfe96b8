# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.mark_activated
# $1: the marker file (in the watchdog's directory, or in the switch's own under
# /run/nixfab/switches when no watchdog guards it); the rest: the activation's argv.
# Leaves its pid in "$1.pid" while the activation runs, then records the
# activation's exit status in the marker, even when our SSH session died
# meanwhile; the watchdog, activation_status.sh and confirm_activation.sh read
# them.

marker=$1
shift
[ -d "${marker%/*}" ] || mkdir -p -- "${marker%/*}"
echo "$$" > "$marker.pid"
"$@"
status=$?
echo "$status" > "$marker.tmp" && mv -f "$marker.tmp" "$marker"
rm -f "$marker.pid"
exit "$status"
