#!/usr/bin/env bash
# Runs a command in a pristine Debian root, as a machine that has never run
# nixfab, Nix or its tests would: a green run on this machine proves little,
# because it has state a new machine lacks.
#
#   bash scripts/fresh-root.sh SUITE COMMAND...
#   bash scripts/fresh-root.sh trixie bash scripts/bootstrap.sh test
#   bash scripts/fresh-root.sh bookworm bash scripts/bootstrap.sh demo
#
# SUITE is a Debian suite (bookworm, trixie). The root is made with
# `debootstrap --variant=minbase` under $FRESH_ROOT_DIR (default
# /var/tmp/nixfab-fresh-root/SUITE), this checkout (HEAD plus the uncommitted
# changes and untracked files git does not ignore) is cloned into /work/nixfab
# there, and COMMAND runs in that directory as root in private mount, PID, UTS
# and IPC namespaces with their own /proc, /dev, /run and /tmp, entered
# with pivot_root (a chroot would leave nsenter, which the lab uses, looking at
# this machine's root). The network is shared: apt and PyPI are needed.
#
# The root has only what a new machine here has before the project runs:
# Debian's minimal base, ca-certificates and this machine's extra certificate
# authorities (PyPI is reached through a proxy that they sign). Everything
# else must be installed by the project's own scripts, so a missing install
# step fails here.
#
# Nothing leaks: every mount lives in the private namespace and goes with it,
# every process dies with its PID 1, and files are written only below the
# work directory, which is removed afterwards (FRESH_ROOT_KEEP=1 keeps it).
# The exit status is COMMAND's.
set -euo pipefail

usage() {
  echo "usage: bash scripts/fresh-root.sh SUITE COMMAND..." >&2
  exit 2
}

[ "$#" -ge 2 ] || usage
suite=$1
shift
case "$suite" in
  *[!a-z]*|"") echo "fresh-root: suite must be a Debian suite name such as bookworm or trixie, not '$suite'" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "fresh-root: run as root: it needs debootstrap, mount namespaces and pivot_root" >&2
  exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${FRESH_ROOT_DIR:-/var/tmp/nixfab-fresh-root/$suite}
mirror=${FRESH_ROOT_MIRROR:-http://deb.debian.org/debian}
root=$work/root
checkout=/work/nixfab

for tool in debootstrap unshare pivot_root git; do
  if ! command -v "$tool" >/dev/null; then
    echo "fresh-root: installing $tool's package on this machine"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap util-linux git >/dev/null
    break
  fi
done

mounted_below() {
  # Any mount at or below the work directory, seen from this machine's namespace.
  findmnt -rn -o TARGET | awk -v work="$work" 'index($0, work) == 1' | grep -q .
}

remove_work() {
  if mounted_below; then
    echo "fresh-root: something is still mounted below $work; left in place" >&2
    return 1
  fi
  rm -rf --one-file-system "$work"
}

if [ -e "$work" ]; then
  remove_work
fi
mkdir -p "$work"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ "${FRESH_ROOT_KEEP:-0}" = 1 ]; then
    echo "fresh-root: kept $root"
  else
    remove_work
  fi
}
trap cleanup EXIT

started=$SECONDS
echo "fresh-root: debootstrap --variant=minbase $suite into $root"
if ! debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 20 "$work/debootstrap.log" >&2
  echo "fresh-root: debootstrap failed; the whole log is $work/debootstrap.log" >&2
  exit 1
fi

# What every new machine here has: the proxy's certificate authorities, and
# name resolution.
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  cp /usr/local/share/ca-certificates/* "$root/usr/local/share/ca-certificates/"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "fresh-root: root ready in $((SECONDS - started)) s ($(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' "$root/etc/os-release"))"

# The checkout as it stands: HEAD, then the uncommitted change and the
# untracked files that git does not ignore.
git clone -q --no-hardlinks "$repo" "$root$checkout"
git -C "$repo" diff --binary HEAD >"$work/uncommitted.patch"
if [ -s "$work/uncommitted.patch" ]; then
  git -C "$root$checkout" apply --whitespace=nowarn "$work/uncommitted.patch"
fi
(cd "$repo" && git ls-files -z --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$root$checkout"

# Inside the new namespaces, as their PID 1: own /proc, /dev, /run, /tmp; then
# pivot_root, so that every process, nsenter included, sees only the new root.
# /nix is the root's own and is NOT created here: Debian's nix-bin does not
# create it either, and a new machine's first command must cope with that.
# shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
enter='
set -euo pipefail
root=$1
checkout=$2
shift 2
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
hostname fresh-root
cd "$root"
mkdir .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
update-ca-certificates >/dev/null 2>&1
cd "$checkout"
# Not exec: this shell stays PID 1 of the namespace and reaps orphans. The
# command gets Ctrl-C as from a terminal, though fresh-root waits for it in
# the background (where a non-interactive shell ignores SIGINT).
env -i --default-signal=INT PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  TERM="${TERM:-dumb}" CI="${CI:-}" NIXFAB_REQUIRE_LAB="${NIXFAB_REQUIRE_LAB:-}" \
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$@"
'
echo "fresh-root: running $* in $checkout"
# unshare --fork ignores SIGINT and SIGTERM while it waits, so a stopped
# fresh-root must kill it outright: --kill-child then takes the namespace's
# PID 1, and with it every process inside, and the mounts go with them.
set +e
unshare --mount --pid --uts --ipc --fork --propagation private --kill-child=SIGKILL -- \
  bash -c "$enter" fresh-root "$root" "$checkout" "$@" &
namespace=$!
# shellcheck disable=SC2317 # called by the traps
stop_namespace() {
  echo "fresh-root: stopping the root's processes" >&2
  kill -KILL "$namespace" 2>/dev/null
  wait "$namespace" 2>/dev/null
  sleep 1  # the kernel tears the namespace down after its last process is reaped
  exit 130
}
trap stop_namespace INT TERM HUP
wait "$namespace"
status=$?
trap - INT TERM HUP
set -e
echo "fresh-root: $suite: exit $status after $((SECONDS - started)) s"
exit "$status"
