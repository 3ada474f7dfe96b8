# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.arm_argv
# $1: a directory to create; the rest: the argv to run once it exists.
# The watchdog's directory and the watchdog itself in one round trip.
mkdir -p -- "$1" && shift && exec "$@"
