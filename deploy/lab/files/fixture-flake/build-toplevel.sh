# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
# Lays out a store path with the parts of a NixOS toplevel that deploy tools touch.
# A test's hold (write_fixture_flake's build_gate): wait until the file exists.
if [ -n "${buildGate:-}" ]; then
  while [ ! -e "$buildGate" ]; do sleep 0.05; done
fi
mkdir -p "$out/bin"
printf '%s\n' "$nixosVersion" > "$out/nixos-version"
# What a hosts.yaml health command (grep -qx ok /run/current-system/lab-health) reads.
printf '%s\n' "$health" > "$out/lab-health"
ln -s "$etc" "$out/etc"
ln -s "$sw" "$out/sw"
ln -s "$kernel/bzImage" "$out/kernel"
ln -s "$kernel/initrd" "$out/initrd"
ln -s "$kernel/lib/modules" "$out/kernel-modules"
printf '#!/bin/sh\necho "lab init for %s"\n' "$hostName" > "$out/init"
chmod +x "$out/init"
if [ "$payloadKiB" -gt 0 ]; then
  head -c "$((payloadKiB * 1024))" /dev/urandom > "$out/payload"
fi
sed -e "s|@out@|$out|g" -e "s|@variant@|$variant|g" -e "s|@slowSeconds@|$slowSeconds|g" -e "s|@hostName@|$hostName|g" \
  "$switchToConfiguration" > "$out/bin/switch-to-configuration"
chmod +x "$out/bin/switch-to-configuration"
