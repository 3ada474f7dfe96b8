# shellcheck shell=sh
# Used by: deploy.activate.activation.activation_argv
# Parsed by: deploy.activate.activation.activation_markers
# An activation in one round trip, in the order that keeps the host safe:
# $1: the system; $2: the system profile; $3: 1 to make the system the
# profile's new generation; $4: the text of run_first.sh; $5: N, then the N
# words that arm the rollback watchdog (N is 0: none guards it); then the
# argv of the switch, under systemd-run or in a clean environment.
# The system must be a NixOS system, the watchdog must be running before the
# profile changes, and the profile must be set before the switch runs; the
# first step that fails ends it, with exit 1 and a "nixfab-activate<TAB>WHY"
# line (not-nixos, unarmed<TAB>ERROR, unset<TAB>ERROR) on stdout. Otherwise
# "nixfab-activate<TAB>armed" (when it armed one) and
# "nixfab-activate<TAB>profile<TAB>LINK" (when it set the profile) come
# before the switch's own output, and the exit status is the switch's.
# Each of those lines is also a question: a deployer that died meanwhile
# closed our stdout, and the write ends the script (SIGPIPE, or exit 1)
# before the next step, as separate commands would have stopped coming.

path=$1 profile=$2 set_profile=$3 run_first=$4 count=$5
shift 5
tab='	' # a tab, written out: $(printf '\t') would cost a fork
last_line() {
  printf '%s\n' "$1" | tail -n 1
}

if [ ! -e "$path/nixos-version" ]; then
  echo "nixfab-activate${tab}not-nixos"
  exit 1
fi
if [ "$count" -gt 0 ]; then
  if ! said=$(set -- "$count" "$@" && eval "$run_first" 2>&1); then
    echo "nixfab-activate${tab}unarmed${tab}$(last_line "$said")"
    exit 1
  fi
  shift "$count"
  echo "nixfab-activate${tab}armed" || exit 1
fi
if [ "$set_profile" = 1 ]; then
  if ! said=$(nix-env -p "$profile" --set "$path" 2>&1); then
    echo "nixfab-activate${tab}unset${tab}$(last_line "$said")"
    exit 1
  fi
  echo "nixfab-activate${tab}profile${tab}$(readlink "$profile")" || exit 1
fi
exec "$@"
