#!/usr/bin/env bash
# What one call of real systemd-run costs, so that the lab's fake
# (deploy/lab/files/fakes/lab-fake) can cost no less: a deploy calls it twice
# per host, and the hand steps it is measured against never do.
#
#   bash bench/systemd_run_cost.sh [SUITE [SSH_CONFIG HOST]]
#
# SUITE: bookworm (default) or trixie. With a lab host (`inv lab.up --hosts
# alpha`, then .lab/ssh_config alpha), the same loop also runs there, against
# the lab's fake, so that the two can be compared.
#
# Makes a Debian root with systemd (`debootstrap --variant=minbase`), boots
# that systemd as PID 1 of new mount, PID, UTS, IPC, network and cgroup
# namespaces (in a cgroup of its own, made for it and removed afterwards),
# and has a unit there time 40 calls of each shape a deploy uses
# (bench/systemd_run_loop.sh), as the machine's busy CPU time (every process,
# systemd's own work included) per call. The container has few units; a full
# host's systemd may cost a little more.
# Nothing outside the namespaces is touched but the cgroup and the root's
# directory (under $SYSTEMD_RUN_COST_DIR, default /var/tmp/nixfab-systemd-run-cost),
# both removed at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=${1:-bookworm}
lab_ssh_config=${2:-} lab_host=${3:-}
case "$suite" in
  *[!a-z]*|"") echo "systemd_run_cost: SUITE must be a Debian suite name, not '$suite'" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "systemd_run_cost: run as root (debootstrap, namespaces, a cgroup)" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
work=${SYSTEMD_RUN_COST_DIR:-/var/tmp/nixfab-systemd-run-cost}/$suite
root=$work/root
cgroup2=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[ -n "$cgroup2" ] || { echo "systemd_run_cost: no cgroup2 file system is mounted here" >&2; exit 2; }
cgroup=$cgroup2/nixfab-systemd-run-cost-$$

remove_cgroup() {
  [ -d "$cgroup" ] || return 0
  # Deepest first: a cgroup goes only once it has no children.
  find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
}
cleanup() {
  remove_cgroup
  [ -n "${SYSTEMD_RUN_COST_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$root/lib/systemd/systemd" ]; then
  rm -rf "$root"
  mkdir -p "$work"
  echo "systemd_run_cost: making a $suite root with systemd in $root" >&2
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$suite" "$root" \
    "${SYSTEMD_RUN_COST_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
fi

cp "$here/systemd_run_loop.sh" "$root/measure.sh"
chmod +x "$root/measure.sh"
cat >"$root/etc/systemd/system/measure.service" <<'EOF'
[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/measure.sh > /measured 2>&1; systemctl poweroff'
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/measure.service "$root/etc/systemd/system/multi-user.target.wants/measure.service"
rm -f "$root/measured"

# Inside the new namespaces: the API file systems, then systemd as PID 1 on the root.
# shellcheck disable=SC2016 # the sh inside expands it
boot='
set -e
root=$1
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs tmpfs "$root/dev"
for node in null zero random urandom tty full; do
  touch "$root/dev/$node" && mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir -p "$root/dev/pts" "$root/dev/shm" "$root/.old"
cd "$root"
pivot_root . .old
umount -l /.old
exec env -i container=nixfab-systemd-run-cost /lib/systemd/systemd --system --show-status=0
'
mkdir "$cgroup"
# The subshell moves itself into the cgroup, so that the cgroup namespace's root is that cgroup.
( echo "$BASHPID" >"$cgroup/cgroup.procs"
  exec timeout 120 unshare --mount --pid --fork --kill-child --uts --ipc --net --cgroup sh -c "$boot" sh "$root" ) \
  >"$work/boot.log" 2>&1 || true
[ -s "$root/measured" ] || { echo "systemd_run_cost: the container's systemd measured nothing" >&2; tail -n 20 "$work/boot.log" >&2; exit 1; }
echo "# $suite, $(chroot "$root" /lib/systemd/systemd --version | head -n 1), in a booted container"
cat "$root/measured"
if [ -n "$lab_host" ]; then
  echo "# the lab's fake, in lab host $lab_host"
  ssh -F "$lab_ssh_config" "$lab_host" sh -s <"$here/systemd_run_loop.sh"
fi
