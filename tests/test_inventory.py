"""hosts.yaml parsing: the dataclasses it yields, and a precise `file:line:column` for every mistake."""
from __future__ import annotations

import dataclasses
import pickle
import textwrap
from pathlib import Path

import pytest

from deploy.config.inventory import (
    ATTR_PATTERN,
    NAME_PATTERN,
    BuilderSpec,
    HealthCheck,
    HostSpec,
    Inventory,
    KeySpec,
    SshTarget,
    load_inventory,
    parse_ssh_target,
)
from deploy.errors import InventoryError, UsageError
from deploy.model import KeyUpload

INJECTION_NAMES = ["a;touch x", "$(id)", "a\nb", "-oProxyCommand=x", "a b", "`id`", "alpha\n", "a|b", "a&b", "a>b"]


def write_inventory(directory: Path, text: str, name: str = "hosts.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def inventory_error(path: Path) -> str:
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert "\n" not in message, "errors must be one line"
    return message


def error_for(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write_inventory(tmp_path, text)
    return path, inventory_error(path)


# ---- a valid inventory ----------------------------------------------------------------------------

FULL_EXAMPLE = """
    ssh_config: ./ssh_config
    defaults: { build_on: local, sudo: false, tags: [] }
    hosts:
      bigmachine:
        ssh: myname@bigmachine
        attr: bigmachine
        build_on: target
        tags: [lab]
        sudo: true
      alpha:
      beta: { ssh: "deploy@[2001:db8::1]:2222", build_on: buildbox, attr: beta-vm, tags: [lab, web, lab] }
      gamma:
        ssh: 10.0.0.7:2200
        build_on: bigmachine
    builders:
      buildbox: { ssh: root@10.0.0.5 }
"""


@pytest.fixture
def full_inventory(tmp_path: Path) -> Inventory:
    (tmp_path / "ssh_config").write_text("Host *\n")
    return load_inventory(write_inventory(tmp_path, FULL_EXAMPLE))


def test_full_example_parses_to_dataclasses(tmp_path: Path, full_inventory: Inventory) -> None:
    assert full_inventory.path == tmp_path / "hosts.yaml"
    assert full_inventory.ssh_config == tmp_path / "ssh_config"
    assert full_inventory.ssh_config.is_absolute()
    assert full_inventory.default_build_on == "local"
    assert full_inventory.default_sudo is False
    assert list(full_inventory.hosts) == ["bigmachine", "alpha", "beta", "gamma"]  # file order
    assert full_inventory.hosts["bigmachine"] == HostSpec(
        name="bigmachine",
        ssh=SshTarget("bigmachine", "myname"),
        attr="bigmachine",
        build_on="target",
        tags=("lab",),
        sudo=True,
        declared=True,
    )
    assert full_inventory.hosts["beta"] == HostSpec(
        name="beta",
        ssh=SshTarget("2001:db8::1", "deploy", 2222),
        attr="beta-vm",
        build_on="buildbox",
        tags=("lab", "web"),  # repeats dropped, order kept
        sudo=False,
        declared=True,
    )
    assert full_inventory.hosts["gamma"].ssh == SshTarget("10.0.0.7", None, 2200)
    assert full_inventory.hosts["gamma"].build_on == "bigmachine"
    assert full_inventory.builders == {"buildbox": BuilderSpec("buildbox", SshTarget("10.0.0.5", "root"))}


def test_empty_host_entry_takes_all_defaults(full_inventory: Inventory) -> None:
    assert full_inventory.hosts["alpha"] == HostSpec(
        name="alpha", ssh=SshTarget("alpha"), attr="alpha", build_on="local", tags=(), sudo=False, declared=True
    )


def test_inventory_is_immutable(full_inventory: Inventory) -> None:
    with pytest.raises(TypeError):
        full_inventory.hosts["new"] = full_inventory.hosts["alpha"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        full_inventory.default_sudo = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        full_inventory.hosts["alpha"].sudo = True  # type: ignore[misc]
    hash(full_inventory)


def test_plain_dicts_passed_to_inventory_are_frozen_copies() -> None:
    hosts = {"alpha": HostSpec("alpha", SshTarget("alpha"), "alpha", "local", (), False, True)}
    inventory = Inventory(hosts=hosts)
    hosts.clear()
    assert list(inventory.hosts) == ["alpha"]
    with pytest.raises(TypeError):
        inventory.hosts["beta"] = inventory.hosts["alpha"]  # type: ignore[index]


def test_the_flake_check_is_asked_for_in_defaults_only(tmp_path: Path) -> None:
    assert load_inventory(write_inventory(tmp_path, "defaults: { check: true }\nhosts:\n  alpha:\n")).check is True
    assert load_inventory(write_inventory(tmp_path, "hosts:\n  alpha:\n")).check is False
    path, message = error_for(tmp_path, "hosts:\n  alpha: { check: true }\n")
    assert message == f"{path}:2:12: 'check' is allowed only in 'defaults': `nix flake check` checks the whole flake, not one host"
    path, message = error_for(tmp_path, "defaults:\n  check: 'true'\n")
    assert message == f"{path}:2:10: 'check' must be true or false, not 'true' (remove the quotes)"


def test_defaults_apply_to_hosts_that_do_not_override_them(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        """
        defaults: { build_on: buildbox, sudo: true, tags: [fleet] }
        hosts:
          alpha:
          beta: { build_on: local, sudo: false, tags: [solo] }
          buildhost: {}
        builders:
          buildbox:
        """,
    )
    inventory = load_inventory(path)
    assert inventory.default_build_on == "buildbox"
    assert inventory.default_sudo is True
    assert inventory.default_tags == ("fleet",)
    alpha, beta = inventory.hosts["alpha"], inventory.hosts["beta"]
    assert (alpha.build_on, alpha.sudo, alpha.tags) == ("buildbox", True, ("fleet",))
    assert (beta.build_on, beta.sudo, beta.tags) == ("local", False, ("solo",))
    # A builder with no settings is reached by its name, like a host.
    assert inventory.builders["buildbox"].ssh == SshTarget("buildbox")


def test_building_on_itself_by_name_means_target(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        """
        defaults: { build_on: alpha }
        hosts:
          alpha:
          beta: { build_on: beta }
        """,
    )
    inventory = load_inventory(path)
    assert inventory.hosts["alpha"].build_on == "target"  # the default names alpha itself
    assert inventory.hosts["beta"].build_on == "target"
    assert inventory.host("gamma").build_on == "alpha"


def test_yaml_values_typed_by_resolution(tmp_path: Path) -> None:
    # Unquoted numbers keep their text as names and addresses; yes/no are YAML 1.1 booleans.
    path = write_inventory(
        tmp_path,
        """
        hosts:
          1box: { sudo: yes }
          123: { ssh: 4567, attr: _x }
        """,
    )
    inventory = load_inventory(path)
    assert inventory.hosts["1box"].attr == "1box"
    assert inventory.hosts["1box"].sudo is True
    assert inventory.hosts["123"].ssh == SshTarget("4567")
    assert inventory.hosts["123"].attr == "_x"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n", "hosts:\nbuilders:\ndefaults:\n"])
def test_empty_documents_are_empty_inventories(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    inventory = load_inventory(path)
    assert dict(inventory.hosts) == {} and dict(inventory.builders) == {}
    assert (inventory.default_build_on, inventory.default_sudo, inventory.ssh_config) == ("local", False, None)


def test_byte_order_mark_is_ignored_and_columns_stay_right(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_bytes(b"\xef\xbb\xbfhostz: {}\n")
    assert inventory_error(path).startswith(f"{path}:1:1: unknown key 'hostz' at the top level")


def test_missing_file_is_an_empty_inventory(tmp_path: Path) -> None:
    inventory = load_inventory(tmp_path / "hosts.yaml")
    assert inventory == Inventory(path=None, ssh_config=None, hosts={}, builders={}, default_build_on="local", default_sudo=False)
    assert inventory.host("alpha").declared is False


def test_missing_file_when_required(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    with pytest.raises(InventoryError, match="no such inventory file") as caught:
        load_inventory(path, required=True)
    assert str(caught.value) == f"{path}: no such inventory file"
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory, not an inventory file"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_inventory(tmp_path, "hosts: {}\n")

    # chmod 0 would not stop a test running as root, so fail the read directly.
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert inventory_error(path) == f"{path}: cannot read inventory: Permission denied"


def test_invalid_utf8_points_at_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_bytes(b"hosts:\n  al\xffpha:\n")
    assert inventory_error(path) == f"{path}:2:5: not valid UTF-8 (byte 0xff)"


# ---- Inventory.host() and builder_target() -----------------------------------------------------


def test_user_at_host_overrides_user_and_implies_sudo(full_inventory: Inventory) -> None:
    alpha = full_inventory.host("deploy@alpha")
    assert alpha.ssh == SshTarget("alpha", "deploy")
    assert alpha.ssh.destination() == "deploy@alpha"
    assert alpha.sudo is True
    assert alpha.declared is True
    assert full_inventory.host("root@alpha").sudo is False
    assert full_inventory.host("alpha") == full_inventory.hosts["alpha"]


def test_user_override_keeps_declared_address_and_port(full_inventory: Inventory) -> None:
    beta = full_inventory.host("ops@beta")
    assert beta.ssh == SshTarget("2001:db8::1", "ops", 2222)
    assert beta.attr == "beta-vm"
    assert full_inventory.host("root@beta").sudo is False  # the declared user 'deploy' no longer applies


def test_declared_non_root_user_implies_sudo(full_inventory: Inventory) -> None:
    # hosts[] keeps what the file says; host() gives what deploying needs.
    assert full_inventory.hosts["beta"].sudo is False
    assert full_inventory.host("beta").sudo is True


def test_unknown_host_is_synthesized(full_inventory: Inventory) -> None:
    assert full_inventory.host("zeta") == HostSpec(
        name="zeta", ssh=SshTarget("zeta"), attr="zeta", build_on="local", tags=(), sudo=False, declared=False
    )
    synthesized = full_inventory.host("admin@1box")
    assert synthesized.ssh == SshTarget("1box", "admin")
    assert (synthesized.sudo, synthesized.declared) == (True, False)


def test_synthesized_host_follows_defaults(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, "defaults: { build_on: target, sudo: true }\n")
    zeta = load_inventory(path).host("root@zeta")
    assert (zeta.build_on, zeta.sudo, zeta.ssh) == ("target", True, SshTarget("zeta", "root"))


def test_deploying_to_a_builder_uses_its_ssh_target(full_inventory: Inventory) -> None:
    buildbox = full_inventory.host("buildbox")
    assert buildbox.ssh == SshTarget("10.0.0.5", "root")
    assert (buildbox.sudo, buildbox.declared) == (False, False)


@pytest.mark.parametrize("machine", [*INJECTION_NAMES, "", "alpha:22", "a@b@c", "x" * 64, "_alpha", "ålpha"])
def test_host_refuses_invalid_names(full_inventory: Inventory, machine: str) -> None:
    with pytest.raises(InventoryError, match=r"^invalid host name ") as caught:
        full_inventory.host(machine)
    assert "\n" not in str(caught.value)


def test_host_error_quotes_names_safely(full_inventory: Inventory) -> None:
    with pytest.raises(InventoryError) as caught:
        full_inventory.host("a\nb")
    assert str(caught.value).startswith("invalid host name 'a\\nb': contains whitespace")
    with pytest.raises(InventoryError) as caught:
        full_inventory.host("-oProxyCommand=x")
    assert str(caught.value).startswith("invalid host name '-oProxyCommand=x': starts with '-'")


@pytest.mark.parametrize("machine", ["@alpha", "Root@alpha", "a;b@alpha", "-o@alpha", "$(id)@alpha"])
def test_host_refuses_invalid_users(full_inventory: Inventory, machine: str) -> None:
    with pytest.raises(InventoryError, match=r"^invalid user "):
        full_inventory.host(machine)


def test_builder_target(full_inventory: Inventory) -> None:
    assert full_inventory.builder_target("buildbox") == SshTarget("10.0.0.5", "root")
    assert full_inventory.builder_target("bigmachine") == SshTarget("bigmachine", "myname")
    with pytest.raises(InventoryError) as caught:
        full_inventory.builder_target("buildbx")
    assert str(caught.value) == f"'buildbx' is not a builder or host in {full_inventory.path} (did you mean 'buildbox'?)"
    with pytest.raises(InventoryError, match="no inventory file"):
        Inventory().builder_target("buildbox")


# ---- parse_ssh_target and SshTarget -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpha", SshTarget("alpha")),
        ("root@alpha", SshTarget("alpha", "root")),
        ("deploy@alpha.example.org:2222", SshTarget("alpha.example.org", "deploy", 2222)),
        ("10.0.0.5", SshTarget("10.0.0.5")),
        ("10.0.0.5:22", SshTarget("10.0.0.5", None, 22)),
        ("lab_alpha", SshTarget("lab_alpha")),
        ("[::1]", SshTarget("::1")),
        ("[::1]:22", SshTarget("::1", None, 22)),
        ("_svc.x-1@[2001:db8::ffff:10.0.0.1]:65535", SshTarget("2001:db8::ffff:10.0.0.1", "_svc.x-1", 65535)),
    ],
)
def test_parse_ssh_target_accepts(text: str, expected: SshTarget) -> None:
    target = parse_ssh_target(text)
    assert target == expected
    assert str(target) == text
    assert parse_ssh_target(str(target)) == target


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("a;touch x", "contains ';'"),
        ("$(id)", "contains '$'"),
        ("a\nb", "contains whitespace ('\\n')"),
        ("-oProxyCommand=x", "starts with '-'"),
        ("a b", "contains whitespace (' ')"),
        ("`id`", "contains '`'"),
        ("alpha\n", "contains whitespace ('\\n')"),
        ("root@-oProxyCommand=x", "contains '='"),
        ("root@-alpha", "address starts with '-'"),
        ("root@", "empty address"),
        ("@alpha", "empty user name before '@'"),
        ("a@b@c", "more than one '@'"),
        ("Root@alpha", "user name must start with a lowercase letter"),
        ("-u@alpha", "starts with '-'"),
        ("u" * 33 + "@alpha", "user name is longer than 32 characters"),
        ("alpha:", "empty port after ':'"),
        ("alpha:0", "port 0 is not between 1 and 65535"),
        ("alpha:65536", "port 65536 is not between 1 and 65535"),
        ("alpha:ssh", "port 'ssh' is not a number"),
        (":22", "empty address"),
        ("::1", "IPv6 address must be written in brackets"),
        ("[::1", "'[' without a closing ']'"),
        ("[]", "empty address in '[]'"),
        ("[::1]x", "unexpected text after ']'"),
        ("[::1]:", "empty port after ':'"),
        ("[10.0.0.1]", "'10.0.0.1' is not an IPv6 address"),
        ("[fe80::1%eth0]", "contains '%'"),
        ("[::g]", "'::g' is not an IPv6 address"),
        (".alpha", "address must start with a letter or digit"),
        ("a" * 254, "address is longer than 253 characters"),
        ("ålpha", "contains 'å'"),
    ],
)
def test_parse_ssh_target_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_ssh_target(text)
    message = str(caught.value)
    assert message.startswith("invalid ssh target ")
    if len(text) <= 80:
        assert message.startswith(f"invalid ssh target {text!r}: ")
    assert reason in message
    assert "\n" not in message


def test_ssh_target_validates_on_construction() -> None:
    for bad in [lambda: SshTarget("a;b"), lambda: SshTarget("-oX"), lambda: SshTarget("alpha", "a b"), lambda: SshTarget("alpha", None, 0)]:
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        SshTarget("alpha").with_user("$(id)")


def test_ssh_target_destination_and_with_user() -> None:
    assert SshTarget("alpha").destination() == "alpha"
    assert SshTarget("alpha", "root", 2222).destination() == "root@alpha"  # the port goes to -p
    assert SshTarget("::1", "root").destination() == "root@::1"
    assert SshTarget("alpha", "root", 22).with_user("deploy") == SshTarget("alpha", "deploy", 22)
    assert SshTarget("alpha", "root").with_user(None) == SshTarget("alpha")


def test_name_and_attr_patterns() -> None:
    for good in ["alpha", "1box", "a-b_c", "A" * 63]:
        assert NAME_PATTERN.match(good)
    for bad in ["", "-a", "_a", "a.b", "a\n", "A" * 64, *INJECTION_NAMES]:
        assert not NAME_PATTERN.match(bad), bad
    for good in ["alpha", "1box", "_private", "a-b"]:
        assert ATTR_PATTERN.match(good)
    for bad in ["", "-a", "a.b", "a'b", "x\n", '"x"']:
        assert not ATTR_PATTERN.match(bad), bad


# ---- errors: file:line:column: problem --------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path, message = error_for(
        tmp_path,
        """
        hosts:
          alpha:
            ssh: alpha
            attr: x: y
        """,
    )
    assert message == f"{path}:4:12: invalid YAML: mapping values are not allowed here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hosts: [alpha\n", "2:1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        ("hosts:\n\talpha:\n", "2:1: invalid YAML: found character '\\t' that cannot start any token"),
        ("a: 1\n---\nb: 2\n", "2:1: invalid YAML: but found another document"),
        ("hosts: *nothing\n", "1:8: invalid YAML: found undefined alias 'nothing'"),
        ("hosts: \x07\n", "1:8: invalid YAML: unacceptable character #x0007: special characters are not allowed"),
    ],
)
def test_yaml_errors_have_positions(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    assert inventory_error(path) == f"{path}:{expected}"


def test_deep_nesting_does_not_escape_as_traceback(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts: " + "[" * 600 + "]" * 600 + "\n")
    assert inventory_error(path) == f"{path}: invalid YAML: nested too deeply"


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("- alpha\n", "1:1", "the inventory must be a mapping with keys builders, defaults, hosts, ssh_config, not a list"),
        ("just text\n", "1:1", "the inventory must be a mapping with keys builders, defaults, hosts, ssh_config, not 'just text'"),
        (
            "hosts: {}\nhost: {}\n",
            "2:1",
            "unknown key 'host' at the top level (expected one of: builders, defaults, hosts, ssh_config); did you mean 'hosts'?",
        ),
        (
            "hosts:\n  alpha:\n    bulid_on: local\n",
            "3:5",
            "unknown key 'bulid_on' in host 'alpha' (expected one of: attr, build_on, health, keys, ssh, sudo, tags); did you mean 'build_on'?",
        ),
        ("hosts:\n  alpha:\n    colour: red\n", "3:5", "unknown key 'colour' in host 'alpha' (expected one of: attr, build_on, health, keys, ssh, sudo, tags)"),
        ("defaults:\n  attr: x\n", "2:3", "'attr' is not allowed in 'defaults': it is per host and defaults to the host's name"),
        ("defaults:\n  ssh: x\n", "2:3", "'ssh' is not allowed in 'defaults': it is per host and defaults to the host's name"),
        (
            "defaults:\n  sudoo: true\n", "2:3",
            "unknown key 'sudoo' in 'defaults' (expected one of: build_on, check, health, keys, sudo, tags); did you mean 'sudo'?",
        ),
        ("builders:\n  b: { ssh: x, port: 22 }\n", "2:16", "unknown key 'port' in builder 'b' (expected one of: ssh)"),
        ("hosts:\n  alpha:\n    ssh: a\n    ssh: b\n", "4:5", "duplicate key 'ssh' in host 'alpha' (first on line 3)"),
        ("hosts: {}\nhosts:\n  alpha:\n", "2:1", "duplicate key 'hosts' at the top level (first on line 1)"),
        ("hosts:\n  alpha:\n  beta:\n  alpha: {}\n", "4:3", "duplicate host 'alpha' (first defined on line 2)"),
        ("builders:\n  b1:\n  b1:\n", "3:3", "duplicate builder 'b1' (first defined on line 2)"),
        ("hosts:\n  box:\nbuilders:\n  box:\n", "4:3", "'box' is both a host and a builder (the host is on line 2)"),
        ("builders:\n  box:\nhosts:\n  box:\n", "4:3", "'box' is both a host and a builder (the builder is on line 2)"),
        ("hosts: [alpha, beta]\n", "1:8", "'hosts' must be a mapping, not a list"),
        ("builders: buildbox\n", "1:11", "'builders' must be a mapping, not 'buildbox'"),
        ("defaults: [local]\n", "1:11", "'defaults' must be a mapping, not a list"),
        ("hosts:\n  alpha: alpha.lan\n", "2:10", "host 'alpha' must be a mapping, not 'alpha.lan'"),
        ("builders:\n  b: root@b\n", "2:6", "builder 'b' must be a mapping, not 'root@b'"),
        ("hosts:\n  alpha: { sudo: yes-please }\n", "2:18", "'sudo' must be true or false, not 'yes-please'"),
        ("hosts:\n  alpha: { sudo: 'true' }\n", "2:18", "'sudo' must be true or false, not 'true' (remove the quotes)"),
        ("hosts:\n  alpha: { sudo: 1 }\n", "2:18", "'sudo' must be true or false, not the number '1'"),
        ("hosts:\n  alpha: { sudo: }\n", "2:17", "'sudo' must be true or false, not empty (null)"),
        ("defaults: { sudo: [true] }\n", "1:19", "'sudo' must be true or false, not a list"),
        ("hosts:\n  alpha: { ssh: [a, b] }\n", "2:17", "'ssh' must be a string, not a list"),
        ("hosts:\n  alpha: { ssh: true }\n", "2:17", "'ssh' must be a string, not the boolean 'true'"),
        ("hosts:\n  alpha: { ssh: 2024-01-01 }\n", "2:17", "'ssh' must be a string, not the date '2024-01-01'"),
        ("hosts:\n  alpha: { attr: {x: 1} }\n", "2:18", "'attr' must be a string, not a mapping"),
        ("hosts:\n  alpha: { build_on: ~ }\n", "2:22", "'build_on' must be a string, not empty (null)"),
        ("hosts:\n  alpha: { tags: lab }\n", "2:18", "'tags' must be a list of names, not 'lab' (write [lab])"),
        ("hosts:\n  alpha: { tags: {lab: 1} }\n", "2:18", "'tags' must be a list of names, not a mapping"),
        ("hosts:\n  alpha: { tags: [lab, [x]] }\n", "2:24", "each tag must be a string, not a list"),
        ("hosts:\n  alpha: { tags: [lab, 'web ui'] }\n", "2:24", "invalid tag 'web ui': contains whitespace (' ')"),
        ("defaults: { tags: [-x] }\n", "1:20", "invalid tag '-x': starts with '-'"),
        ("hosts:\n  alpha: { attr: 'alpha.beta' }\n", "2:18", "invalid attr 'alpha.beta': use letters, digits, '_' and '-'"),
        ("hosts:\n  alpha: { attr: '' }\n", "2:18", "invalid attr '': empty"),
        ("hosts:\n  alpha: { attr: '-x' }\n", "2:18", "invalid attr '-x'"),
        ("hosts:\n  alpha: { ssh: 'root@a b' }\n", "2:17", "invalid ssh target 'root@a b': contains whitespace (' ')"),
        ("hosts:\n  alpha: { ssh: 'alpha:99999' }\n", "2:17", "invalid ssh target 'alpha:99999': port 99999 is not between 1 and 65535"),
        ("builders:\n  b: { ssh: '-oProxyCommand=x' }\n", "2:13", "invalid ssh target '-oProxyCommand=x': starts with '-'"),
        ("hosts:\n  alpha:\n  'al pha':\n", "3:3", "invalid host name 'al pha': contains whitespace (' ')"),
        ("hosts:\n  ? ''\n", "2:5", "invalid host name '': empty"),
        ("hosts:\n  " + "x" * 64 + ":\n", "2:3", "invalid host name '" + "x" * 64 + "': longer than 63 characters"),
        ("builders:\n  'b;x':\n", "2:3", "invalid builder name 'b;x': contains ';'"),
        ("builders:\n  local:\n", "2:3", "builder name 'local' is reserved (build_on: local has its own meaning)"),
        ("builders:\n  target: {}\n", "2:3", "builder name 'target' is reserved"),
        ("hosts:\n  [a, b]: {}\n", "2:3", "keys must be names, not a list"),
        ("hosts:\n  ~: {}\n", "2:3", "keys must be names, not empty (null)"),
        ("hosts:\n  yes: {}\n", "2:3", "keys must be names, not the boolean 'yes'"),
        (
            "common: &c { sudo: true }\n",
            "1:1",
            "unknown key 'common' at the top level",
        ),
        ("hosts:\n  alpha:\n    <<: {sudo: true}\n", "3:5", "YAML merge keys ('<<') are not supported; put shared settings under 'defaults'"),
        (
            "hosts:\n  alpha: { build_on: buildbx }\nbuilders:\n  buildbox:\n",
            "2:22",
            "build_on: 'buildbx' is not a builder or host (did you mean 'buildbox'?)",
        ),
        (
            "hosts:\n  alpha: { build_on: lcoal }\n",
            "2:22",
            "build_on: 'lcoal' is not a builder or host (did you mean 'local'?)",
        ),
        (
            "hosts:\n  alpha: { build_on: zzzzzz }\n",
            "2:22",
            "build_on: 'zzzzzz' is not a builder or host (expected local, target, or the name of a builder or host)",
        ),
        (
            "defaults: { build_on: alhpa }\nhosts:\n  alpha:\n",
            "1:23",
            "build_on: 'alhpa' is not a builder or host (did you mean 'alpha'?)",
        ),
        (
            "hosts:\n  alpha: { build_on: 'a;touch x' }\n",
            "2:22",
            "build_on: 'a;touch x' is not a builder or host",
        ),
    ],
)
def test_problems_point_at_line_and_column(tmp_path: Path, text: str, position: str, problem: str) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    message = inventory_error(path)
    assert message.startswith(f"{path}:{position}: {problem}"), message


@pytest.mark.parametrize("name", INJECTION_NAMES)
def test_injection_looking_names_are_refused_from_yaml(tmp_path: Path, name: str) -> None:
    quoted = '"' + name.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'
    for text, kind in [
        (f"hosts:\n  {quoted}:\n", "invalid host name"),
        (f"builders:\n  {quoted}:\n", "invalid builder name"),
        (f"hosts:\n  alpha: {{ tags: [{quoted}] }}\n", "invalid tag"),
        (f"hosts:\n  alpha: {{ attr: {quoted} }}\n", "invalid attr"),
        (f"hosts:\n  alpha: {{ ssh: {quoted} }}\n", "invalid ssh target"),
        (f"builders:\n  b: {{ ssh: {quoted} }}\n", "invalid ssh target"),
        (f"hosts:\n  alpha: {{ ssh: {quoted.replace(chr(34), chr(34) + 'root@', 1)} }}\n", "invalid ssh target"),
    ]:
        path = tmp_path / "hosts.yaml"
        path.write_text(text)
        message = inventory_error(path)
        assert message.startswith(f"{path}:2:"), message
        assert f": {kind} " in message, message
        assert repr(name) in message or repr("root@" + name) in message, message


def test_ssh_config_missing(tmp_path: Path) -> None:
    path, message = error_for(tmp_path, "ssh_config: ./ssh_config\n")
    assert message == f"{path}:1:13: ssh_config './ssh_config' does not exist (looked for {str(tmp_path / 'ssh_config')!r})"


def test_ssh_config_with_whitespace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "my config").write_text("")
    path, message = error_for(tmp_path, "hosts:\nssh_config: 'my config'\n")
    assert message.startswith(f"{path}:2:13: ssh_config 'my config' contains whitespace")
    assert "NIX_SSHOPTS" in message


def test_ssh_config_in_directory_with_whitespace_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "with space"
    directory.mkdir()
    (directory / "ssh_config").write_text("")
    path = write_inventory(directory, "ssh_config: ssh_config\n")
    assert inventory_error(path).startswith(f"{path}:1:13: ssh_config resolves to {str(directory / 'ssh_config')!r}, which contains whitespace")


def test_ssh_config_must_not_be_a_directory_or_empty(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    path, message = error_for(tmp_path, "ssh_config: conf.d\n")
    assert message.startswith(f"{path}:1:13: ssh_config 'conf.d' is a directory")
    path, message = error_for(tmp_path, "ssh_config: ''\n")
    assert message == f"{path}:1:13: 'ssh_config' is empty"
    path, message = error_for(tmp_path, "ssh_config: [a]\n")
    assert message == f"{path}:1:13: 'ssh_config' must be a string, not a list"


def test_ssh_config_paths_resolve_against_the_inventory_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "ssh_config").write_text("")
    inventory_dir = tmp_path / "deploy"
    inventory_dir.mkdir()
    path = write_inventory(inventory_dir, "ssh_config: ../etc/ssh_config\n")
    monkeypatch.chdir(tmp_path / "etc")  # the working directory must not matter
    assert load_inventory(path).ssh_config == tmp_path / "etc" / "ssh_config"
    # A relative inventory path still yields an absolute ssh_config.
    monkeypatch.chdir(inventory_dir)
    assert load_inventory(Path("hosts.yaml")).ssh_config == tmp_path / "etc" / "ssh_config"
    absolute = write_inventory(inventory_dir, "ssh_config: /dev/null\n")
    assert load_inventory(absolute).ssh_config == Path("/dev/null")


# ---- InventoryError: every problem, on one line -------------------------------------------------------


def test_inventory_error_with_one_problem_is_just_that_problem() -> None:
    error = InventoryError("hosts.yaml:1:1: wrong")
    assert (str(error), error.problems) == ("hosts.yaml:1:1: wrong", ["hosts.yaml:1:1: wrong"])
    assert isinstance(error, UsageError) and error.exit_code == 2
    with pytest.raises(TypeError):
        InventoryError()


def test_inventory_error_survives_pickling_with_every_problem() -> None:
    error = InventoryError("a:1:1: one", "a:2:1: two")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.problems, str(copy)) == (["a:1:1: one", "a:2:1: two"], "a:1:1: one; a:2:1: two (2 problems)")


# ---- every problem at once ----------------------------------------------------------------------------

MANY_MISTAKES = """
    defaults:
      sudo: 'true'
    hosts:
      alpha:
        sshh: root@alpha
        build_on: buildbx
      'a;b': { ssh: 'root@-x' }
      beta: { tags: lab }
      beta: {}
    builders:
      buildbox:
    colour: red
"""


def test_every_problem_in_the_file_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, MANY_MISTAKES)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.problems == [
        f"{path}:2:9: 'sudo' must be true or false, not 'true' (remove the quotes)",
        f"{path}:5:5: unknown key 'sshh' in host 'alpha' (expected one of: attr, build_on, health, keys, ssh, sudo, tags); did you mean 'ssh'?",
        f"{path}:6:15: build_on: 'buildbx' is not a builder or host (did you mean 'buildbox'?)",
        f"{path}:7:3: invalid host name 'a;b': contains ';' (use letters, digits, '_' and '-', starting with a letter or digit)",
        f"{path}:7:17: invalid ssh target 'root@-x': address starts with '-', which ssh would read as an option",
        f"{path}:8:17: 'tags' must be a list of names, not 'lab' (write [lab])",
        f"{path}:9:3: duplicate host 'beta' (first defined on line 8)",
        f"{path}:12:1: unknown key 'colour' at the top level (expected one of: builders, defaults, hosts, ssh_config)",
    ]


def test_several_problems_make_one_line_joined_by_semicolons_with_their_count(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, "hosts:\n  alpha: { sudo: 1, sshh: x }\nhost: {}\n")
    message = inventory_error(path)
    assert message == (
        f"{path}:2:18: 'sudo' must be true or false, not the number '1'; "
        f"{path}:2:21: unknown key 'sshh' in host 'alpha' (expected one of: attr, build_on, health, keys, ssh, sudo, tags); did you mean 'ssh'?; "
        f"{path}:3:1: unknown key 'host' at the top level (expected one of: builders, defaults, hosts, ssh_config); did you mean 'hosts'? "
        "(3 problems)"
    )


def test_schema_problems_and_cross_references_are_reported_together(tmp_path: Path) -> None:
    # build_on is checked against the names in the file even when the file has other mistakes.
    path = write_inventory(tmp_path, "hosts:\n  box: { build_on: nowhere, sudo: maybe }\nbuilders:\n  box:\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert [problem.removeprefix(f"{path}:") for problem in caught.value.problems] == [
        "2:20: build_on: 'nowhere' is not a builder or host (expected local, target, or the name of a builder or host)",
        "2:35: 'sudo' must be true or false, not 'maybe'",
        "4:3: 'box' is both a host and a builder (the host is on line 2)",
    ]


def test_a_problem_inside_an_alias_points_at_the_anchor_once(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, "defaults: &d { sudo: 2 }\nhosts:\n  a: *d\n  b: *d\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.problems == [f"{path}:1:22: 'sudo' must be true or false, not the number '2'"]


def test_aliases_still_work(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, "defaults: &d { sudo: true, tags: [x] }\nhosts:\n  a: *d\n  b: { tags: &t [y, z] }\n  c: { tags: *t }\n")
    inventory = load_inventory(path)
    assert (inventory.hosts["a"].sudo, inventory.hosts["a"].tags, inventory.hosts["c"].tags) == (True, ("x",), ("y", "z"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hosts: &h\n  a: *h\n", "2:3: unknown key 'a' in host 'a'"),
        ("defaults: { tags: &t [*t] }\n", "1:19: each tag must be a string, not a list"),
    ],
)
def test_recursive_aliases_are_refused_not_followed_forever(tmp_path: Path, text: str, problem: str) -> None:
    path, message = error_for(tmp_path, text)
    assert message.startswith(f"{path}:{problem}")


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("hosts:\n  a: { sudo: !!bool maybe }\n", "2:14", "'sudo' must be true or false, not the boolean 'maybe'"),
        ("hosts:\n  a: { ssh: !host x }\n", "2:13", "'ssh' must be a string, not 'x' (tagged '!host')"),
        ("hosts:\n  a: { tags: [1.5] }\n", "2:15", "each tag must be a string, not the number '1.5'"),
        ("42\n", "1:1", "the inventory must be a mapping with keys builders, defaults, hosts, ssh_config, not the number '42'"),
    ],
)
def test_values_no_field_takes(tmp_path: Path, text: str, position: str, problem: str) -> None:
    path, message = error_for(tmp_path, text)
    assert message == f"{path}:{position}: {problem}"


def test_integers_are_names_where_names_are_wanted(tmp_path: Path) -> None:
    # YAML reads 0x1F and 10:22 as integers; nixfab reads them as written.
    path = write_inventory(tmp_path, "hosts:\n  0x1F: { ssh: 10:22, build_on: 123, tags: [7] }\n  123:\n")
    host = load_inventory(path).hosts["0x1F"]
    assert (host.ssh, host.build_on, host.tags) == (SshTarget("10", None, 22), "123", ("7",))
    path, message = error_for(tmp_path, "hosts:\n  a: { build_on: 124 }\n  123:\n")
    assert message == f"{path}:2:18: build_on: '124' is not a builder or host (did you mean '123'?)"


# ---- health checks -----------------------------------------------------------------------------------


def test_health_checks_parse_with_defaults_and_overrides(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        """
        defaults:
          health: { command: systemctl is-system-running --wait }
        hosts:
          alpha:
          beta:
            health: { url: 'http://beta:3000/health', timeout: 5, retries: 0, interval: 0.5 }
        """,
    )
    inventory = load_inventory(path)
    assert inventory.default_health == HealthCheck(command="systemctl is-system-running --wait")
    assert inventory.hosts["alpha"].health == inventory.default_health
    assert inventory.hosts["beta"].health == HealthCheck(url="http://beta:3000/health", timeout=5.0, retries=0, interval=0.5)
    assert inventory.host("gamma").health == inventory.default_health


@pytest.mark.parametrize(
    ("health", "column", "problem"),
    [
        ("{}", 16, "'health' in host 'a' needs a 'command', a 'url', or both"),
        ("~", 16, "'health' must be a mapping, not empty (null)"),
        ("{ command: '  ' }", 27, "'health.command' is empty"),
        ("{ url: ftp://x }", 23, "'health.url' must be an http:// or https:// URL without spaces, not 'ftp://x'"),
        ("{ url: 'http://a b' }", 23, "'health.url' must be an http:// or https:// URL without spaces, not 'http://a b'"),
        ("{ command: x, timeout: 0 }", 39, "'health.timeout' must be more than 0, not 0"),
        ("{ command: x, interval: -1.5 }", 40, "'health.interval' must be more than 0, not -1.5"),
        ("{ command: x, retries: -1 }", 39, "'health.retries' must be 0 or more, not -1"),
        ("{ command: x, retries: 3.0 }", 39, "'health.retries' must be a whole number, not the number '3.0'"),
        ("{ command: x, timeout: '5' }", 39, "'health.timeout' must be a number, not '5'"),
        ("{ command: x, interval: true }", 40, "'health.interval' must be a number, not the boolean 'true'"),
        ("{ command: x, retry: 1 }", 30, "unknown key 'retry' in 'health' in host 'a' (expected one of: command, interval, retries, timeout, url)"),
    ],
)
def test_health_check_problems(tmp_path: Path, health: str, column: int, problem: str) -> None:
    path, message = error_for(tmp_path, f"hosts:\n  a: {{ health: {health} }}\n")
    assert message.startswith(f"{path}:2:{column}: {problem}"), message


def test_health_problems_in_defaults_say_so(tmp_path: Path) -> None:
    path, message = error_for(tmp_path, "defaults:\n  health: { timeot: 3 }\n")
    # Both: a misspelt key does not hide that the check is empty.
    assert message == (
        f"{path}:2:11: 'health' in 'defaults' needs a 'command', a 'url', or both; "
        f"{path}:2:13: unknown key 'timeot' in 'health' in 'defaults' (expected one of: command, interval, retries, timeout, url); did you mean 'timeout'? "
        "(2 problems)"
    )


# ---- keys ------------------------------------------------------------------------------------------------


def test_keys_parse_with_their_defaults_and_hosts_add_replace_or_drop_the_defaults_keys(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        """
        defaults:
          keys:
            ca: { source: ./ca.pem, mode: "0644" }
            vpn: { command: pass show vpn | head -1 }
        hosts:
          alpha:
            keys:
              db: { command: [pass, show, db], user: postgres, group: 70, mode: 0640, upload: post-activation, dest: /var/lib/db/pw }
              vpn: ~
          beta:
            keys:
              ca: { source: /etc/other-ca.pem, mode: 440 }
          gamma:
        """,
    )
    inventory = load_inventory(path)
    ca = KeySpec("ca", "/run/keys/ca", source=tmp_path / "ca.pem", mode=0o644)
    vpn = KeySpec("vpn", "/run/keys/vpn", command=("sh", "-c", "pass show vpn | head -1"), directory=tmp_path)
    db = KeySpec(
        "db", "/var/lib/db/pw", command=("pass", "show", "db"), directory=tmp_path, user="postgres", group="70", mode=0o640,
        upload=KeyUpload.POST_ACTIVATION,
    )
    assert inventory.default_keys == (ca, vpn)
    assert inventory.hosts["alpha"].keys == (ca, db)
    assert inventory.hosts["beta"].keys == (KeySpec("ca", "/run/keys/ca", source=Path("/etc/other-ca.pem"), mode=0o440), vpn)
    assert inventory.hosts["gamma"].keys == (ca, vpn) and inventory.host("delta").keys == (ca, vpn)
    assert ca.mode_text == "0644" and ca.upload == KeyUpload.PRE_ACTIVATION and (ca.user, ca.group) == ("root", "root")
    assert "secret" not in repr(inventory)  # nothing is read when the inventory is loaded


@pytest.mark.parametrize(
    ("keys", "position", "problem"),
    [
        ("{ db: { source: a, command: b } }", "3:30", "key 'db' in host 'a' has both 'source' and 'command'; give one"),
        ("{ db: { mode: '0600' } }", "3:17", "key 'db' in host 'a' needs a 'source' (a file on this machine) or a 'command'"),
        ("{ db: ~ }", "3:17", "key 'db' in host 'a' is empty, and 'defaults' has no key 'db' for it to drop"),
        ("{ db: 5 }", "3:17", "key 'db' must be a mapping, not the number '5'"),
        ("[db]", "3:11", "'keys' must be a mapping, not a list"),
        ("~", "3:11", "'keys' must be a mapping, not empty (null)"),
        ("{ .db: { source: a } }", "3:13", "invalid key name '.db': use letters, digits, '.', '_' and '-'"),
        ("{ 'a b': { source: a } }", "3:13", "invalid key name 'a b'"),
        ("{ db: { source: a, mod: '0600' } }", "3:30", "unknown key 'mod' in key 'db' in host 'a' (expected one of: command, dest, group, mode, "
                                                      "source, upload, user); did you mean 'mode'?"),
        ("{ db: { source: '' } }", "3:27", "'keys.db.source' is empty"),
        ("{ db: { command: '  ' } }", "3:28", "'keys.db.command' is empty"),
        ("{ db: { command: [] } }", "3:28", "'keys.db.command' is an empty list"),
        ("{ db: { command: [pass, 3.5] } }", "3:28", "'keys.db.command' must be a list of strings, and word 2 is not one"),
        ("{ db: { command: { a: b } } }", "3:28", "'keys.db.command' must be a string (run with sh -c) or a list of words (an argv), "
                                                  "not a mapping"),
        ("{ db: { source: a, dest: run/keys/db } }", "3:36", "'keys.db.dest' must be an absolute path, not 'run/keys/db'"),
        ("{ db: { source: a, dest: /run/keys/../db } }", "3:36", "'keys.db.dest' must be a plain absolute path without '.', '..' or '//'"),
        ("{ db: { source: a, dest: /run//db } }", "3:36", "'keys.db.dest' must be a plain absolute path"),
        ("{ db: { source: a, dest: /run/keys/ } }", "3:36", "'keys.db.dest' must name a file, not a directory ('/run/keys/')"),
        ("{ db: { source: a, dest: \"/run/k\\ney\" } }", "3:36", "'keys.db.dest' contains a control character ('\\n')"),
        ("{ db: { source: a, dest: /nix/store/db } }", "3:36", "'keys.db.dest' is in /nix ('/nix/store/db'): a key stays out of the Nix store"),
        ("{ db: { source: a, user: 'post gres' } }", "3:36", "'keys.db.user' must be a name (letters, digits, '_', '.' and '-', "
                                                            "starting with a letter or '_') or a number, not 'post gres'"),
        ("{ db: { source: a, group: -g } }", "3:37", "'keys.db.group' must be a name"),
        ("{ db: { source: a, user: ~ } }", "3:36", "'keys.db.user' must be a string, not empty (null)"),
        ("{ db: { source: a, mode: 999 } }", "3:36", "'keys.db.mode' must be permissions in octal such as \"0640\", not '999'"),
        ("{ db: { source: a, mode: '0640x' } }", "3:36", "'keys.db.mode' must be permissions in octal such as \"0640\", not '0640x'"),
        ("{ db: { source: a, mode: 4755 } }", "3:36", "'keys.db.mode' is '4755', which sets the setuid, setgid or sticky bit"),
        ("{ db: { source: a, mode: true } }", "3:36", "'keys.db.mode' must be permissions in octal, such as \"0640\", not the boolean 'true'"),
        ("{ db: { source: a, upload: after } }", "3:38", "'keys.db.upload' must be pre-activation or post-activation, not 'after'"),
        ("{ db: { source: a, upload: post-activaton } }", "3:38", "'keys.db.upload' must be pre-activation or post-activation, "
                                                                 "not 'post-activaton'; did you mean 'post-activation'?"),
        ("{ db: { source: a }, db2: { source: b, dest: /run/keys/db } }", "3:56", "key 'db2' in host 'a' goes to /run/keys/db, "
                                                                                  "as key 'db' (line 3) does"),
    ],
)
def test_key_problems_point_at_line_and_column(tmp_path: Path, keys: str, position: str, problem: str) -> None:
    path, message = error_for(tmp_path, f"hosts:\n  a:\n    keys: {keys}\n")
    assert message.startswith(f"{path}:{position}: {problem}"), message


def test_key_problems_in_defaults_and_between_a_host_and_the_defaults(tmp_path: Path) -> None:
    path, message = error_for(
        tmp_path,
        """
        defaults:
          keys:
            ca: ~
            tls: { source: tls.pem }
            tls2: { source: tls.pem, dest: /run/keys/tls }
        hosts:
          a:
            keys:
              own: { source: x, dest: /run/keys/tls }
              tls: { source: y, dest: /run/keys/own }
              ca: { source: z, sudo: true }
        """,
    )
    assert message.removesuffix(" (4 problems)").split("; ") == [
        f"{path}:3:9: key 'ca' in 'defaults' is empty: give it a 'source' or a 'command'",
        f"{path}:5:36: key 'tls2' in 'defaults' goes to /run/keys/tls, as key 'tls' (line 4) does",
        # A host's key is compared with the defaults' keys it keeps: its own 'tls' replaces theirs, and goes elsewhere.
        f"{path}:9:31: key 'own' in host 'a' goes to /run/keys/tls, as key 'tls2' (line 5) does",
        f"{path}:11:24: unknown key 'sudo' in key 'ca' in host 'a' (expected one of: command, dest, group, mode, source, upload, user)",
    ]
