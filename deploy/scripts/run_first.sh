# shellcheck shell=sh
# Used by: deploy.engine.preflight.Questions.argv, deploy.activate.activation.activation_argv
# Runs the first $1 of the words after it as a command: how a script takes a
# list among other values without joining it into one string. preflight.sh
# and activate.sh run it from its text, which they are given as an argument.

n=$1
shift
total=$#
i=0
for word do
  i=$((i + 1))
  if [ "$i" -le "$n" ]; then set -- "$@" "$word"; fi
done
shift "$total"
exec "$@"
