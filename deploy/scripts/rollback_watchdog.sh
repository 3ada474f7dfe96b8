# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.watchdog_argv
# $1: its state directory; $2: how long to wait for the activation to end;
# $3: how long to wait after that for the deployer's confirmation (seconds);
# $4: the directory of verdicts; $5: the system profile; $6: the system it
# guards; $7, $8: the generation to restore and its path (empty when the host
# had no profile); $9: the running system to restore; ${10}, ${11}, ${12}:
# 1 when the action changes the boot default, the running system, and when it
# created the generation (0 otherwise).
# It answers through files, not stdout: whoever creates $1/verdict first
# decides (confirm_activation.sh and the deployer's disarm race for it),
# $1/rolled-back is what deploy.confirm.magic_rollback.await_self_rollback
# waits for, and the verdict goes to $4/<token> for status, history and the
# next deploy: `key<TAB>value` lines (verdict: its words; by; system: the one
# guarded; generation: the one it rolled back, if any; undid: 1 when it put
# anything back), parsed by deploy.confirm.magic_rollback.parse_verdicts. A
# confirmation also removes $1, which ends the watchdog (within its one-second
# poll). $1/hurry (a later deploy found this one's deployer gone)
# makes it decide as soon as no activation runs.
# It undoes only what it guards: the profile only while it still points at
# $6 (a generation other than $7), the running system only while it is $6.

dir=$1 activation_limit=$2 confirm_timeout=$3 verdicts=$4 profile=$5 guarded=$6
previous_generation=$7 previous_path=$8 previous_running=$9
changes_boot=${10} changes_running=${11} created=${12}
token=${dir##*/}
# Someone decided: the deployer's undo (its verdict directory), or the confirmation, which
# also removes our directory once it has claimed the verdict.
decided() {
  [ -d "$dir/verdict" ] || [ ! -d "$dir" ]
}
running_activation() {
  [ -e "$dir/activated.pid" ] && kill -0 "$(cat "$dir/activated.pid")" 2>/dev/null
}
waited=0
while [ ! -e "$dir/activated" ]; do
  decided && exit 0
  [ "$waited" -ge "$activation_limit" ] && break
  if [ -e "$dir/hurry" ] && ! running_activation && [ ! -e "$dir/activated" ]; then break; fi
  sleep 1; waited=$((waited + 1))
done
waited=0
while [ "$waited" -lt "$confirm_timeout" ]; do
  decided && exit 0
  [ -e "$dir/hurry" ] && break
  sleep 1; waited=$((waited + 1))
done
mkdir "$dir/verdict" 2>/dev/null || exit 0
echo watchdog > "$dir/verdict/by"
echo "nixfab: no confirmation within ${confirm_timeout}s after activation; rolling back what is still ours" >&2
said='' undid=0 rolled_back=''
say() { said="${said:+$said; }$1"; }
step() { "$@" || say "failed: $*"; }
if [ "$changes_boot" = 1 ]; then
  link=$(readlink "$profile" 2>/dev/null)
  generation=${link%-link}
  generation=${generation##*-}
  if [ -z "$link" ] || [ "$generation" = "$previous_generation" ]; then
    say "the profile was not changed"
  elif [ "$(readlink -f "$profile")" != "$guarded" ]; then
    say "the profile is generation $generation, not the one guarded; left alone"
  elif [ -n "$previous_generation" ] && [ -n "$previous_path" ]; then
    step nix-env -p "$profile" --switch-generation "$previous_generation"
    step "$previous_path/bin/switch-to-configuration" boot
    if [ "$created" = 1 ]; then step nix-env -p "$profile" --delete-generations "$generation"; fi
    say "profile and boot default back to generation $previous_generation"
    undid=1 rolled_back=$generation
  elif [ "$created" = 1 ]; then
    step rm -f -- "$profile" "$profile-$generation-link"
    say "removed the new profile (the host had none)"
    undid=1 rolled_back=$generation
  fi
fi
if [ "$changes_running" = 1 ] && [ -n "$previous_running" ] && [ "$previous_running" != "$guarded" ]; then
  if [ "$(readlink /run/current-system 2>/dev/null)" = "$guarded" ]; then
    step "$previous_running/bin/switch-to-configuration" test
    say "running system back to $previous_running"
    undid=1
  else
    say "the running system is not the one guarded; left alone"
  fi
fi
if [ "$undid" = 1 ]; then words="rolled back by the watchdog: $said"; else words="the watchdog undid nothing: ${said:-nothing to undo}"; fi
mkdir -p "$verdicts" &&
  printf 'verdict\t%s\nby\twatchdog\nsystem\t%s\ngeneration\t%s\nundid\t%s\n' "$words" "$guarded" "$rolled_back" "$undid" > "$verdicts/.$token.tmp" &&
  mv -f "$verdicts/.$token.tmp" "$verdicts/$token"
echo rolled-back > "$dir/rolled-back"
