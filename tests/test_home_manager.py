"""Home Manager generations, built here or on the host and activated as their user, against the lab."""
from __future__ import annotations

import io
import shlex
import sys
import uuid
from pathlib import Path

import pytest

from deploy.activate import home_manager
from deploy.errors import ActivationFailed, BuildError, NotInStore, UsageError
from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from deploy.transport.process import LocalRunner
from deploy.transport.remote import RemoteHost, SudoPassword
from deploy.ui import Emitter

REPO = Path(__file__).resolve().parent.parent
HM_PROFILE = "/home/deploy/.local/state/nix/profiles/home-manager"


# --- pure parts --------------------------------------------------------------


def test_home_attr_quotes_like_the_toplevel_attribute() -> None:
    assert home_manager.home_attr("deploy", "alpha") == 'homeConfigurations."deploy@alpha".activationPackage'
    assert home_manager.home_attr("deploy", None) == 'homeConfigurations."deploy".activationPackage'
    assert home_manager.home_installable("path:/f", "me", "box") == 'path:/f#homeConfigurations."me@box".activationPackage'


@pytest.mark.parametrize("user", ['a"b', "a b", "$(id)", "", "-rf", "9lives", "me;reboot"])
def test_user_names_that_could_escape_are_refused(user: str) -> None:
    with pytest.raises(UsageError):
        home_manager.home_attr(user, "alpha")


def test_activation_runs_as_the_user_through_runuser() -> None:
    assert home_manager.run_as_user_argv("deploy", ["/nix/store/x-home/activate"]) == [
        "runuser", "-u", "deploy", "--", "/nix/store/x-home/activate",
    ]


@pytest.mark.parametrize(
    ("target", "generation"),
    [("home-manager-3-link", 3), ("/home/u/.local/state/nix/profiles/home-manager-12-link\n", 12),
     ("system-3-link", None), ("home-manager", None), ("home-manager-x-link", None)],
)
def test_parse_home_generation(target: str, generation: int | None) -> None:
    assert home_manager.parse_home_generation(target) == generation


# --- against the lab ---------------------------------------------------------


class Rig:
    def __init__(self, lab: Lab, flake: Path) -> None:
        self.lab = lab
        self.flake = f"path:{flake}"
        self.flake_dir = flake
        self.log = io.StringIO()
        self.runner = LocalRunner(Emitter.plain(self.log))
        self.nix_env = {"NIX_SSHOPTS": f"-F {lab.ssh_config}"}
        self.targets: list[RemoteHost] = []

    def target(self, login: str = "root") -> RemoteHost:
        host = RemoteHost(
            "alpha", f"{login}@alpha", port=None, ssh_config=self.lab.ssh_config, echo=self.runner.echo,
            use_sudo=login != "root", sudo_password=SudoPassword(_value=self.lab.sudo_password),
        )
        self.targets.append(host)
        return host

    def push(self, user: str = "deploy", login: str = "root") -> home_manager.HomeActivation:
        return home_manager.push_home(
            self.runner, self.target(login), target_store=f"ssh://{login}@alpha", flake=self.flake,
            user=user, host="alpha", nix_env=self.nix_env,
        )

    def inside(self, *argv: str) -> str:
        return self.lab.inside("alpha", list(argv)).stdout.strip()

    def linked_revision(self) -> str:
        return self.inside("cat", "/home/deploy/.nixfab-lab-home")

    def close(self) -> None:
        for host in self.targets:
            host.close()


@pytest.fixture
def rig(lab: Lab, tmp_path: Path):  # type: ignore[no-untyped-def]
    lab.up(["alpha"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"], home_users=["deploy", "ghost"])
    rig = Rig(lab, flake)
    try:
        yield rig
    finally:
        rig.close()


def test_push_activates_as_the_user_and_makes_generations(rig: Rig) -> None:
    first = rig.push()
    assert (first.user, first.login_user, first.previous_generation, first.generation) == ("deploy", "root", None, 1)
    assert "runuser -u deploy --" in rig.log.getvalue()
    assert rig.inside("readlink", "/home/deploy/.nixfab-lab-home") == f"{first.path}/home-files/.nixfab-lab-home"
    assert rig.linked_revision() == "1"
    assert rig.inside("readlink", "-f", HM_PROFILE) == first.path
    # It ran as deploy, with deploy's HOME: deploy owns what it wrote.
    assert rig.inside("stat", "-c", "%U", "/home/deploy/.local/state/nixfab-lab/hm.log") == "deploy"
    assert rig.inside("stat", "-c", "%U", "/home/deploy/.nixfab-lab-home") == "deploy"

    set_fixture_revision(rig.flake_dir, "2")
    second = rig.push()
    assert second.path != first.path
    assert (second.previous_generation, second.generation) == (1, 2)
    assert rig.linked_revision() == "2"
    assert rig.inside("readlink", "-f", HM_PROFILE) == second.path
    assert len(rig.inside("cat", "/home/deploy/.local/state/nixfab-lab/hm.log").splitlines()) == 2
    # Activating the same generation again makes no new one, as Home Manager does.
    again = rig.push()
    assert (again.path, again.generation) == (second.path, 2)


def test_push_logged_in_as_the_user_runs_activate_directly(rig: Rig) -> None:
    activation = rig.push(login="deploy")
    assert activation.login_user == "deploy" and activation.generation == 1
    assert "runuser" not in rig.log.getvalue() and "sudo" not in rig.log.getvalue()
    assert rig.linked_revision() == "1"


def test_a_non_root_login_reaches_runuser_through_sudo(rig: Rig, lab: Lab) -> None:
    # The lab has one unprivileged user, so this checks the composition that
    # activate_home uses for another user (sudo's root runs runuser) on deploy itself.
    path = home_manager.build_home(rig.runner, rig.flake, "deploy", "alpha", out_link=None)
    from deploy.copy.closure import copy_closure

    copy_closure(rig.runner, path, target=rig.target(), target_store="ssh://root@alpha", nix_env=rig.nix_env)
    result = rig.target("deploy").run(home_manager.run_as_user_argv("deploy", home_manager.activate_argv(path)), sudo=True)
    assert result.ok, result.stderr
    assert "+ [alpha] sudo runuser -u deploy --" in rig.log.getvalue()
    assert lab.sudo_password not in rig.log.getvalue()
    assert rig.linked_revision() == "1"


def test_pull_builds_on_the_target(rig: Rig, lab: Lab) -> None:
    revision = f"pull-{uuid.uuid4().hex[:8]}"  # a generation this machine has never built
    set_fixture_revision(rig.flake_dir, revision)
    activation = home_manager.pull_home(
        rig.runner, rig.target(), target_store="ssh://root@alpha", flake=rig.flake, user="deploy", host="alpha",
        nix_env=rig.nix_env,
    )
    log = rig.log.getvalue()
    assert "nix-store --realise" in log and "--derivation" in log
    assert "nix --extra-experimental-features 'nix-command flakes' build" not in log
    assert activation.generation == 1 and lab.store_has("alpha", activation.path)
    assert not Path(activation.path).exists()  # built there, not here
    assert rig.linked_revision() == revision
    assert rig.inside("sh", "-c", "ls -d /tmp/nixfab.* 2>/dev/null | wc -l") == "0"


def test_a_user_the_flake_does_not_have_is_a_build_error(rig: Rig) -> None:
    logins = rig.lab.accepted_ssh_logins("alpha")
    with pytest.raises(BuildError, match=r'homeConfigurations\."nobody@alpha"'):
        rig.push(user="nobody")
    assert rig.lab.accepted_ssh_logins("alpha") == logins


def test_a_user_the_host_does_not_have_is_refused_before_activation(rig: Rig) -> None:
    with pytest.raises(UsageError, match="there is no user 'ghost' on this host"):
        rig.push(user="ghost")
    assert rig.lab.inside("alpha", ["test", "-e", "/home/ghost"], check=False).returncode != 0


def test_activating_as_the_wrong_user_fails_with_its_output(rig: Rig) -> None:
    good = rig.push()
    with pytest.raises(ActivationFailed) as failure:
        home_manager.activate_home(rig.target(), good.path, "root")
    message = str(failure.value)
    assert "as root failed (exit 1)" in message
    assert 'USER is set to "root" but we expect "deploy"' in message and "\n" not in message
    assert rig.inside("readlink", "-f", HM_PROFILE) == good.path
    assert rig.lab.inside("alpha", ["test", "-e", "/root/.nixfab-lab-home"], check=False).returncode != 0


def test_a_path_without_activate_is_not_activated(rig: Rig) -> None:
    system = rig.lab.ssh("alpha", ["sh", "-c", "echo hi > /tmp/f; nix-store --add /tmp/f"]).stdout.strip()
    with pytest.raises(NotInStore, match="not a Home Manager generation"):
        home_manager.activate_home(rig.target(), system, "deploy")


def test_switch_builds_and_activates_on_the_machine_it_runs_on(rig: Rig) -> None:
    # Run inside the simulated host, so "this machine" is alpha and never the real one.
    program = (
        "import sys\n"
        "from deploy.activate.home_manager import switch_home\n"
        "from deploy.transport.process import LocalRunner\n"
        "from deploy.ui import Emitter\n"
        "a = switch_home(LocalRunner(Emitter()), sys.argv[1], 'deploy', 'alpha')\n"
        "print(a.generation, a.path)\n"
    )
    result = rig.lab.ssh("alpha", ["sh", "-c", f"cd {shlex.quote(str(REPO))} && exec \"$@\"", "sh",
                                   sys.executable, "-c", program, rig.flake], check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    generation, path = result.stdout.split()
    assert generation == "1" and rig.lab.store_has("alpha", path)
    assert rig.linked_revision() == "1"


def test_dry_run_push_prints_every_step_and_connects_nowhere() -> None:
    log = io.StringIO()
    echo = Emitter.plain(log)
    target = RemoteHost("box", "root@box.invalid", port=None, ssh_config=None, echo=echo, dry_run=True)
    activation = home_manager.push_home(
        LocalRunner(echo, dry_run=True), target, target_store="ssh://root@box.invalid", flake="path:/nowhere",
        user="deploy", host="box", nix_env={}, out_link=Path("/nonexistent/result"),
    )
    printed = log.getvalue()
    assert """build --json --out-link /nonexistent/result 'path:/nowhere#homeConfigurations."deploy@box".activationPackage'""" in printed
    assert "+ [box] getent passwd deploy" in printed
    assert "+ [box] '<home of deploy>/activate'" in printed
    assert activation.path == "<home of deploy>" and target._connection is None
