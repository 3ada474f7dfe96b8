# shellcheck shell=sh disable=SC2154 # a Nix builder: the derivation's attributes arrive as variables
# Lays out the parts of a Home Manager activationPackage that deploy tools touch.
mkdir -p "$out/home-files"
printf '%s\n' "$revision" > "$out/home-files/.nixfab-lab-home"
printf '%s\n' "$revision" > "$out/lab-revision"
sed -e "s|@out@|$out|g" -e "s|@user@|$user|g" -e "s|@home@|$home|g" -e "s|@revision@|$revision|g" \
  "$activateScript" > "$out/activate"
chmod +x "$out/activate"
