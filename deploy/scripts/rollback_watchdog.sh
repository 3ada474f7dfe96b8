# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.watchdog_argv
# $1: its state directory; $2: how long to wait for the activation to end;
# $3: how long to wait after that for the deployer's confirmation (seconds);
# the rest: the rollback steps, each an argv quoted with shlex.join.
# It answers through files, not stdout: whoever creates $1/verdict first
# decides (confirm_activation.sh races for it), and $1/rolled-back is what
# deploy.confirm.magic_rollback.await_self_rollback waits for.

dir=$1 activation_limit=$2 confirm_timeout=$3
shift 3
waited=0
while [ ! -e "$dir/activated" ]; do
  [ -d "$dir/verdict" ] && exit 0
  [ "$waited" -ge "$activation_limit" ] && break
  sleep 1; waited=$((waited + 1))
done
waited=0
while [ "$waited" -lt "$confirm_timeout" ]; do
  [ -d "$dir/verdict" ] && exit 0
  sleep 1; waited=$((waited + 1))
done
mkdir "$dir/verdict" 2>/dev/null || exit 0
echo watchdog > "$dir/verdict/by"
echo "nixfab: no confirmation within ${confirm_timeout}s after activation; rolling back" >&2
for step in "$@"; do
  sh -c "$step" || echo "nixfab: rollback step failed: $step" >&2
done
echo rolled-back > "$dir/rolled-back"
