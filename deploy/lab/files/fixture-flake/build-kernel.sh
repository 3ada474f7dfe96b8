# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
# What a NixOS toplevel's kernel, initrd and kernel-modules links point into: a reboot changes
# what runs only when these differ (`inv status` compares them), so one path per kernel version.
mkdir -p "$out/lib/modules/$version"
printf 'lab kernel %s\n' "$version" > "$out/bzImage"
printf 'lab initrd for %s\n' "$version" > "$out/initrd"
printf '%s\n' "$version" > "$out/lib/modules/$version/lab-modules"
