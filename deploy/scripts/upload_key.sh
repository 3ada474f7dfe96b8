# shellcheck shell=sh
# Used by: deploy.keys.upload.upload_argv
# Parsed by: deploy.keys.upload.upload_problem
# $1: the key's path; $2: its owner; $3: its group; $4: its mode (octal);
# $5: its size in bytes. The key itself arrives on stdin, and only after this
# script printed "nixfab-key-ready": whatever reads stdin before it (sudo, for
# its password) never sees a byte of it.
# It goes into a temporary file in the key's directory whose owner and mode
# are set while it is still empty, and that file is renamed over the key only
# once all of its bytes arrived: a reader finds the old key or the new one,
# never part of one, and never with other permissions than the key's. A
# missing directory is created, mode 0750, owned by root and the key's group.
# Prints "uploaded SIZE"; or one of "no-user", "no-group", "is-directory",
# "short RECEIVED" and exits 3; any other failure says why on stderr.
# mkdir -p -m: the mode is meant for the key's directory alone; the parents
# it may create get the usual 0755.
# shellcheck disable=SC2174

set -eu
dest=$1 owner=$2 group=$3 mode=$4 size=$5
dir=${dest%/*}
dir=${dir:-/}
case $owner in
  *[!0-9]*) id -u "$owner" >/dev/null 2>&1 || { echo no-user; exit 3; } ;;
esac
case $group in
  *[!0-9]*) getent group "$group" >/dev/null 2>&1 || { echo no-group; exit 3; } ;;
esac
if [ -d "$dest" ]; then
  echo is-directory
  exit 3
fi
if [ ! -d "$dir" ]; then
  (umask 022 && mkdir -p -m 0750 -- "$dir")
  chgrp -- "$group" "$dir"
fi
umask 077
tmp=$(mktemp -- "$dir/.nixfab-key.XXXXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
chown -- "$owner:$group" "$tmp"
chmod -- "$mode" "$tmp"
echo nixfab-key-ready
cat > "$tmp"
received=$(wc -c < "$tmp")
if [ "$received" -ne "$size" ]; then
  echo "short $received"
  exit 3
fi
mv -f -- "$tmp" "$dest"
trap - EXIT
echo "uploaded $size"
