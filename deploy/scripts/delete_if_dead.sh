# shellcheck shell=sh
# Used by: deploy.copy.closure.remove_failed_import
# Parsed by: deploy.copy.closure.remove_failed_import
# $@: store paths a failed import may have left (valid or half-written),
# referrers first. Deletes those that exist and that nothing keeps alive
# (`nix-store --delete` refuses a live path: a GC root, another process's
# temporary root, a referrer); prints one line per path still there.

for path do
  shift
  [ -e "$path" ] && set -- "$@" "$path"
done
[ "$#" -gt 0 ] || exit 0
# One garbage collector run for all of them; if some are alive, one by one.
nix-store --delete "$@" >/dev/null 2>&1 || for path do nix-store --delete "$path" >/dev/null 2>&1; done
for path do
  [ -e "$path" ] && printf '%s\n' "$path"
done
exit 0
