# shellcheck shell=sh
# Used by: deploy.plan.deploy_plan.read_facts
# Parsed by: deploy.plan.deploy_plan.parse_facts
# $1: the system profile; $2: 1 to set up a staging directory when the host
# lacks some of the closure. stdin: the closure of the system a deploy would
# activate, one store path a line (read whole, always, so
# the sender never waits on us). `key<TAB>value` lines: what a deploy reads
# before it changes anything, in one round trip; nothing on the host changes,
# but for the staging directory (removed by plan_dry_activate.sh).

profile=$1
printf 'profile\t%s\n' "$(readlink "$profile" 2>/dev/null)"
printf 'boot\t%s\n' "$(readlink -e "$profile" 2>/dev/null)"
printf 'current\t%s\n' "$(readlink /run/current-system 2>/dev/null)"
printf 'booted\t%s\n' "$(readlink /run/booted-system 2>/dev/null)"
# What a reboot would change: the kernel, initrd and modules that run, and those of the running system.
for part in kernel initrd kernel-modules; do
  printf 'booted-%s\t%s\n' "$part" "$(readlink /run/booted-system/"$part" 2>/dev/null)"
  printf 'current-%s\t%s\n' "$part" "$(readlink /run/current-system/"$part" 2>/dev/null)"
done
locked=0
if [ -d /run/nixfab/deploy.engine.lock ]; then
  locked=1
  printf 'locked\t1\n'
fi
missing=$(xargs nix-store --check-validity --print-invalid) || {
  printf 'error\tnix-store --check-validity failed\n'
  exit 1
}
printf '%s\n' "$missing" | while IFS= read -r path; do
  [ -n "$path" ] && printf 'missing\t%s\n' "$path"
done
if [ -n "$missing" ] && [ "$2" = 1 ] && [ "$locked" = 0 ]; then
  staging=$(mktemp -d -t nixfab-plan.XXXXXXXX) || exit 1
  printf '%s\n' "$missing" > "$staging/missing"
  # Nix makes gcroots/auto for the staging's root; the cleanup removes it again if it is new and empty.
  [ -d /nix/var/nix/gcroots/auto ] || : > "$staging/no-auto-roots"
  printf 'staging\t%s\n' "$staging"
fi
exit 0
