"""Everything nixfab changes inside Invoke (and Fabric), in one place, for the versions it was tested with.

Invoke lets a task file decide little about the command line: its parser eats
`--help` as a missing positional MACHINE, says "No idea what '--x' is!" with
exit 1 and no suggestion, invents value names from defaults (`=STRING`), and
requires every positional. Fabric runs a task once per `-H` host. What
nixfab needs instead is patched here, onto the classes, when tasks.py (or
fabfile.py) is imported; the `nixfab` command's own Program (program.py) gets
the same by importing tasks.py.

Every patch reaches into internals (ParseMachine's methods, Program's help
printer, Fabric's Executor), so each is applied only to the versions listed
in TESTED, which are the ranges pyproject.toml pins (tests/test_cli_e2e.py
checks that they agree). Another version gets Invoke's own behaviour
untouched: plainer messages, a required MACHINE, but nothing half-patched.

Imported by tasks.py on every TAB: the standard library and Invoke only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit, ParseError
from invoke.tasks import Task

if TYPE_CHECKING:
    from invoke.parser.context import ParserContext
    from invoke.program import Program

# [lowest, highest) of the (major, minor) versions these patches were written against; pyproject.toml pins the same.
TESTED = {"invoke": ((2, 2), (2, 3)), "fabric": ((3, 2), (3, 3))}

# Positionals nixfab's handlers check themselves, so each may be left out or given by flag.
OPTIONAL_POSITIONALS = frozenset({"machine", "generation", "command"})

# Invoke's parser says these; nixfab says them as one line with a suggestion.
_UNKNOWN = "No idea what "
_PATCHED = "_nixfab_patched"


def version_of(package: str) -> tuple[int, ...]:
    import importlib

    # Both set __version_info__ in their _version module; Invoke does not re-export it for mypy.
    info = importlib.import_module(package).__version_info__
    return tuple(int(part) for part in info[:2])


def tested(package: str, version: tuple[int, ...] | None = None) -> bool:
    low, high = TESTED[package]
    found = (version or version_of(package))[:2]
    return low <= found < high


class CommandLineError(ParseError, Exit):
    """A parse error as one line and exit 2: Invoke's Program prints a ParseError and exits with an Exit's code.

    Still a ParseError with its context, so tab completion (which catches ParseError) works as before.
    """

    def __init__(self, message: str, context: ParserContext | None = None) -> None:
        ParseError.__init__(self, message, context)
        self.line = message
        Exit.__init__(self, None, 2)  # no Exit message: Program.run prints the ParseError (this line) once

    def __str__(self) -> str:
        return self.line


def suggestion(word: str, candidates: Iterable[str]) -> str:
    import difflib  # only when something was mistyped: tasks.py imports this module on every TAB

    close = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(name) for name in close) + "?"


def looks_like_flag(token: str) -> bool:
    return token.startswith("-") and token != "-" and not token.lstrip("-").replace(".", "", 1).isdigit()


def flag_names(context: ParserContext | None) -> list[str]:
    """Every spelling of every option (short flags and other names too, which Lexicon's keys leave out)."""
    if context is None:
        return []
    return list(context.flag_names())


def parse_message(
    message: str, *, context: ParserContext | None, initial: ParserContext | None, tasks: Sequence[str], flag: str | None = None
) -> str:
    """Invoke's parse error as nixfab's one line, with "did you mean" where a near name exists (pure).

    flag: the option being read when the error came (the one that lacks its value).
    """
    if message.startswith(_UNKNOWN) and message.endswith(" is!"):
        token = message[len(_UNKNOWN) : -len(" is!")].strip("'\"")
        task = getattr(context, "name", None)
        if looks_like_flag(token):
            name, _, _value = token.partition("=")
            where = f"{task} has no option" if task else "no such option:"
            candidates = flag_names(context) + flag_names(initial)
            hint = suggestion(name, candidates) or (f" (`--help {task}` lists them)" if task else " (`--help` lists them)")
            return f"nixfab: error: {where} {name!r}{hint}"
        filled = [argument for argument in getattr(context, "positional_args", []) if argument.value]
        hint = suggestion(token, tasks)
        if task and filled and not hint:
            given = filled[-1]
            return (
                f"nixfab: error: {token!r} is not a task, and {task} already has its {given.name.upper()} ({given.value!r})"
                + ("; several hosts: --host a,b" if given.name == "machine" else "")
            )
        return f"nixfab: error: no task named {token!r}{hint or ' (`--list` shows every task)'}"
    if message.startswith("Flag ") and message.endswith("needed value and was not given one!"):
        return f"nixfab: error: {flag or 'an option'} needs a value"
    return f"nixfab: error: {message}"


def install() -> bool:
    """Patch Invoke's parser and help for nixfab's tasks; once, and only on a TESTED version. True if patched."""
    from invoke.parser.parser import ParseMachine
    from invoke.program import Program

    if getattr(ParseMachine, _PATCHED, False):
        return True
    if not tested("invoke"):
        return False
    _optional_positionals(ParseMachine)
    _flags_are_never_positionals(ParseMachine)
    _one_line_errors(ParseMachine, Program)
    _task_help(Program)
    _command_line_ends_at_once(Program)
    setattr(ParseMachine, _PATCHED, True)
    return True


def _optional_positionals(machine: Any) -> None:
    """Let `inv TASK` run without MACHINE (then it means this machine).

    Invoke requires every positional argument: it complains when one is unset
    as a context completes. An unset optional one becomes "" first.
    """
    original = machine.complete_context

    def complete_context(self: Any) -> None:
        if self.context is not None:
            for argument in self.context.positional_args:
                if argument.name in OPTIONAL_POSITIONALS and argument.value is None:
                    argument.value = ""
        original(self)

    machine.complete_context = complete_context


def _flags_are_never_positionals(machine: Any) -> None:
    """`inv switch-push --help` is help, and `--targt-host` a typo, not a MACHINE named so.

    Invoke hands any token to a missing positional before it looks at core
    flags or says it does not know it; nixfab's positionals never start with `-`.
    """
    original = machine.handle

    def handle(self: Any, token: str) -> None:
        context = self.context
        if (
            self.current_state != "unknown"
            and context is not None
            and looks_like_flag(token)
            and token not in context.flags
            and token not in context.inverse_flags
            and not self.waiting_for_flag_value
            and context.missing_positional_args
        ):
            initial = self.initial
            if initial is not None and token in initial.flags:
                flag = initial.flags[token]
                if flag.name == "help":
                    flag.value = context.name  # `TASK --help`: the task's own help, as after its positionals
                else:
                    self.switch_to_flag(token)
                return
            self.error(f"{_UNKNOWN}{token!r} is!")
            return
        original(self, token)

    machine.handle = handle


def _one_line_errors(machine: Any, program: Any) -> None:
    def error(self: Any, message: str) -> None:
        tasks = [name for name in self.contexts if name]
        flag = f"--{self.flag.name.replace('_', '-')}" if self.flag is not None else None
        raise CommandLineError(parse_message(message, context=self.context, initial=self.initial, tasks=tasks, flag=flag), self.context)

    machine.error = error
    original_cleanup = program.parse_cleanup

    def parse_cleanup(self: Any) -> None:
        try:
            original_cleanup(self)
        except CommandLineError:
            raise
        except ParseError as failed:  # `--help NOSUCHTASK`
            tasks = list(self.parser.contexts) if getattr(self, "parser", None) else []
            raise CommandLineError(parse_message(str(failed), context=None, initial=None, tasks=tasks)) from None

    program.parse_cleanup = parse_cleanup


def _task_help(program: Any) -> None:
    def print_task_help(self: Program, name: str) -> None:
        from deploy.cli.help import task_help
        from deploy.ui import stdout_result

        stdout_result(task_help(self.binary, name, self.collection[name], self.parser.contexts[name]), end="")

    program.print_task_help = print_task_help


def _command_line_ends_at_once(program: Any) -> None:
    """Once the command line's tasks are done, the process ends (deploy.cli.cli.end_process) instead of tearing
    down every module one by one, which costs a one-host deploy about 5% of its time.

    Program.execute is where run() hands over to the tasks, and it is looked up
    after tasks.py is loaded (run() itself is already running by then). Only a
    Program that reads sys.argv is the command line; another (run(argv=...),
    run(exit=False)) returns as before. An Exit is said as run() says it.
    """
    import sys

    original_execute = program.execute

    def execute(self: Any) -> None:
        if getattr(self, "argv", None) is not sys.argv:
            original_execute(self)
            return
        from deploy.cli.cli import end_process
        from deploy.ui import exit_message

        try:
            original_execute(self)
        except Exit as stop:
            if stop.message:
                exit_message(stop.message)
            end_process(stop.code)
        end_process(0)

    program.execute = execute


# --- the names of a task's options ----------------------------------------------------------


class NamedOptionsTask(Task[Callable[..., None]]):
    """A Task whose options may have more names than their parameter's: `option_aliases` maps an option to them.

    Invoke names an option after its parameter only (Task.arg_opts); a second spelling is one more
    name of the same Argument, so `--target-host x` and `--host x` fill the same value, and `-j 4`
    is `--parallel 4`.
    """

    option_aliases: Mapping[str, Sequence[str]] = {}

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        options: dict[str, Any] = super().arg_opts(name, default, taken_names)
        extra = self.option_aliases.get(name.replace("_", "-"), ()) if tested("invoke") else ()
        options["names"] = [*options["names"], *(alias for alias in extra if alias not in taken_names)]
        return options


# --- Fabric: one fleet for every -H host ---------------------------------------------------------


def takes_several_hosts(task: Any) -> bool:
    """A task whose --host is a list (the fleet deploys, status): it can take every -H host at once."""
    import inspect

    body = getattr(task, "body", None)
    parameter = inspect.signature(body).parameters.get("host") if callable(body) else None
    return parameter is not None and isinstance(parameter.default, list)


def install_fabric(is_fleet_task: Callable[[Any], bool]) -> bool:
    """`fab -H a,b TASK` runs a fleet task once, over every host, instead of once per host one after another.

    The first host stays the task's Connection (so `-S ssh_config` and `user@` work as before); the
    others join its --host list. Other tasks still run once per host, as Fabric does.
    """
    from fabric.executor import Executor
    from invoke.tasks import Call

    if getattr(Executor, _PATCHED, False):
        return True
    if not tested("fabric"):
        return False
    original = Executor.expand_calls

    def expand_calls(self: Any, calls: list[Any], apply_hosts: bool = True) -> list[Any]:
        hosts = (self.core[0].args.hosts.value or "").split(",") if apply_hosts else []
        hosts = [host for host in hosts if host]
        if len(hosts) < 2:
            return list(original(self, calls, apply_hosts))
        expanded: list[Any] = []
        for call in calls:
            call = call if isinstance(call, Call) else Call(task=call)
            if not is_fleet_task(call.task):
                expanded.extend(original(self, [call], apply_hosts))
                continue
            others = [*call.kwargs.get("host", []), *hosts[1:]]
            fleet_call = call.clone(with_={"kwargs": {**call.kwargs, "host": others}})
            for each in original(self, [fleet_call], apply_hosts):
                init = getattr(each, "init_kwargs", None)
                if init is None or init.get("host") == hosts[0]:
                    expanded.append(each)
        return expanded

    Executor.expand_calls = expand_calls
    setattr(Executor, _PATCHED, True)
    return True
