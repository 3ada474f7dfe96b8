# shellcheck shell=sh
# Used by: deploy.plan.deploy_plan.dry_activate, deploy.plan.deploy_plan.stage
# Parsed by: deploy.plan.deploy_plan.parse_dry_activate_output
# $1: the system to dry-activate; `staged` for the one staged in $2 (so
# that no store path is in this process's arguments or, under sudo, its
# environment's SUDO_COMMAND, where the garbage collector would find it and
# keep the path alive); empty for none. $2: a staging directory to remove,
# or empty. Lines: `dry<TAB>` each line switch-to-configuration dry-activate
# printed, `dry-exit<TAB>` its status; then, once the staging's GC root (and
# the indirect root Nix filed for it) is gone, the staged paths are deleted,
# and `left<TAB>PATH` names one still in the store (alive for another reason).

staging=$2
system=$1
if [ "$system" = staged ]; then
  system=$(readlink "$staging/system") || system=''
fi
if [ -n "$system" ]; then
  out=$("$system/bin/switch-to-configuration" dry-activate 2>&1 </dev/null)
  status=$?
  printf '%s\n' "$out" | while IFS= read -r line; do
    printf 'dry\t%s\n' "$line"
  done
  printf 'dry-exit\t%s\n' "$status"
fi
[ -n "$staging" ] && [ -d "$staging" ] || exit 0
rm -f "$staging/system"
for link in /nix/var/nix/gcroots/auto/*; do
  if [ "$(readlink "$link" 2>/dev/null)" = "$staging/system" ]; then
    rm -f "$link"
  fi
done
if [ -s "$staging/missing" ]; then
  # The list comes dependencies first: one garbage collector run for all, else one by one, referrers first.
  # shellcheck disable=SC2046 # store paths have no whitespace
  if ! nix-store --delete $(cat "$staging/missing") >/dev/null 2>&1; then
    reversed=''
    while IFS= read -r path; do
      reversed="$path $reversed"
    done < "$staging/missing"
    for path in $reversed; do
      [ -e "$path" ] && nix-store --delete "$path" >/dev/null 2>&1
    done
  fi
  while IFS= read -r path; do
    if [ -e "$path" ]; then printf 'left\t%s\n' "$path"; fi
  done < "$staging/missing"
fi
if [ -e "$staging/no-auto-roots" ]; then rmdir /nix/var/nix/gcroots/auto 2>/dev/null; fi
rm -rf "$staging"
exit 0
