# shellcheck shell=sh
# Used by: deploy.engine.lock.acquire
# Parsed by: deploy.engine.lock.acquire
# $1: the lock directory; $2: the holder, one line of JSON.
# mkdir is the test-and-set that two deployers cannot both win. Prints
# "acquired", or "held", the lock's age in seconds and the holder's line, so
# that the deployer can judge, in the same round trip, whether it is stale.

lock=$1 holder=$2
mkdir -p "${lock%/*}"
if mkdir "$lock" 2>/dev/null; then
  printf '%s\n' "$holder" > "$lock/holder"
  echo acquired
  exit 0
fi
echo held
echo "$(( $(date +%s) - $(stat -c %Y "$lock") ))"
cat "$lock/holder" 2>/dev/null
exit 0
