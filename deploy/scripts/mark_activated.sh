# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.mark_activated
# $1: the marker file; the rest: the activation's argv.
# Runs the activation and then records its exit status in the marker, even
# when our SSH session died meanwhile; the watchdog and confirm_activation.sh
# read it.

marker=$1
shift
"$@"
status=$?
echo "$status" > "$marker"
exit "$status"
