# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
mkdir -p "$out/bin"
printf '#!/bin/sh\necho "hello from the nixfab lab"\n' > "$out/bin/lab-hello"
chmod +x "$out/bin/lab-hello"
