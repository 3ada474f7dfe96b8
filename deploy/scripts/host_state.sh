# shellcheck shell=sh
# Used by: deploy.plan.status.probe
# Parsed by: deploy.plan.status.probe
# $1: the system profile. One `key<TAB>value` line per fact; readlink prints
# nothing when a link is missing, so a host without a system still answers.

printf 'profile\t%s\n' "$(readlink "$1" 2>/dev/null)"
printf 'current\t%s\n' "$(readlink /run/current-system 2>/dev/null)"
printf 'booted\t%s\n' "$(readlink /run/booted-system 2>/dev/null)"
printf 'boot\t%s\n' "$(readlink -e "$1" 2>/dev/null)"
printf 'uptime\t%s\n' "$(cut -d' ' -f1 /proc/uptime)"
# What a reboot would change: the kernel, initrd and modules booted, and those of the boot default.
for part in kernel initrd kernel-modules; do
  printf 'booted-%s\t%s\n' "$part" "$(readlink /run/booted-system/"$part" 2>/dev/null)"
  printf 'boot-%s\t%s\n' "$part" "$(readlink "$1/$part" 2>/dev/null)"
done
