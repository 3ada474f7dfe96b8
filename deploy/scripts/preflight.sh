# shellcheck shell=sh
# Used by: deploy.engine.lock.acquire
# Parsed by: deploy.engine.lock.acquire, deploy.engine.preflight.parse_answers, deploy.confirm.magic_rollback.parse_pending
# A deploy's first round trip: the host's lock and, once it holds it, what the
# deploy needs to know of the host, so that no question costs a command of
# its own. $1: the lock directory; $2: the holder, one line of JSON; $3: the
# rollback watchdogs' state directory; $4: the text of watchdogs_pending.sh.
# The questions follow, all or none: $5: the text of run_first.sh; $6: the
# text of system_state.sh; $7: the system profile; $8: the system the deploy
# brings ('' to keep the lock whatever the host runs); $9, ${10}: 1 when that
# system must be the boot default, and the running system, for the host to
# count as current; ${11}: the text of free_space.sh; ${12}: N, then the N
# paths to ask df about; then 1 to ask whether systemd is the host's init
# (else 0); then the closure paths to check (none: no check).
# mkdir is the test-and-set that two deployers cannot both win. Prints "held",
# the lock's age in seconds and the holder's line, so that the deployer can
# judge in the same round trip whether it is stale; or "acquired", a
# "pending<TAB>TOKEN<TAB>AGE" line for each watchdog with no verdict yet (the
# holder must let them decide before it changes anything), and the answers:
# system_state.sh's lines; "current" when the host already has the system
# where the deploy would put it and no watchdog is pending, in which case the
# lock is released at once and nothing else is asked; "df<TAB>" lines;
# "systemd<TAB>1" or 0; "closure-checked" and an "invalid<TAB>PATH" line
# for each path that is not in the host's store directory. A path that is
# there is taken as valid, without the 15 ms of a nix-store process: Nix
# keeps a path's tree only while the path is valid, unless a build or an
# import that died left it half-written. Then the import refuses the first
# path that refers to it, and the deployer asks nix-store, which knows.
# The scripts given as text run by eval in a subshell of this one, and no
# test or value costs a process where the shell can do it: each process a
# deploy starts on the host costs it a fork and an exec, on every deploy.

lock=$1 holder=$2 watchdogs=$3 list_pending=$4
shift 4
tab='	' # a tab, written out: $(printf '\t') would cost a fork
tagged() {
  while IFS= read -r line; do printf '%s\t%s\n' "$1" "$line"; done
}

[ -d "${lock%/*}" ] || mkdir -p "${lock%/*}"
if ! mkdir "$lock" 2>/dev/null; then
  echo held
  echo "$(( $(date +%s) - $(stat -c %Y "$lock") ))"
  cat "$lock/holder" 2>/dev/null
  exit 0
fi
printf '%s\n' "$holder" > "$lock/holder"
echo acquired
pending=$(set -- "$watchdogs" && eval "$list_pending")
[ -n "$pending" ] && printf '%s\n' "$pending" | tagged pending
[ "$#" -eq 0 ] && exit 0

run_first=$1 state_text=$2 profile=$3 wanted=$4 wanted_boot=$5 wanted_running=$6 df_text=$7 df_count=$8
shift 8
state=$(set -- "$profile" && eval "$state_text")
printf '%s\n' "$state"
generation='' running=''
while IFS="$tab" read -r key value; do
  case $key in
    generation) generation=$value ;;
    running) running=$value ;;
  esac
done <<STATE
$state
STATE
if [ -n "$wanted" ] && [ -z "$pending" ] &&
  { [ "$wanted_boot" = 0 ] || [ "$generation" = "$wanted" ]; } &&
  { [ "$wanted_running" = 0 ] || [ "$running" = "$wanted" ]; }; then
  rm -rf "$lock"
  echo current
  exit 0
fi

(set -- "$((df_count + 4))" sh -c "$df_text" sh "$@" && eval "$run_first") | tagged df
shift "$df_count"
# sd_booted(3), as nixos-rebuild-ng asks it: a test, not a transient unit started to see whether one starts.
if [ "$1" = 1 ]; then
  if [ -d /run/systemd/system ]; then echo "systemd${tab}1"; else echo "systemd${tab}0"; fi
fi
shift
[ "$#" -eq 0 ] && exit 0
echo closure-checked
for path do
  [ -e "$path" ] || [ -L "$path" ] || printf 'invalid\t%s\n' "$path"
done
exit 0
