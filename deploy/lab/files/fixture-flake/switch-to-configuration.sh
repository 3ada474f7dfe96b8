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

record_keys() {
  # What the new system's services would find when they start: the files in
  # /run/keys while the switch runs (pre-activation keys are there by now).
  keys=
  for key in /run/keys/*; do
    if [ -e "$key" ]; then keys="$keys ${key##*/}"; fi
  done
  mkdir -p /nix/var/nix/lab
  echo "$action $toplevel$keys" >> /nix/var/nix/lab/keys-at-activation.log
}

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

drop_the_network() {
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
}

if [ "$action" = dry-activate ]; then
  # What NixOS's switch-to-configuration prints, in its words and order, from the
  # units of the running system and of this one (the lab has no systemd to ask
  # which are active: a unit of the running system counts as active). A unit
  # file is a link to a store file of its own, so a changed unit links elsewhere.
  old=/run/current-system/etc/systemd/system
  new=$toplevel/etc/systemd/system
  stop='' skip='' reload='' restart='' start=''
  for file in "$old"/*; do
    [ -e "$file" ] || continue
    unit=${file##*/}
    if [ ! -e "$new/$unit" ]; then
      stop="$stop${stop:+, }$unit"
    elif [ "$(readlink "$file")" != "$(readlink "$new/$unit")" ]; then
      if grep -qx 'X-ReloadIfChanged=true' "$new/$unit"; then
        reload="$reload${reload:+, }$unit"
      elif grep -qx 'X-RestartIfChanged=false' "$new/$unit"; then
        skip="$skip${skip:+, }$unit"
      else
        restart="$restart${restart:+, }$unit"
      fi
    fi
  done
  for file in "$new"/*; do
    [ -e "$file" ] || continue
    unit=${file##*/}
    [ -e "$old/$unit" ] || start="$start${start:+, }$unit"
  done
  if [ -n "$stop" ]; then echo "would stop the following units: $stop" >&2; fi
  if [ -n "$skip" ]; then echo "would NOT stop the following changed units: $skip" >&2; fi
  echo "would activate the configuration..." >&2
  if [ -n "$reload" ]; then echo "would reload the following units: $reload" >&2; fi
  if [ -n "$restart" ]; then echo "would restart the following units: $restart" >&2; fi
  if [ -n "$start" ]; then echo "would start the following units: $start" >&2; fi
  exit 0
fi

record_keys
if [ "$action" = switch ] || [ "$action" = boot ]; then
  echo "updating GRUB 2 menu..." >&2
  install_bootloader
fi
if [ "$action" = boot ] && [ "$variant" = netdrop ]; then
  # `boot` too can be cut short by a network that goes away meanwhile.
  drop_the_network
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
      drop_the_network
      ;;
    cutoff)
      # As a firewall change would: every SSH session to this host goes dark.
      echo "restarting sshd.service with a configuration that locks everyone out..." >&2
      /usr/local/sbin/lab-sshd cut-off
      ;;
  esac
fi
