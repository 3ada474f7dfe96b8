#!/bin/sh
# The loop of bench/systemd_run_cost.sh: 40 calls of each shape of systemd-run
# a deploy uses, each timed as this machine's busy CPU time per call (every
# process's, the service manager's included), so run it with the machine idle.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
hz=$(getconf CLK_TCK)
n=40
measure() {
  label=$1
  shift
  b=$(busy) s=$(date +%s%N) i=0
  while [ "$i" -lt "$n" ]; do "$@" >/dev/null 2>&1; i=$((i + 1)); done
  e=$(date +%s%N) a=$(busy)
  echo "$label: $(( (e - s) / n / 1000 )) us wall, $(( (a - b) * 1000000 / hz / n )) us of CPU per call"
}
sleep 2
measure "the loop alone" true
# The two shapes a deploy uses (deploy/nix/commands.py, deploy/confirm/magic_rollback.py), each twice.
for _ in 1 2; do
  measure "the switch's: --pipe --wait --service-type=exec" \
    systemd-run -E LOCALE_ARCHIVE --collect --no-ask-password --pipe --quiet --service-type=exec --wait true
  measure "the watchdog's: no wait" systemd-run --collect --quiet --no-ask-password true
done
