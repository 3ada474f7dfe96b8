# shellcheck shell=sh
# Used by: deploy.activate.activation.system_state, deploy.engine.preflight.Questions.argv
# Parsed by: deploy.activate.activation.parse_system_state
# $1: the system profile. `key<TAB>value` lines: profile, generation, running.
# One round trip for what used to take three: every command over SSH costs a channel.

profile=$1
link=$(readlink "$profile" 2>/dev/null)
printf 'profile\t%s\n' "$link"
[ -n "$link" ] && printf 'generation\t%s\n' "$(readlink "${profile%/*}/${link##*/}" 2>/dev/null)"
printf 'running\t%s\n' "$(readlink /run/current-system 2>/dev/null)"
