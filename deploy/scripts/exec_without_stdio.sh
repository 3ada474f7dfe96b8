# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.detached
# $@: the argv to run, under `setsid -f` where systemd-run does not work.
# With none of its stdio left on our SSH channel, the session can end while
# argv goes on.
exec "$@" </dev/null >/dev/null 2>&1
