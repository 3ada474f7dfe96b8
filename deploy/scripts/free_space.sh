# shellcheck shell=sh
# Used by: deploy.nix.commands.df_argv, deploy.engine.preflight.Questions.argv
# Parsed by: deploy.plan.disk.parse_df
# $@: the paths to ask about. df for each path on its own, so that a missing
# path (no /boot) cannot shift the others' lines; each output line is
# "PATH<TAB>df -P line".

for path do
  # df -P: a header, then one line for the path's file system.
  df -Pk -- "$path" 2>/dev/null | {
    IFS= read -r _header && IFS= read -r line && [ -n "$line" ] && printf '%s\t%s\n' "$path" "$line"
  }
done
exit 0
