# shellcheck shell=sh
# Used by: deploy.nix.commands.list_generations
# Parsed by: deploy.activate.generations.parse_generation_listing
# $1: the system profile; $2: nixfab's directory of <N>.json revision records.
# One line per generation: "generation N MTIME TARGET =VERSION =REVISION_JSON"
# (tab-separated; a field without "=" means the file is missing), then the
# profile's own link and the running and booted systems. Tabs and newlines in
# file contents become spaces, which keeps JSON valid and lines whole.

profile=$1 revisions=$2
for link in "$profile"-*-link; do
  [ -L "$link" ] || continue
  number=${link#"$profile"-}
  number=${number%-link}
  case $number in ''|*[!0-9]*) continue ;; esac
  target=$(readlink "$link")
  mtime=$(stat -c %Y "$link")
  version=
  if [ -e "$target/nixos-version" ]; then version="=$(tr '\t\n' '  ' < "$target/nixos-version")"; fi
  revision=
  if [ -e "$revisions/$number.json" ]; then revision="=$(tr '\t\n' '  ' < "$revisions/$number.json")"; fi
  printf 'generation\t%s\t%s\t%s\t%s\t%s\n' "$number" "$mtime" "$target" "$version" "$revision"
done
printf 'profile\t%s\n' "$(readlink "$profile")"
printf 'running\t%s\n' "$(readlink /run/current-system)"
printf 'booted\t%s\n' "$(readlink /run/booted-system)"
