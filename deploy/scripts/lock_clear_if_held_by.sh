# shellcheck shell=sh
# Used by: deploy.engine.lock.acquire, deploy.engine.lock.HostLock.release_argv
# $1: the lock directory; $2: the holder line it must still contain.
# Clears the lock only if it still holds what we judged stale (or what we
# wrote ourselves), so two deployers cannot both clear it. Prints nothing;
# exits 1 when someone else holds the lock.

lock=$1 expected=$2
held=''
{ IFS= read -r held < "$lock/holder"; } 2>/dev/null
[ "$held" = "$expected" ] || exit 1
rm -rf "$lock"
