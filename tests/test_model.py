"""The domain values (deploy/model.py) and the typed options every task builds (deploy/cli/options.py, deploy/cli/arguments.py)."""
from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task

import tasks
from deploy.cli import arguments, cli, operations, options
from deploy.cli.arguments import DeployPreset
from deploy.engine.fleet import HostResult, results_json
from deploy.errors import UsageError
from deploy.model import Action, Phase, Result
from deploy.nix import commands
from deploy.record.history import DeployRecord, Journal

# --- Action ----------------------------------------------------------------------------------------


def test_actions_are_nixos_rebuilds_four_in_its_order() -> None:
    assert [str(action) for action in Action] == ["switch", "boot", "test", "dry-activate"]
    assert Action("dry-activate") is Action.DRY_ACTIVATE
    with pytest.raises(ValueError):
        Action("explode")


@pytest.mark.parametrize(
    ("action", "boot_default", "running", "changes"),
    [
        (Action.SWITCH, True, True, True),
        (Action.BOOT, True, False, True),
        (Action.TEST, False, True, True),
        (Action.DRY_ACTIVATE, False, False, False),
    ],
)
def test_action_predicates(action: Action, boot_default: bool, running: bool, changes: bool) -> None:
    assert (action.changes_boot_default, action.changes_running_system, action.changes_system) == (boot_default, running, changes)


def test_switch_to_configuration_gets_the_plain_string() -> None:
    argv = commands.switch_to_configuration("/nix/store/s", Action.DRY_ACTIVATE)
    assert argv == ["/nix/store/s/bin/switch-to-configuration", "dry-activate"]
    assert type(argv[1]) is str


# --- Result ----------------------------------------------------------------------------------------

RESULT_STRINGS = [
    "ok", "built", "diffed", "up-to-date", "planned", "skipped", "failed", "rolled-back", "interrupted", "not started", "unfinished",
]


def test_results_keep_the_strings_printed_and_recorded_today() -> None:
    assert [str(result) for result in Result] == RESULT_STRINGS
    assert Result("not started") is Result.NOT_STARTED
    assert f"{Result.ROLLED_BACK}" == "rolled-back"
    assert json.dumps({"result": Result.NOT_STARTED}, indent=2) == json.dumps({"result": "not started"}, indent=2)


@pytest.mark.parametrize("result", list(Result))
def test_result_healthy(result: Result) -> None:
    assert result.healthy == (result in (Result.OK, Result.BUILT, Result.DIFFED, Result.UP_TO_DATE, Result.PLANNED, Result.SKIPPED))
    assert HostResult("h", result, 0.0).healthy == result.healthy


def test_results_json_writes_the_same_strings() -> None:
    results = [HostResult("a", Result.UP_TO_DATE, 1.0), HostResult("b", Result.NOT_STARTED, 0.0)]
    hosts = json.loads(results_json(results, interrupted=False))["hosts"]
    assert [host["result"] for host in hosts] == ["up-to-date", "not started"]


def record(result: Any) -> DeployRecord:
    return DeployRecord("2024-05-01T10:00:00+00:00", "ann", "alpha", "switch", "/f", None, None, None, None, result, 1.0)


def test_the_journal_takes_results_only_and_gives_back_members(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "history.sqlite")
    for result in ("built", "diffed", Result.UP_TO_DATE):
        journal.record(record(result))
    assert [r.result for r in journal.records()] == [Result.BUILT, Result.DIFFED, Result.UP_TO_DATE]
    assert all(type(r.result) is Result for r in journal.records())
    with pytest.raises(ValueError, match="not 'exploded'"):
        record("exploded")


# --- Phase -----------------------------------------------------------------------------------------


def test_phases_are_the_progress_tables_in_order() -> None:
    assert [str(phase) for phase in Phase] == ["check", "build", "lock", "copy", "diff", "keys", "activate", "confirm", "health", "reboot", "gc"]


# --- every task builds its options from its declared defaults -----------------------------------------


def declared_defaults(task: Task[Any]) -> dict[str, Any]:
    """The keyword arguments a task's builder gets when it runs without options: its body's signature, less the
    context and the output flags (-v/-q), which the body itself takes (deploy.ui.policy)."""
    parameters = list(inspect.signature(task.body).parameters.values())[1:]
    return {parameter.name: parameter.default for parameter in parameters if parameter.name not in tasks.OUTPUT}


def test_every_task_takes_the_output_flags_with_their_short_forms() -> None:
    for name, task in every_task():
        names = {flag for argument in task.get_arguments() for flag in argument.names}
        assert {"verbose", "v", "quiet", "q"} <= names, name


def every_task() -> list[tuple[str, tasks.StepTask]]:
    namespace = tasks.namespace()
    return [(name, namespace[name]) for name in namespace.task_names]


def handler_options_type(handler: Any) -> Any:
    # The handlers name their options' types for mypy only (TYPE_CHECKING); resolve them in deploy.cli.options.
    return typing.get_type_hints(handler, localns=vars(options))["options"]


def test_every_task_is_a_step_task() -> None:
    listed = every_task()
    assert len(listed) == len(tasks.DEPLOY_TASKS) + len(tasks.OPERATION_TASKS) + len(tasks.HOME_TASKS)
    assert all(isinstance(task, tasks.StepTask) for _name, task in listed)


# Values a task cannot do without, whose declared default is "not given": its builder refuses that in one line.
REQUIRED = {"switch-generation": {"generation": "1"}}


@pytest.mark.parametrize(("name", "task"), every_task(), ids=[name for name, _ in every_task()])
def test_every_task_builds_its_options_from_its_declared_defaults(name: str, task: tasks.StepTask) -> None:
    if name in REQUIRED:
        with pytest.raises(UsageError):
            task.step.build(**declared_defaults(task))
    built = task.step.build(**{**declared_defaults(task), **REQUIRED.get(name, {})})
    assert dataclasses.is_dataclass(built) and type(built).__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert type(built) is handler_options_type(task.step.run), f"{name}: the handler takes another type than its builder makes"


def test_an_option_no_builder_takes_is_an_error_the_check_sees() -> None:
    stray = tasks.local_step("stray", "A task with an option nobody takes.", operations.hosts, arguments.hosts,
                             {"flake": ".", "inventory": "hosts.yaml", "json": False, "colour": "auto"})
    with pytest.raises(TypeError, match="colour"):
        stray.step.build(**declared_defaults(stray))
    short = tasks.local_step("short", "A task that lacks an option its builder needs.", operations.hosts, arguments.hosts, {"flake": "."})
    with pytest.raises(TypeError, match="inventory"):
        short.step.build(**declared_defaults(short))


def test_a_bad_value_ends_as_one_line_and_exit_2_before_the_handler_runs() -> None:
    ran: list[object] = []
    step = cli.Step(arguments.ssh_wait, lambda context, built: ran.append(built))
    with pytest.raises(Exit) as stopped:
        step(Context(), machine="a", command=None, host=None, flake=".", inventory="hosts.yaml", timeout="soon", interval="2")
    assert (stopped.value.message, stopped.value.code) == ("nixfab: error: --timeout takes a number of seconds, not 'soon'", 2)
    assert ran == []


def test_options_are_frozen() -> None:
    built = tasks.namespace()["generations"].step.build(**declared_defaults(tasks.namespace()["generations"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.as_json = True


# --- what the builders make ----------------------------------------------------------------------------


def deploy_defaults(task: str, **changes: Any) -> dict[str, Any]:
    return {**declared_defaults(tasks.namespace()[task]), **changes}


def build(task: str, **changes: Any) -> Any:
    return tasks.namespace()[task].step.build(**deploy_defaults(task, **changes))


def test_deploy_options_from_switch_push() -> None:
    built = build("switch-push", machine="alpha", host=["b,c"], tag=["web"], parallel="3", batch="2", log_dir="logs",
                  confirm_timeout="7.5", action="boot", build_on="target", diff=True, json=True)
    assert built.selection == options.Selection("alpha", ("b,c",), ("web",), False, str(Path.cwd()), "hosts.yaml")
    assert built.fleet == options.FleetOptions(parallel=3, batch=2, log_dir=Path("logs"))
    assert (built.action, built.build_on, built.confirm_timeout, built.show_diff, built.as_json) == (Action.BOOT, "target", 7.5, True, True)
    assert (built.reboot, built.collect_garbage, built.delete_older_than, built.reboot_timeout) == (False, False, None, 300.0)


def test_the_flake_check_is_asked_for_skipped_or_left_to_hosts_yaml() -> None:
    assert build("switch-push").check is None
    assert build("switch-push", check=True).check is True
    assert build("boot", skip_checks=True).check is False


@pytest.mark.parametrize(
    ("task", "action", "build_on", "local", "diff_only", "reboot"),
    [
        ("build", None, "local", False, False, False),
        ("build-there", None, "target", False, False, False),
        ("switch", Action.SWITCH, None, True, False, False),
        ("switch-pull", Action.SWITCH, "target", False, False, False),
        ("boot", Action.BOOT, None, False, False, False),
        ("test", Action.TEST, None, False, False, False),
        ("dry-activate", Action.DRY_ACTIVATE, None, False, False, False),
        ("diff", Action.SWITCH, None, False, True, False),
        ("switch-pull-reset", Action.BOOT, "target", False, False, True),
        ("switch-push-reset", Action.BOOT, None, False, False, True),
    ],
)
def test_what_each_deploy_task_fixes(task: str, action: Action | None, build_on: str | None, local: bool, diff_only: bool, reboot: bool) -> None:
    built = build(task)
    assert (built.action, built.build_on, built.local, built.diff_only, built.reboot, built.collect_garbage) == (
        action, build_on, local, diff_only, reboot, reboot
    )
    assert built.out_link == (Path("result") if task == "build" else None)
    if reboot:
        assert (built.delete_older_than, built.reboot_timeout) == ("15d", 300.0)


def test_one_host_tasks_and_the_shifted_positional() -> None:
    assert build("generations", machine="alpha").target == options.OneHostOptions("alpha", str(Path.cwd()), "hosts.yaml", False)
    assert build("rollback", machine="alpha", host="beta").machine == "beta"
    # `inv switch-generation --host alpha 3`, `inv ssh-wait --host alpha hostname`: the positional slot holds the next argument.
    shifted = build("switch-generation", machine="3", host="alpha", generation="")
    assert (shifted.target.machine, shifted.generation) == ("alpha", 3)
    waited = build("ssh-wait", machine="hostname", host="alpha", command=None)
    assert (waited.target.machine, waited.command, waited.timeout, waited.interval) == ("alpha", "hostname", 300.0, 2.0)
    assert build("ssh-wait", machine="alpha").command is None
    assert build("reset", machine="beta", delete_older_than="all").delete_older_than == "all"
    assert build("hm.push", machine="alpha", user="").user is None
    assert build("hm.switch", user="bob").target.machine is None


def test_status_history_and_flake_tasks() -> None:
    everything = build("status")
    assert (everything.selection.machine, everything.selection.hosts, everything.selection.everything) == (None, (), True)
    one = build("status", machine="alpha", tag=["web"])
    assert (one.selection.machine, one.selection.hosts, one.selection.tags, one.selection.everything) == (None, ("alpha",), ("web",), False)
    assert build("history", machine="alpha", host=["beta"]).hosts == ("alpha", "beta")
    assert build("update", input=["a,b", "c"]).inputs == ("a,b", "c")
    assert build("check", flake="github:o/r").flake == "github:o/r"


@pytest.mark.parametrize(
    ("task", "changes", "message"),
    [
        ("switch-push", {"action": "explode"}, "--action must be one of switch, boot, test, dry-activate, not 'explode'"),
        ("switch-push", {"action": ""}, "--action must be one of switch, boot, test, dry-activate, not ''"),
        ("switch-push", {"parallel": "0"}, "--parallel must be at least 1, not '0'"),
        ("switch-push", {"parallel": "many"}, "--parallel takes a whole number, not 'many'"),
        ("switch-push", {"batch": "x"}, "--batch takes a whole number, not 'x'"),
        ("switch-push", {"confirm_timeout": "0"}, "--confirm-timeout must be more than 0 seconds, not '0'"),
        ("switch-push-reset", {"delete_older_than": "-1d"}, "--delete-older-than takes a number of days such as 15d, or all, not '-1d'"),
        ("switch-pull-reset", {"reboot_timeout": "abc"}, "--reboot-timeout takes a number of seconds, not 'abc'"),
        ("reset", {"delete_older_than": "2weeks"}, "--delete-older-than takes a number of days such as 15d, or all, not '2weeks'"),
        ("reset", {"delete_older_than": ""}, "--delete-older-than takes a number of days such as 15d, or all, not ''"),
        ("ssh-wait", {"interval": "-1"}, "--interval must be more than 0 seconds, not '-1'"),
        ("ssh-wait", {"timeout": "1\n2"}, "--timeout takes a number of seconds, not '1\\n2'"),
        ("switch-generation", {"generation": "x"}, "switch-generation takes a generation number (see `inv generations`), not 'x'"),
        ("switch-generation", {"generation": "²"}, "switch-generation takes a generation number (see `inv generations`), not '²'"),
        ("switch-push", {"check": True, "skip_checks": True}, "--check and --skip-checks contradict each other; give one of them"),
    ],
)
def test_bad_values_are_one_line_usage_errors(task: str, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as refused:
        build(task, **changes)
    assert str(refused.value) == message and "\n" not in str(refused.value)
    assert refused.value.exit_code == 2


def test_a_preset_is_fixed_unless_the_task_asks() -> None:
    preset = DeployPreset(action=Action.BOOT, build_on="target")
    fixed = arguments.deploy(preset, **{key: value for key, value in deploy_defaults("switch-push").items() if key not in ("action", "build_on")})
    assert (fixed.action, fixed.build_on) == (Action.BOOT, "target")
    asked = arguments.deploy(preset, **deploy_defaults("switch-push", action="test", build_on="local"))
    assert (asked.action, asked.build_on) == (Action.TEST, "local")
