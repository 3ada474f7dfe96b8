"""The argv nixfab builds, and the pure helpers at the CLI edge."""
from __future__ import annotations

import pytest

from deploy.activate.activation import parse_generation
from deploy.cli.arguments import flake_reference, seconds
from deploy.cli.cli import extra_nix_options
from deploy.errors import UsageError
from deploy.nix import commands


def test_installable_quotes_the_attribute() -> None:
    assert commands.toplevel_installable("/f", "big-machine") == '/f#nixosConfigurations."big-machine".config.system.build.toplevel'


def test_nix_build_uses_forms_both_nix_versions_accept() -> None:
    argv = commands.nix_build(["i"], out_link=None, extra=("--show-trace",))
    assert argv == ["nix", "--extra-experimental-features", "nix-command flakes", "build", "--json", "--no-link", "i", "--show-trace"]
    assert "--print-out-paths" not in argv


def test_copy_between_two_remotes_and_substitutes() -> None:
    argv = commands.nix_copy(["/nix/store/x"], to="ssh://t", source="ssh://b", substitute_on_destination=True)
    assert argv[3:] == ["copy", "--from", "ssh://b", "--to", "ssh://t", "--substitute-on-destination", "/nix/store/x"]


def test_switch_to_configuration_under_systemd_run() -> None:
    argv = commands.systemd_run(commands.switch_to_configuration("/nix/store/s", "boot"), unit="u", install_bootloader=True)
    assert argv[0] == "systemd-run" and "--wait" in argv and "--pipe" in argv
    assert "NIXOS_INSTALL_BOOTLOADER=1" in argv and argv[-2:] == ["/nix/store/s/bin/switch-to-configuration", "boot"]
    with pytest.raises(ValueError):
        commands.switch_to_configuration("/nix/store/s", "explode")


def test_garbage_collection_forms() -> None:
    assert commands.collect_garbage("15d") == ["nix-collect-garbage", "--delete-older-than", "15d"]
    assert commands.collect_garbage("all") == ["nix-collect-garbage", "--delete-old"]
    assert commands.collect_garbage(None) == ["nix-collect-garbage"]


def test_sshopts_for_nix() -> None:
    from pathlib import Path

    assert commands.nix_sshopts(Path("/lab/ssh_config"), 2222) == "-F /lab/ssh_config -p 2222"
    assert commands.nix_sshopts(None, None) == ""


def test_profile_generation_parsing() -> None:
    assert parse_generation("system-42-link") == 42
    assert parse_generation("/nix/var/nix/profiles/system-7-link") == 7
    assert parse_generation("something-else") is None


def test_extra_nix_options_keep_argv_exact() -> None:
    assert extra_nix_options(["inv", "build", "x", "--", "--option", "a b", "--show-trace"]) == ("--option", "a b", "--show-trace")
    assert extra_nix_options(["inv", "build", "x"]) == ()


def test_seconds_are_checked_at_the_edge() -> None:
    assert seconds("--timeout", "2.5") == 2.5
    for bad in ("soon", "0", "-1"):
        with pytest.raises(UsageError, match="--timeout"):
            seconds("--timeout", bad)


def test_flake_reference_absolutises_directories(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert flake_reference(".") == str(tmp_path)
    assert flake_reference("github:owner/repo") == "github:owner/repo"


def test_nix_builds_list_of_what_it_will_build_and_its_ignored_errors_are_logged_not_shown() -> None:
    from deploy.build.build import NixProgress

    # What Nix 2.26 prints in a pipe; Nix 2.8 prints only the `building` lines.
    lines = [
        "these 2 derivations will be built:\n",
        "  /nix/store/5byq25c4026pb18cswdkxc6bj2zrdamv-etc-alpha.drv\n",
        "  /nix/store/748mnpww2m7q2a07bd7agr5659lbm97f-nixos-system-alpha-lab.1.drv\n",
        "building '/nix/store/5byq25c4026pb18cswdkxc6bj2zrdamv-etc-alpha.drv'...\n",
        "these 1 paths will be fetched (0.01 MiB download, 0.02 MiB unpacked):\n",
        "  /nix/store/00000000000000000000000000000000-hello\n",
        "error: builder for '/nix/store/x.drv' failed with exit code 1\n",
        "  /nix/store/not-part-of-a-listing\n",
        # Two builds of one flake at once: Nix 2.8 skips its evaluation cache and goes on.
        "error (ignored): error: SQLite database '/root/.cache/nix/eval-cache-v2/28f0.sqlite' is busy\n",
    ]
    progress = NixProgress()
    assert [line for line in lines if progress.shown(line)] == [
        "building '/nix/store/5byq25c4026pb18cswdkxc6bj2zrdamv-etc-alpha.drv'...\n",
        "error: builder for '/nix/store/x.drv' failed with exit code 1\n",
        "  /nix/store/not-part-of-a-listing\n",
    ]
