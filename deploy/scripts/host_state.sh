# shellcheck shell=sh
# Used by: deploy.plan.status.probe
# Parsed by: deploy.plan.status.parse_host_state
# $1: the system profile; $2: the rollback watchdogs' state directory and $3
# the text of watchdogs_pending.sh; $4: the directory of verdicts and $5 the
# text of read_verdicts.sh; the rest: tokens of deploys whose verdicts are
# wanted. One `key<TAB>value` line per fact (readlink prints nothing when a
# link is missing, so a host without a system still answers), then a
# "pending<TAB>…" line per watchdog without a verdict and a "verdict<TAB>…"
# line per line of the verdicts asked for, all in one round trip.

profile=$1 watchdogs=$2 list_pending=$3 verdicts=$4 read_verdicts=$5
shift 5
printf 'profile\t%s\n' "$(readlink "$profile" 2>/dev/null)"
printf 'current\t%s\n' "$(readlink /run/current-system 2>/dev/null)"
printf 'booted\t%s\n' "$(readlink /run/booted-system 2>/dev/null)"
printf 'boot\t%s\n' "$(readlink -e "$profile" 2>/dev/null)"
printf 'uptime\t%s\n' "$(cut -d' ' -f1 /proc/uptime)"
# When the host's init started, in clock ticks after the kernel did: the 22nd field of /proc/1/stat, the 20th
# after the command's name (in parentheses, which may hold spaces). A container's PID 1, and a lab host's, started
# with the system that runs there, while /proc/uptime is the kernel's under it.
init_started() {
  [ "$#" -ge 20 ] || return 0
  shift 19
  printf 'init-started\t%s\n' "$1"
}
init_stat=''
read -r init_stat 2>/dev/null < /proc/1/stat
# shellcheck disable=SC2086 # split into its fields on purpose
init_started ${init_stat##*) }
# What a reboot would change: the kernel, initrd and modules booted, and those of the boot default.
for part in kernel initrd kernel-modules; do
  printf 'booted-%s\t%s\n' "$part" "$(readlink /run/booted-system/"$part" 2>/dev/null)"
  printf 'boot-%s\t%s\n' "$part" "$(readlink "$profile/$part" 2>/dev/null)"
done
sh -c "$list_pending" sh "$watchdogs" | while IFS= read -r line; do printf 'pending\t%s\n' "$line"; done
sh -c "$read_verdicts" sh "$verdicts" "$@" | while IFS= read -r line; do printf 'verdict\t%s\n' "$line"; done
