"""Keys (hosts.yaml `keys`), end to end against the lab: what lands on the host, when, and where the secret never goes."""
from __future__ import annotations

import base64
import io
import secrets
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.errors import SudoFailed
from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from deploy.transport.remote import RemoteHost, SudoPassword
from deploy.ui import Emitter
from lab_helpers import inv, ok, toplevel_of


@dataclass
class Setup:
    lab: Lab
    flake: Path
    inventory: Path
    secrets: Path  # where the key sources live (the only place here that may hold a secret)
    logs: Path
    file_secret: str  # db-password's content (a file)
    command_secret: str  # api-token's content (what its command prints; written nowhere here)

    def deploy(self, task: str = "switch-push", *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return inv(task, "alpha", "--flake", str(self.flake), "--inventory", str(self.inventory), "--log-dir", str(self.logs), *args,
                   input=input)

    def write_inventory(self, keys: str, ssh: str = "alpha", extra: str = "") -> None:
        self.inventory.write_text(f"ssh_config: {self.lab.ssh_config}\nhosts:\n  alpha:\n    ssh: {ssh}\n{extra}    keys:\n{keys}")


KEYS = """\
      db-password: { source: secrets/db, user: deploy, group: deploy, mode: "0640" }
      api-token: { command: [base64, -d, secrets/api.b64], group: deploy, mode: "0440", upload: post-activation }
      tls: { source: secrets/db, dest: /run/secrets/tls/key.pem }
"""


@pytest.fixture
def setup(lab: Lab, tmp_path: Path) -> Setup:
    lab.up(["alpha"], record_commands=True)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    keys = tmp_path / "secrets"
    keys.mkdir()
    file_secret, command_secret = f"db-{secrets.token_hex(16)}", f"api-{secrets.token_hex(16)}"
    (keys / "db").write_text(file_secret)
    # The command decodes it, so the secret itself is in no file and in no command line here.
    (keys / "api.b64").write_text(base64.b64encode(command_secret.encode()).decode())
    made = Setup(lab, flake, tmp_path / "hosts.yaml", keys, tmp_path / "logs", file_secret, command_secret)
    made.write_inventory(KEYS)
    return made


def on_host(lab: Lab, *argv: str) -> str:
    return lab.inside("alpha", list(argv)).stdout


def stat(lab: Lab, path: str) -> str:
    return on_host(lab, "stat", "-c", "%U %G %a", path).strip()


def exists(lab: Lab, path: str) -> bool:
    return lab.inside("alpha", ["test", "-e", path], check=False).returncode == 0


def files_holding(secret: str, places: Iterable[Path]) -> list[str]:
    found = subprocess.run(["grep", "-rlF", "--", secret, *map(str, places)], capture_output=True, text=True)
    # Other Nix commands on this machine may remove a file (a build's .lock) while grep walks the store.
    vanished = all(line.endswith("No such file or directory") for line in found.stderr.splitlines())
    assert found.returncode in (0, 1) or (found.returncode == 2 and vanished), found.stderr
    return found.stdout.split()


def test_a_deploy_puts_each_key_in_place_with_its_owner_and_mode_and_the_secret_goes_nowhere_else(setup: Setup) -> None:
    lab = setup.lab
    result = ok(setup.deploy("switch-push", "-v"))  # -v: every command is shown, and none of them may hold a secret
    assert stat(lab, "/run/keys/db-password") == "deploy deploy 640"
    assert on_host(lab, "cat", "/run/keys/db-password") == setup.file_secret
    assert stat(lab, "/run/keys/api-token") == "root deploy 440"
    assert on_host(lab, "cat", "/run/keys/api-token") == setup.command_secret
    assert stat(lab, "/run/secrets/tls/key.pem") == "root root 600"
    assert stat(lab, "/run/secrets/tls") == "root root 750"  # a missing directory is made 0750
    assert stat(lab, "/run/keys") == "root deploy 750"  # ... with the key's group, so the key's group reaches it
    assert ".nixfab-key" not in on_host(lab, "ls", "-A", "/run/keys", "/run/secrets/tls")  # no temporary file left behind
    assert lab.state("alpha").current_system == toplevel_of(setup.flake, "alpha")

    # The pre-activation keys were there while switch-to-configuration ran; the post-activation one was not yet.
    assert lab.keys_at_activation("alpha") == [("switch", ["db-password"])]

    # The per-host log says which key went where, with its size, and the terminal shows the same.
    log = (setup.logs / "alpha.log").read_text()
    assert f"key db-password uploaded to /run/keys/db-password ({len(setup.file_secret)} bytes, deploy:deploy 0640" in log
    assert f"key api-token uploaded to /run/keys/api-token ({len(setup.command_secret)} bytes, root:deploy 0440, post-activation)" in log
    assert f"'<' '(key db-password, {len(setup.file_secret)} bytes)'" in result.stderr

    # What the host's sshd was sent: the upload script (so the recorder saw it), never the secret.
    sent = lab.commands_sent("alpha")
    assert "nixfab-key-ready" in sent and "/run/keys/db-password" in sent
    for secret in (setup.file_secret, setup.command_secret):
        assert secret not in result.stdout + result.stderr + log + sent
        # Nowhere on disk but its source: not in a log, the journal, the lab's files or either Nix store.
        here = files_holding(secret, [setup.logs, setup.flake, lab.root, Path("/nix/store")])
        assert here == [], here
    assert files_holding(setup.file_secret, [setup.secrets]) == [str(setup.secrets / "db")]  # the search finds what is there


def test_an_up_to_date_host_still_gets_its_keys_and_a_rotated_key_replaces_the_old_one(setup: Setup) -> None:
    lab = setup.lab
    ok(setup.deploy())
    rotated = f"db-{secrets.token_hex(16)}"
    (setup.secrets / "db").write_text(rotated)
    result = ok(setup.deploy())
    assert "up to date" in result.stderr
    assert on_host(lab, "cat", "/run/keys/db-password") == rotated
    assert stat(lab, "/run/keys/db-password") == "deploy deploy 640"
    assert len(lab.keys_at_activation("alpha")) == 1  # nothing was activated again


def test_keys_over_a_sudo_login_share_stdin_with_the_sudo_password_and_neither_leaks(setup: Setup) -> None:
    lab = setup.lab
    setup.write_inventory(KEYS, ssh="deploy@alpha")
    result = ok(setup.deploy("switch-push", "-v", input=lab.sudo_password + "\n"))
    assert on_host(lab, "cat", "/run/keys/db-password") == setup.file_secret  # the password line did not end up in the key
    assert on_host(lab, "cat", "/run/keys/api-token") == setup.command_secret
    assert stat(lab, "/run/keys/db-password") == "deploy deploy 640"
    assert "+ [alpha] sudo sh -c" in result.stderr
    log = (setup.logs / "alpha.log").read_text()
    sent = lab.commands_sent("alpha")
    assert "sudo -S -p" in sent
    for secret in (setup.file_secret, setup.command_secret, lab.sudo_password):
        assert secret not in result.stdout + result.stderr + log + sent


def test_the_secret_goes_only_to_a_command_that_said_it_is_ready_after_sudo_took_its_password(lab: Lab) -> None:
    lab.up(["alpha"])

    def deploy_login(password: str) -> RemoteHost:
        return RemoteHost(
            "alpha", "deploy@alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()), use_sudo=True,
            sudo_password=SudoPassword(_value=password),
        )

    probe = ["sh", "-c", 'echo ready; cat > /run/probe; id -u > /run/probe-uid']
    refused = deploy_login("not-the-password")
    try:
        with pytest.raises(SudoFailed, match="sudo refused the password for deploy"):
            refused.run_with_secret(probe, b"the secret", sudo=True, describe="(a secret)", ready="ready")
    finally:
        refused.close()
    assert not exists(lab, "/run/probe")

    accepted = deploy_login(lab.sudo_password)
    try:
        result = accepted.run_with_secret(probe, b"the secret", sudo=True, describe="(a secret)", ready="ready")
        assert result.ok and result.stdout.splitlines() == ["ready"]
        assert on_host(lab, "cat", "/run/probe") == "the secret" and on_host(lab, "cat", "/run/probe-uid").strip() == "0"
        # A command that ends without saying it is ready gets nothing, and its status comes back.
        ended = accepted.run_with_secret(["sh", "-c", "exit 4"], b"the secret", sudo=True, describe="(a secret)", ready="ready")
        assert ended.returncode == 4
        # sshd sends the exit status when the command exits, maybe before the output still on its way: none of it is lost.
        late = ["sh", "-c", "echo ready; cat > /dev/null; (sleep 1; echo late) & exit 0"]
        assert accepted.run_with_secret(late, b"x", sudo=True, describe="(a secret)", ready="ready").stdout.split() == ["ready", "late"]
    finally:
        accepted.close()

    # A sudo that asks for no password gets none: the first byte on stdin is the secret's.
    sudoers = lab.host("alpha").directory / "etc" / "sudoers"
    sudoers.write_text(sudoers.read_text().replace("deploy ALL=(ALL:ALL) ALL", "deploy ALL=(ALL:ALL) NOPASSWD: ALL"))

    class NeverAsked(SudoPassword):
        def get(self) -> str:
            raise AssertionError("the password was asked for")

    unasked = RemoteHost(
        "alpha", "deploy@alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()), use_sudo=True,
        sudo_password=NeverAsked(),
    )
    try:
        assert unasked.run_with_secret(probe, b"another secret", sudo=True, describe="(a secret)", ready="ready").ok
    finally:
        unasked.close()
    assert on_host(lab, "cat", "/run/probe") == "another secret"


def test_a_missing_source_or_a_failing_command_stops_the_host_before_anything_changes(setup: Setup) -> None:
    lab = setup.lab
    ok(setup.deploy())
    set_fixture_revision(setup.flake, "2")
    (setup.secrets / "db").unlink()
    logins = lab.accepted_ssh_logins("alpha")
    missing = setup.deploy()
    assert missing.returncode == 19, missing.stderr
    assert f"alpha | error: key 'db-password': {setup.secrets / 'db'} does not exist" in missing.stderr
    assert "nothing was changed on alpha" in missing.stderr and "Traceback" not in missing.stderr
    assert lab.accepted_ssh_logins("alpha") == logins  # not even a connection
    state = lab.state("alpha")
    assert state.current_generation == 1 and [g.number for g in state.generations] == [1]

    (setup.secrets / "db").write_text(setup.file_secret)
    setup.write_inventory(KEYS.replace("[base64, -d, secrets/api.b64]", "'echo the vault is sealed >&2; exit 3'"))
    failing = setup.deploy()
    assert failing.returncode == 19, failing.stderr
    assert "key 'api-token': command `echo the vault is sealed >&2; exit 3` failed (exit 3): the vault is sealed" in failing.stderr
    assert lab.accepted_ssh_logins("alpha") == logins
    assert lab.state("alpha").current_generation == 1


def test_a_pre_activation_key_whose_user_is_missing_stops_the_host_with_its_profile_unchanged(setup: Setup) -> None:
    lab = setup.lab
    setup.write_inventory("      db-password: { source: secrets/db, user: no-such-user }\n")
    result = setup.deploy()
    assert result.returncode == 19, result.stderr
    assert "key 'db-password' was not uploaded to /run/keys/db-password: user 'no-such-user' does not exist on the host" in result.stderr
    assert "upload the key post-activation" in result.stderr
    assert lab.state("alpha").generations == () and lab.keys_at_activation("alpha") == []
    assert not exists(lab, "/run/keys/db-password")


def test_a_rolled_back_deploy_uploads_no_post_activation_key(setup: Setup) -> None:
    lab = setup.lab
    setup.write_inventory(KEYS, extra="    attr: alpha-broken\n")
    result = setup.deploy()
    assert result.returncode == 6 and "rolled back" in result.stderr
    assert lab.keys_at_activation("alpha")[0] == ("switch", ["db-password"])
    assert exists(lab, "/run/keys/db-password")
    assert not exists(lab, "/run/keys/api-token")


def test_the_keys_task_uploads_keys_alone_and_its_dry_run_only_says_what_it_would_do(setup: Setup) -> None:
    lab = setup.lab
    logins = lab.accepted_ssh_logins("alpha")
    dry = ok(inv("keys", "alpha", "--inventory", str(setup.inventory), "--flake", str(setup.flake), "--dry-run"))
    assert "would upload key db-password from file " + str(setup.secrets / "db") + " to /run/keys/db-password (deploy:deploy 0640" in dry.stderr
    assert "would upload key api-token from command `base64 -d secrets/api.b64` to /run/keys/api-token" in dry.stderr
    assert "planned" in dry.stderr
    assert lab.accepted_ssh_logins("alpha") == logins and not exists(lab, "/run/keys")

    result = ok(inv("keys", "--on", "alpha", "--inventory", str(setup.inventory), "--flake", str(setup.flake), "--json"))
    assert on_host(lab, "cat", "/run/keys/db-password") == setup.file_secret
    assert on_host(lab, "cat", "/run/keys/api-token") == setup.command_secret
    assert '"result": "ok"' in result.stdout
    assert lab.state("alpha").generations == () and lab.keys_at_activation("alpha") == []
    for secret in (setup.file_secret, setup.command_secret):
        assert secret not in result.stdout + result.stderr + lab.commands_sent("alpha")


def test_a_reset_uploads_post_activation_keys_once_the_host_is_back(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    (tmp_path / "key").write_text("k")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        f"ssh_config: {lab.ssh_config}\nhosts:\n  alpha:\n    keys:\n"
        "      before: { source: key }\n      after: { source: key, upload: post-activation }\n"
    )
    ok(inv("switch-push-reset", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    assert lab.keys_at_activation("alpha") == [("boot", ["before"])]
    # The reboot emptied /run: the pre-activation key went with it; the post-activation one came after.
    assert not exists(lab, "/run/keys/before") and exists(lab, "/run/keys/after")


def test_a_key_file_nix_would_copy_with_the_flake_is_refused_before_anything_runs(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    secret = f"in-flake-{secrets.token_hex(16)}"
    (flake / "secrets").mkdir()
    (flake / "secrets" / "db").write_text(secret)
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"ssh_config: {lab.ssh_config}\nhosts:\n  alpha:\n    keys:\n      db: {{ source: {flake}/secrets/db }}\n")
    logins = lab.accepted_ssh_logins("alpha")

    def deploy() -> subprocess.CompletedProcess[str]:
        return inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory))

    # A flake in no git checkout is copied whole: the key would be in the store with it.
    refused = deploy()
    assert refused.returncode == 2, refused.stderr
    assert f"key 'db' of alpha: {flake}/secrets/db: Nix copies this file into the store with the flake" in refused.stderr
    assert "nix flake check" not in refused.stderr and lab.accepted_ssh_logins("alpha") == logins

    # In a git flake only tracked files are copied: an untracked key file is fine, a tracked one is not.
    git = ["git", "-C", str(flake), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "--", ".", ":!secrets"], check=True)
    ok(deploy())
    assert on_host(lab, "cat", "/run/keys/db") == secret
    assert files_holding(secret, [lab.root, Path("/nix/store")]) == []
    subprocess.run([*git, "add", "secrets/db"], check=True)
    assert deploy().returncode == 2
