"""`ssh -G` output to the options nixfab connects with: parsed, refused, cached."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy.errors import SshOptionRefused, UsageError
from deploy.transport.openssh import DEFAULT_ALIVE_INTERVAL, SshOptions, SshResolver, parse_ssh_g, ssh_g_argv
from deploy.transport.remote import known_keys

# What OpenSSH 9.2 prints, cut to the lines that matter plus a few that do not.
SSH_G = """\
host alpha
user root
hostname 127.0.0.1
port 2201
addressfamily any
batchmode yes
canonicalizehostname false
identitiesonly yes
stricthostkeychecking true
hostkeyalgorithms ssh-ed25519,rsa-sha2-512
hostkeyalias alpha-key
identityfile ~/.ssh/id_rsa
identityfile /lab/id_ed25519
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
userknownhostsfile /lab/known_hosts
connecttimeout 5
connectionattempts 2
serveralivecountmax 4
serveraliveinterval 2
tcpkeepalive yes
forwardagent no
controlmaster false
"""


def parse(text: str = SSH_G) -> SshOptions:
    return parse_ssh_g(text, destination="alpha", label="alpha")


def test_parses_where_and_how_to_connect() -> None:
    options = parse()
    assert (options.hostname, options.port, options.user, options.where) == ("127.0.0.1", 2201, "root", "root@127.0.0.1:2201")
    assert options.identity_files == ("~/.ssh/id_rsa", "/lab/id_ed25519") and options.identities_only
    assert options.user_known_hosts == ("/lab/known_hosts",)
    assert options.global_known_hosts == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    assert options.strict_host_key_checking == "yes"
    assert (options.connect_timeout, options.connection_attempts) == (5.0, 2)
    assert (options.server_alive_interval, options.server_alive_count_max, options.dead_after) == (2, 4, 8.0)
    assert options.known_hosts_name == "alpha-key"


def test_defaults_and_the_known_hosts_name_without_an_alias() -> None:
    options = parse("hostname example.org\nport 22\nuser me\nconnecttimeout none\nstricthostkeychecking false\n")
    assert options.known_hosts_name == "example.org" and options.connect_timeout is None
    assert options.strict_host_key_checking == "no"
    assert options.alive_interval == DEFAULT_ALIVE_INTERVAL and options.dead_after == DEFAULT_ALIVE_INTERVAL * 3
    assert parse("hostname 10.0.0.5\nport 2222\nuser me\n").known_hosts_name == "[10.0.0.5]:2222"
    assert parse("hostname h\nport 22\nuser me\nstricthostkeychecking accept-new\n").strict_host_key_checking == "accept-new"
    assert not parse("hostname h\nport 22\nuser me\nidentityagent none\n").use_agent


@pytest.mark.parametrize(
    ("line", "spelled"),
    [
        ("proxycommand nc %h %p", "ProxyCommand nc %h %p"),
        ("proxyjump bastion", "ProxyJump bastion"),
        ("knownhostscommand /bin/keys %H", "KnownHostsCommand /bin/keys %H"),
        ("canonicalizehostname true", "CanonicalizeHostname true"),
        ("bindinterface eth1", "BindInterface eth1"),
    ],
)
def test_options_that_change_the_destination_are_refused_in_one_line(line: str, spelled: str) -> None:
    with pytest.raises(SshOptionRefused) as refused:
        parse(SSH_G.replace("canonicalizehostname false\n", "") + line + "\n")
    message = str(refused.value)
    assert message.startswith(f"alpha: the ssh_config sets {spelled} for alpha;") and "\n" not in message
    assert refused.value.exit_code == 2


def test_unset_values_of_refused_options_pass() -> None:
    parse(SSH_G + "proxycommand none\nproxyjump none\ncanonicalizehostname false\n")


def test_a_bad_number_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="port"):
        parse("hostname h\nport many\nuser me\n")


def test_expand_tokens_and_tilde() -> None:
    options = parse()
    assert options.expand("~/.ssh/id_%r@%h:%p%%", home="/home/me", local_user="me", local_host="box.lan") == "/home/me/.ssh/id_root@127.0.0.1:2201%"
    assert options.expand("%d/%u/%l/%n/%x", home="/home/me", local_user="me", local_host="box.lan") == "/home/me/me/box/alpha/%x"


def test_ssh_g_argv_passes_config_port_and_user() -> None:
    assert ssh_g_argv("deploy@alpha", ssh_config=Path("/c"), port=2222) == ["ssh", "-G", "-F", "/c", "-p", "2222", "-l", "deploy", "--", "alpha"]
    assert ssh_g_argv("alpha", ssh_config=None, port=None) == ["ssh", "-G", "--", "alpha"]


def test_resolver_asks_once_per_destination_and_reports_ssh_errors() -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if argv[-1] == "broken":
            return subprocess.CompletedProcess(argv, 255, "", "/c line 3: Bad configuration option: hostnme\n/c: terminating, 1 bad configuration options\n")
        return subprocess.CompletedProcess(argv, 0, SSH_G, "")

    resolver = SshResolver(run=fake)
    first = resolver.resolve("alpha", port=None, ssh_config=Path("/c"), label="alpha")
    assert resolver.resolve("alpha", port=None, ssh_config=Path("/c"), label="alpha") is first
    resolver.resolve("alpha", port=2222, ssh_config=Path("/c"), label="alpha")
    assert len(calls) == 2
    with pytest.raises(UsageError, match=r"^broken: OpenSSH cannot resolve broken: /c: terminating, 1 bad configuration options$"):
        resolver.resolve("broken", port=None, ssh_config=Path("/c"), label="broken")


def test_resolver_resolves_destinations_side_by_side_and_each_once() -> None:
    """Eight hosts that connect at once must not queue behind each other's `ssh -G`; one destination still runs it once."""
    inside = 0
    most = 0
    calls: list[str] = []
    counting = threading.Lock()

    def slow(argv: list[str]) -> subprocess.CompletedProcess[str]:
        nonlocal inside, most
        with counting:
            calls.append(argv[-1])
            inside += 1
            most = max(most, inside)
        time.sleep(0.2)
        with counting:
            inside -= 1
        return subprocess.CompletedProcess(argv, 0, SSH_G, "")

    resolver = SshResolver(run=slow)
    names = ["alpha", "beta", "alpha", "gamma", "beta"]
    threads = [threading.Thread(target=resolver.resolve, args=(name,), kwargs={"port": None, "ssh_config": None, "label": name})
               for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(calls) == ["alpha", "beta", "gamma"] and most > 1


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's ssh is not installed")
def test_real_ssh_g_honours_include_and_first_match(tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    other.write_text("Host alpha\n  HostName 127.0.0.1\n  Port 2201\n  HostKeyAlias alpha-key\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Include {other}\n\nHost *\n  HostName 10.9.9.9\n  Port 2202\n  User root\n  ServerAliveInterval 7\n")
    options = SshResolver().resolve("alpha", port=None, ssh_config=config, label="alpha")
    assert (options.hostname, options.port, options.user, options.host_key_alias, options.server_alive_interval) == (
        "127.0.0.1", 2201, "root", "alpha-key", 7,
    )
    assert SshResolver().resolve("deploy@alpha", port=2299, ssh_config=config, label="alpha").where == "deploy@127.0.0.1:2299"
    config.write_text("Host alpha\n  ProxyJump bastion\n")
    with pytest.raises(SshOptionRefused, match="ProxyJump bastion"):
        SshResolver().resolve("alpha", port=None, ssh_config=config, label="alpha")


def test_known_keys_are_looked_up_under_the_host_key_alias(tmp_path: Path) -> None:
    from paramiko import Ed25519Key
    from paramiko.hostkeys import HostKeys

    key_file = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    public = (tmp_path / "key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"alpha-key {public[0]} {public[1]}\n[127.0.0.1]:2201 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDfake\n")
    options = parse(SSH_G.replace("userknownhostsfile /lab/known_hosts", f"userknownhostsfile {known}").replace(
        "globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2", "globalknownhostsfile /dev/null"))
    keys = known_keys(options)
    assert list(keys) == ["ssh-ed25519"] and keys["ssh-ed25519"].get_base64() == public[1]
    assert isinstance(keys["ssh-ed25519"], Ed25519Key)
    hashed = tmp_path / "hashed"
    hashed.write_text(f"{HostKeys.hash_host('alpha-key')} {public[0]} {public[1]}\n")
    assert list(known_keys(SshOptions("alpha", "127.0.0.1", 2201, "root", user_known_hosts=(str(hashed),), host_key_alias="alpha-key"))) == ["ssh-ed25519"]


def test_known_hosts_patterns_brackets_and_negation(tmp_path: Path) -> None:
    from deploy.transport.remote import _names_match

    assert _names_match(["[127.0.0.1]:2201"], "[127.0.0.1]:2201")
    assert not _names_match(["[127.0.0.1]:2201"], "1:2201")
    assert _names_match(["*.lan"], "box.lan") and not _names_match(["*.lan"], "box.org")
    assert not _names_match(["*.lan", "!box.lan"], "box.lan")
