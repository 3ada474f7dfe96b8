# shellcheck shell=sh
# Used by: deploy.plan.deploy_plan.stage
# Parsed by: deploy.plan.deploy_plan.stage
# $1: the system to stage; $2: the staging directory plan_facts.sh made.
# stdin: `nix-store --export` of the paths the host lacks. They are imported
# and held by a temporary GC root, $2/system, until plan_dry_activate.sh
# removes it and them. Prints nothing but Nix's errors; the exit status says.

nix-store --import >/dev/null || exit
nix-store --realise "$1" --add-root "$2/system" >/dev/null
