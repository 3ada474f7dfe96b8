#!/usr/bin/env bash
# Installs what nixfab, its lab and its tests need on Debian or Ubuntu, then
# runs the demo or the test suite. Run as root:
#   bash scripts/bootstrap.sh demo
#   bash scripts/bootstrap.sh test [PYTEST ARGS...]
set -euo pipefail

mode=${1:-}
shift || true
case "$mode" in
  demo|test|install) ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test|install [pytest args]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "bootstrap.sh: run as root: the lab needs mount namespaces and sshd" >&2
  exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

debian_packages=(nix-bin openssh-server openssh-client sudo openssl util-linux procps python3 python3-venv git)
# The suite also checks the remote shell scripts.
if [ "$mode" = test ]; then debian_packages+=(shellcheck); fi
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# There is no network for binary caches here, and the lab builds as root
# without nixbld users: every nix command must find these settings.
nix_conf=/etc/nix/nix.conf
mkdir -p /etc/nix
touch "$nix_conf"
if ! grep -q '^# nixfab-lab begin' "$nix_conf"; then
  sed -i -E '/^[[:space:]]*(experimental-features|build-users-group|substituters|sandbox)[[:space:]]*=/d' "$nix_conf"
  cat >> "$nix_conf" <<'CONF'
# nixfab-lab begin (written by scripts/bootstrap.sh)
experimental-features = nix-command flakes
build-users-group =
substituters =
sandbox = false
# nixfab-lab end
CONF
fi

# Debian's nix-bin creates no /nix: the store and its database appear only when
# Nix first opens them. Make them now, so that the lab and the tests find a
# usable store on a machine that has never run Nix.
nix-store --init

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

case "$mode" in
  install) ;;
  demo) exec .venv/bin/inv demo ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
esac
