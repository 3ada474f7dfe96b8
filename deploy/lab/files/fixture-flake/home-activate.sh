#!/bin/sh
# A stand-in for Home Manager's `activate`, with its contract: it runs as the
# user it was built for (and refuses anyone else, as HM's checkUsername and
# checkHomeDirectory do), makes a new generation of
# $XDG_STATE_HOME/nix/profiles/home-manager with `nix-env --set` only when
# the generation changed, and links the user's files into $HOME.
set -eu
generation=@out@
expected_user=@user@
expected_home=@home@
revision=@revision@
export PATH="$PATH:/usr/local/bin:/usr/bin:/bin"

user=$(id -un)
if [ "$user" != "$expected_user" ]; then
  echo "Error: USER is set to \"$user\" but we expect \"$expected_user\"" >&2
  exit 1
fi
if [ "${HOME:-}" != "$expected_home" ]; then
  echo "Error: HOME is set to \"${HOME:-}\" but we expect \"$expected_home\"" >&2
  exit 1
fi

echo "Starting Home Manager activation"
state_dir=${XDG_STATE_HOME:-$HOME/.local/state}
profile_dir=$state_dir/nix/profiles
mkdir -p "$profile_dir" "$state_dir/nixfab-lab"
if [ "$(readlink -f "$profile_dir/home-manager" 2>/dev/null || true)" != "$generation" ]; then
  echo "Creating new profile generation"
  nix-env -p "$profile_dir/home-manager" --set "$generation"
else
  echo "No change so reusing latest profile generation"
fi
echo "Creating home file links in $HOME"
ln -sfn "$generation/home-files/.nixfab-lab-home" "$HOME/.nixfab-lab-home"
echo "$(date +%s) activated $generation revision $revision" >> "$state_dir/nixfab-lab/hm.log"
