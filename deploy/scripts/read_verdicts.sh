# shellcheck shell=sh
# Used by: deploy.confirm.magic_rollback.read_verdicts, deploy.plan.status.probe
# Parsed by: deploy.confirm.magic_rollback.parse_verdicts
# $1: the directory of verdicts; the rest: tokens whose verdicts are wanted.
# For the newest verdict (first) and for each named one that exists, every
# line of its file as "TOKEN<TAB>MTIME<TAB>LINE". A token is only ever hex:
# anything else is skipped, so that no name can reach outside the directory.
# host_state.sh runs it too, from its text passed as an argument.

dir=$1
shift
# shellcheck disable=SC2012 # verdicts are named by hex tokens; ls -t is the portable newest-first
newest=$(ls -t -- "$dir" 2>/dev/null | head -n 1)
[ -n "$newest" ] && set -- "$newest" "$@"
for token do
  case $token in ''|*[!0-9a-f]*) continue ;; esac
  file=$dir/$token
  [ -f "$file" ] || continue
  mtime=$(stat -c %Y -- "$file")
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\t%s\t%s\n' "$token" "$mtime" "$line"
  done < "$file"
done
exit 0
