# shellcheck shell=sh
# A transient unit of the lab's fake systemd-run (lab-fake), which starts it in
# a session of its own, as systemd's units are outside the caller's: a dropped
# SSH connection must not end it.
# $1: the unit's files' prefix ($UNITS/<unit>); $2: seconds to wait before the
# command (--on-active; 0: none); then the command.
# <prefix>.pid names it while it runs (systemctl is-active and stop read it);
# <prefix>.status gets the command's exit code (203 when it cannot be run, as
# systemd's 203/EXEC) before the pid file goes, for the waiting client.
trap '' HUP PIPE # systemd's IgnoreSIGPIPE=yes; ignored signals stay ignored in the command
unit=$1 delay=$2
shift 2
echo "$$" >"$unit.pid"
[ "$delay" = 0 ] || sleep "$delay"
if command -v "$1" >/dev/null; then
  "$@"
  code=$?
else
  echo "systemd-run: $1: not found" >&2
  code=203
fi
echo "$code" >"$unit.status"
rm -f "$unit.pid"
