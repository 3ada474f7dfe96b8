# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
mkdir -p "$out"
printf '%s\n' "$hostName" > "$out/hostname"
printf '%s\n' "$revision" > "$out/lab-revision"
