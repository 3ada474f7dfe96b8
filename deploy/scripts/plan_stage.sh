# shellcheck shell=sh
# Used by: deploy.plan.deploy_plan.stage
# Parsed by: deploy.plan.deploy_plan.parse_dry_activate_output
# $1: the system to stage; $2: the staging directory plan_facts.sh made;
# $3: empty, or the text of plan_dry_activate.sh, to go on with it at once
# (where no sudo is needed, one round trip less). stdin: the export (what
# `nix-store --export` writes) of the paths the host lacks. They are
# imported and held by a temporary GC root, $2/system, until
# plan_dry_activate.sh removes it and them. Prints Nix's errors, then what
# plan_dry_activate.sh prints.

nix-store --import >/dev/null || exit
nix-store --realise "$1" --add-root "$2/system" >/dev/null || exit
if [ -n "$3" ]; then
  exec sh -c "$3" sh staged "$2"
fi
