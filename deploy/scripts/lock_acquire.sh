# shellcheck shell=sh
# Used by: deploy.engine.lock.acquire
# Parsed by: deploy.engine.lock.acquire, deploy.confirm.magic_rollback.parse_pending
# $1: the lock directory; $2: the holder, one line of JSON; $3: the rollback
# watchdogs' state directory; $4: the text of watchdogs_pending.sh, which
# lists the watchdogs (one loop for both, sent as a value, never edited here).
# mkdir is the test-and-set that two deployers cannot both win. Prints
# "acquired" followed by a "TOKEN<TAB>AGE" line for each watchdog that has no
# verdict yet (the new holder must let them decide before it changes
# anything), or "held", the lock's age in seconds and the holder's line, so
# that the deployer can judge, in the same round trip, whether it is stale.

lock=$1 holder=$2 watchdogs=$3 list_pending=$4
mkdir -p "${lock%/*}"
if mkdir "$lock" 2>/dev/null; then
  printf '%s\n' "$holder" > "$lock/holder"
  echo acquired
  exec sh -c "$list_pending" sh "$watchdogs"
fi
echo held
echo "$(( $(date +%s) - $(stat -c %Y "$lock") ))"
cat "$lock/holder" 2>/dev/null
exit 0
