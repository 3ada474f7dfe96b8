# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
mkdir -p "$out/systemd/system"
printf '%s\n' "$hostName" > "$out/hostname"
printf '%s\n' "$revision" > "$out/lab-revision"
# Each unit file is a store file named <hash>-<unit>; NixOS links its units so too.
for file in $unitFiles; do
  name=${file##*/}
  ln -s "$file" "$out/systemd/system/${name#*-}"
done
