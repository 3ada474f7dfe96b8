# shellcheck shell=sh
# Used by: deploy.nix.commands.running_system_and_nvd
# Parsed by: deploy.plan.diff.parse_diff_probe
# No arguments. What a diff compares against, and whether nvd can show it,
# in one round trip.

printf 'running\t%s\n' "$(readlink /run/current-system)"
printf 'nvd\t%s\n' "$(command -v nvd)"
