#!/bin/sh
# A stand-in for NixOS's switch-to-configuration with the same contract for
# /run/current-system, the system profile and the boot entries.
set -eu
toplevel=@out@
variant=@variant@
slow_seconds=@slowSeconds@
profile=/nix/var/nix/profiles/system
action=${1:-}

case "$action" in
  switch|boot|test|dry-activate) ;;
  *) echo "Usage: $0 [switch|boot|test|dry-activate]" >&2; exit 1 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "$0: This program must be run as root" >&2
  exit 1
fi

record() {
  mkdir -p /nix/var/nix/lab
  echo "$(date +%s) $action $toplevel" >> /nix/var/nix/lab/activations.log
}

install_bootloader() {
  mkdir -p /boot/loader/entries
  rm -f /boot/loader/entries/nixos-generation-*.conf
  default=
  for link in "$profile"-*-link; do
    [ -e "$link" ] || continue
    generation=${link#"$profile"-}
    generation=${generation%-link}
    path=$(readlink -f "$link")
    {
      echo "title NixOS"
      echo "version Generation $generation NixOS $(cat "$path/nixos-version")"
      echo "linux /efi/nixos/lab-kernel.efi"
      echo "options init=$path/init loglevel=4"
    } > "/boot/loader/entries/nixos-generation-$generation.conf"
    if [ "$path" = "$toplevel" ]; then default=$generation; fi
  done
  if [ -z "$default" ]; then
    echo "error: $toplevel is not a generation of $profile; run nix-env -p $profile --set first" >&2
    exit 1
  fi
  printf 'timeout 5\ndefault nixos-generation-%s.conf\n' "$default" > /boot/loader/loader.conf.tmp
  mv /boot/loader/loader.conf.tmp /boot/loader/loader.conf
}

activate() {
  ln -sfn "$toplevel" /run/current-system.tmp
  mv -T /run/current-system.tmp /run/current-system
  mkdir -p /nix/var/nix/gcroots
  ln -sfn /run/current-system /nix/var/nix/gcroots/current-system
  if [ "$variant" != cutoff ] && [ -x /usr/local/sbin/lab-sshd ]; then
    # A good configuration opens SSH again, as its firewall rules would.
    /usr/local/sbin/lab-sshd start
  fi
}

if [ "$action" = dry-activate ]; then
  echo "would activate $toplevel (running: $(readlink /run/current-system 2>/dev/null || echo none))"
  exit 0
fi

if [ "$action" = switch ] || [ "$action" = boot ]; then
  echo "updating GRUB 2 menu..." >&2
  install_bootloader
fi
if [ "$action" = switch ] || [ "$action" = test ]; then
  if [ "$variant" = slow ]; then
    # Long enough for a second deploy to find this one still activating.
    echo "activating slowly: waiting ${slow_seconds}s..." >&2
    sleep "$slow_seconds"
  fi
  echo "activating the configuration..." >&2
  activate
  record
  case "$variant" in
    broken)
      echo "Job for broken-lab.service failed because the control process exited with error code." >&2
      echo "warning: the following units failed: broken-lab.service" >&2
      exit 4
      ;;
    netdrop)
      # As a network restart would: the SSH session that waits for this
      # switch dies (the deployer sees its channel close without an exit
      # status), every other session drops too, and the switch goes on in its
      # unit and succeeds; sshd answers again soon.
      echo "restarting network-addresses-eth0.service..." >&2
      client=/run/nixfab-lab/units/${LAB_UNIT:-none}.client
      if [ -e "$client" ]; then kill -KILL "$(cat "$client")" 2>/dev/null || true; fi
      sleep 1
      /usr/local/sbin/lab-sshd cut-off
      sleep 2
      /usr/local/sbin/lab-sshd start
      sleep 1
      # Our stderr was the dropped session's (systemd-run --pipe): a failed write is no failure of the switch.
      echo "network is back" >&2 || true
      ;;
    cutoff)
      # As a firewall change would: every SSH session to this host goes dark.
      echo "restarting sshd.service with a configuration that locks everyone out..." >&2
      /usr/local/sbin/lab-sshd cut-off
      ;;
  esac
fi
