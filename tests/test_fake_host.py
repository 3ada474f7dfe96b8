"""The fake transport the engine tests run against: it must keep fitting deploy.transport.hosts.Host and answer as documented."""
from __future__ import annotations

import inspect

import pytest

from deploy.errors import HostUnreachable
from deploy.scripts import script
from deploy.transport.hosts import Host, LocalHost
from fake_host import LOST, RecordingHost, Reply, script_name, sh, shown


def protocol_members(protocol: type) -> set[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return names


def test_recording_host_has_every_member_of_the_host_protocol() -> None:
    host = RecordingHost()
    for name in protocol_members(Host):
        assert hasattr(host, name), f"RecordingHost lacks Host.{name}"


@pytest.mark.parametrize("method", ["run", "close"])
def test_recording_host_methods_take_what_the_protocol_and_local_host_take(method: str) -> None:
    wanted = inspect.signature(getattr(Host, method))
    assert inspect.signature(getattr(RecordingHost, method)) == wanted
    assert inspect.signature(getattr(LocalHost, method)) == wanted


def test_rules_match_scripts_by_exact_text_and_argv_by_prefix() -> None:
    host = RecordingHost().on("preflight", "acquired\n").on(["readlink"], "/nix/store/x\n")
    assert host.run(sh("preflight", "/d", "{}")).stdout == "acquired\n"
    assert host.run(["readlink", "/p"]).stdout == "/nix/store/x\n"
    # The same words with a changed script text are not the script.
    assert host.run(["sh", "-c", script("preflight") + " ", "sh", "/d", "{}"]).stdout == ""
    unmatched = host.run(["true"])
    assert (unmatched.returncode, unmatched.stdout) == (0, "")
    assert [call.script for call in host.calls[:3]] == ["preflight", None, None]


def test_replies_come_in_turn_and_the_last_repeats() -> None:
    host = RecordingHost().on(["x"], "one", 3, LOST, HostUnreachable("gone"), Reply(0, "again"))
    assert host.run(["x"]).stdout == "one"
    assert host.run(["x"]).returncode == 3
    assert host.run(["x"]).returncode == -1
    with pytest.raises(HostUnreachable):
        host.run(["x"])
    assert host.run(["x"]).stdout == host.run(["x"]).stdout == "again"
    assert len(host.calls) == 6


def test_an_unknown_script_name_is_a_mistake_in_the_test() -> None:
    with pytest.raises(ValueError, match=r"no deploy/scripts/lock_aquire\.sh"):
        RecordingHost().on("lock_aquire", "acquired\n")


def test_dry_run_answers_the_dry_reply_and_never_consults_the_table() -> None:
    host = RecordingHost(dry_run=True).on(["x"], 5)
    result = host.run(["x"], dry_stdout="d", dry_returncode=2)
    assert (result.returncode, result.stdout) == (2, "d")
    assert host.sent == [] and all(call.dry for call in host.calls)


def test_fresh_connections_share_the_table_and_the_transcript() -> None:
    host = RecordingHost(facts={"systemd": True}).on(["x"], "a", "b")
    fresh = host.reconnect()
    assert fresh.facts == {} and fresh.connection == 1 and host.opened == [fresh]
    assert fresh.run(["x"]).stdout == "a" and host.run(["x"]).stdout == "b"
    assert [(call.connection, call.argv) for call in host.calls] == [(1, ("x",)), (0, ("x",))]


def test_shown_names_scripts_even_nested_in_another_argv() -> None:
    argv = ["systemd-run", "--wait", *sh("mark_activated", "/m", "/nix/store/s/bin/switch-to-configuration", "switch")]
    assert shown(argv) == ("systemd-run", "--wait", "sh", "-c", "<mark_activated.sh>", "sh", "/m", "/nix/store/s/bin/switch-to-configuration", "switch")
    assert script_name(argv) is None and script_name(argv[2:]) == "mark_activated"


def test_the_rule_added_last_wins_so_a_test_can_override_a_default() -> None:
    host = RecordingHost().on(["readlink"], "default\n").on(["readlink", "/run/current-system"], "override\n")
    assert host.run(["readlink", "/run/current-system"]).stdout == "override\n"
    assert host.run(["readlink", "/nix/var/nix/profiles/system"]).stdout == "default\n"
