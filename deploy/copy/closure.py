"""Move a system closure to its target.

From this machine, the closure goes into `nix-store --import` over the
deploy's own SSH connection: only the paths the target lacks, and no second
connection. The export is written here (copy.export) from the closure's
records, or by `nix-store --export` where Nix did not give them all. From a
builder, or with substitution on the target, it goes with `nix copy`, which
can do both.

An import that fails (a full /nix above all) leaves nothing behind: the
paths it was to add that are now in the store, whole or half-written, are
deleted again unless something else keeps them alive, so the target's store
is what it was before the deploy.
"""
from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from deploy.build.build import nix_error
from deploy.copy.export import ExportReader, StoreObject, nar_sha256
from deploy.errors import NixfabError, RemoteCommandFailed
from deploy.nix import commands
from deploy.scripts import script
from deploy.transport.hosts import Host
from deploy.transport.process import LocalRunner, Result
from deploy.transport.remote import RemoteHost


def copy_closure(
    runner: LocalRunner,
    path: str,
    *,
    target: Host,
    target_store: str,
    source_store: str | None = None,
    substitute_on_destination: bool = False,
    nix_env: Mapping[str, str],
    extra: Sequence[str] = (),
    missing: Sequence[str] | None = None,
    closure: Closure | None = None,
) -> bool:
    """Copy path's closure to target (from source_store, or this machine); False if it was there.

    missing: the paths of the closure not in the target's store directory (preflight), else nix-store is asked.
    closure: path's closure as listed here (the export is then written from its records).
    Says what it did as one step line: `copied 3 paths, 64.0 KiB in 0.2 s`.
    """
    if source_store is None and not substitute_on_destination and isinstance(target, RemoteHost):
        return stream_closure(runner, target, path, missing, closure)
    started = time.monotonic()
    if target.run(commands.check_store_path_valid(path), dry_returncode=1).ok:
        runner.echo.step(NOTHING_TO_COPY, seconds=time.monotonic() - started)
        return False
    argv = commands.nix_copy(
        [path], to=target_store, source=source_store, substitute_on_destination=substitute_on_destination, extra=extra
    )
    result = runner.run(argv, env=nix_env)
    if not result.ok:
        raise RemoteCommandFailed(f"copying {path} to {target.label} failed: {nix_error(result.stderr)}")
    how = f"from {source_store.removeprefix('ssh://').removeprefix('ssh-ng://')}" if source_store else "substituting on the target"
    runner.echo.step(f"copied the closure {how}", seconds=time.monotonic() - started)
    return True


NOTHING_TO_COPY = "nothing to copy: the target has the whole closure"


class CountingReader:
    """A binary stream that counts what is read from it (the size of the export sent)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        return data


@dataclass(frozen=True)
class Closure:
    paths: tuple[str, ...]  # dependencies first: the order nix-store --import needs
    nar_sizes: Mapping[str, int]  # what Nix said of each path's NAR size (what a copy sends)
    references: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # each path's, within the closure
    # What an export says of each path (all of its references, deriver, NAR hash); only where Nix said all of it.
    objects: Mapping[str, StoreObject] = field(default_factory=dict)

    def of(self, root: str) -> Closure:
        """root's own closure, out of one listed for several systems at once, in the same order (pure)."""
        reached = {root}
        stack = [root]
        while stack:
            for reference in self.references.get(stack.pop(), ()):
                if reference not in reached:
                    reached.add(reference)
                    stack.append(reference)
        return Closure(
            tuple(path for path in self.paths if path in reached),
            {path: size for path, size in self.nar_sizes.items() if path in reached},
            {path: refs for path, refs in self.references.items() if path in reached},
            {path: item for path, item in self.objects.items() if path in reached},
        )

    def export_of(self, paths: Sequence[str]) -> list[StoreObject] | None:
        """What exporting these paths of the closure needs; None when Nix did not say all of it for one of them."""
        objects = [self.objects.get(path) for path in paths]
        return [item for item in objects if item is not None] if None not in objects else None

    def nar_bytes(self, paths: Sequence[str]) -> int | None:
        """The NAR size of these paths of the closure; None when Nix did not say it for one of them."""
        sizes = [self.nar_sizes.get(path) for path in paths]
        return sum(size for size in sizes if size is not None) if None not in sizes else None

    @property
    def size(self) -> int | None:
        return self.nar_bytes(self.paths)


def closure_of(runner: LocalRunner, path: str) -> Closure:
    """path's closure in this machine's store, and each path's size, from one `nix path-info --json --recursive`."""
    return closures_of(runner, [path])[path]


def closures_of(runner: LocalRunner, paths: Sequence[str]) -> dict[str, Closure]:
    """Each path's closure: from the run's nix-store --serve, else one `nix path-info --json --recursive` of them all."""
    if runner.store is not None and not runner.dry_run:
        from deploy.transport.local_store import Unanswered

        try:
            # -v shows every command: the server's start is one (each later question rides on it).
            infos = runner.store.closure_infos(paths, on_start=runner.echo.command)
        except Unanswered as error:
            runner.echo.record(f"the store's server did not list the closure of {' '.join(paths)} ({error}); asking nix path-info")
        else:
            runner.echo.record(f"the closure of {' '.join(paths)}: {len(infos)} paths, from the run's nix-store --serve")
            served = closure_from({str(info["path"]): info for info in infos})
            return {path: served.of(path) for path in paths}
    dry = json.dumps([{"path": path, "narSize": 0, "references": []} for path in paths])
    result = runner.run(commands.nix_path_info_closure(paths), dry_stdout=dry)
    closure = parse_closure(result.stdout) if result.ok else None
    for path in paths:
        if closure is None or path not in closure.paths:
            why = nix_error(result.stderr) if not result.ok else "Nix's answer does not list it"
            raise RemoteCommandFailed(f"cannot list the closure of {path}: {why}")
    assert closure is not None
    return {path: closure.of(path) for path in paths}


def parse_closure(stdout: str) -> Closure | None:
    """`nix path-info --json --recursive` as a Closure, dependencies first (pure); None if it is not what Nix prints.

    Nix up to 2.18 prints a list of objects with "path"; 2.19 and later an
    object keyed by path. The order is made here from the references, each
    path after everything it refers to, the rest by name.
    """
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    if isinstance(data, list):
        items = {item.get("path"): item for item in data if isinstance(item, dict)}
    elif isinstance(data, dict):
        items = {key: value for key, value in data.items() if isinstance(value, dict)}
    else:
        return None
    return closure_from({path: info for path, info in items.items() if isinstance(path, str)})


def closure_from(items: Mapping[str, Mapping[str, Any]]) -> Closure:
    """A closure from what Nix said of each of its paths (path-info's JSON fields), dependencies first (pure)."""
    infos = {path: info for path, info in items.items() if info.get("valid") is not False}
    references = {
        path: sorted(ref for ref in info.get("references") or () if isinstance(ref, str) and ref != path and ref in infos)
        for path, info in infos.items()
    }
    ordered: list[str] = []
    placed: set[str] = set()
    entered: set[str] = set()  # on the way down: a cycle (which Nix never makes) cannot loop forever
    for root in sorted(infos):
        # Depth first, iteratively (a closure may be thousands of paths deep): a path goes after its references.
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            path, index = stack.pop()
            if path in placed:
                continue
            entered.add(path)
            if index < len(references[path]):
                stack.append((path, index + 1))
                reference = references[path][index]
                if reference not in placed and reference not in entered:
                    stack.append((reference, 0))
                continue
            placed.add(path)
            ordered.append(path)
    sizes = {path: info["narSize"] for path, info in infos.items() if isinstance(info.get("narSize"), int)}
    return Closure(tuple(ordered), sizes, {path: tuple(refs) for path, refs in references.items()}, store_objects(infos))


def store_objects(infos: Mapping[str, Mapping[str, Any]]) -> dict[str, StoreObject]:
    """What `nix path-info --json` said of each path that an export needs, for each path it said all of it of (pure)."""
    objects = {}
    for path, info in infos.items():
        references, deriver, digest = info.get("references"), info.get("deriver"), nar_sha256(info.get("narHash"))
        if (
            isinstance(references, list) and all(isinstance(reference, str) for reference in references)
            and (deriver is None or isinstance(deriver, str)) and digest is not None
        ):
            objects[path] = StoreObject(path, tuple(references), deriver or "", digest)
    return objects


def missing_paths(runner: LocalRunner, target: RemoteHost, path: str) -> list[str]:
    """The closure of path, dependencies first, less what the target already has."""
    paths = closure_of(runner, path).paths
    invalid = target.run(commands.nix_store_print_invalid(paths), dry_stdout="\n".join(paths))
    if not invalid.ok:
        raise RemoteCommandFailed(f"{target.label}: cannot check which paths it has: {invalid.tail(1)}")
    wanted = set(invalid.stdout.splitlines())  # a path per line (a dry run's placeholder has spaces)
    return [item for item in paths if item in wanted]


def stream_closure(
    runner: LocalRunner, target: RemoteHost, path: str, missing: Sequence[str] | None = None, closure: Closure | None = None,
) -> bool:
    """Export what the target lacks (`missing`, when it said so already) into its nix-store --import; False when it lacked nothing.

    closure: path's, as listed for the preflight, whose records let the export be written here. `missing`
    is what the preflight found missing from the host's store directory; when the import fails, nix-store
    is asked which paths the host really lacks, and those it lacks beyond them are sent once more.
    """
    from deploy.plan.disk import human_size

    started = time.monotonic()
    asked_already, count = missing is not None, 0
    missing = list(missing) if missing is not None else missing_paths(runner, target, path)
    if not missing:
        runner.echo.step(NOTHING_TO_COPY, seconds=time.monotonic() - started)
        return False
    if runner.dry_run:  # the closure's records are a dry run's placeholders: say what a real run would write
        target.feed(commands.nix_store_import(), io.BytesIO(), describe_source=export_description(len(missing)))
        return True
    sent, presumed = missing, asked_already
    while True:
        with exported(runner, sent, closure) as source:
            imported = target.feed(commands.nix_store_import(), source, describe_source=source.describe)
        count += source.count
        if source.error is not None:
            left = remove_failed_import(target, missing)
            raise RemoteCommandFailed(f"exporting {path} failed: {source.error}{left}")
        if imported.ok:
            break
        if presumed:
            # The preflight took the paths in the host's store directory as valid; one may be half-written.
            presumed = False
            lacking = missing_paths(runner, target, path)
            if set(lacking) - set(sent):
                runner.echo.record(f"{target.label} lacks paths its store directory has (half-written): sending {len(lacking)} paths again")
                sent = lacking
                missing = list(dict.fromkeys([*missing, *lacking]))
                continue
        left = remove_failed_import(target, missing)
        raise RemoteCommandFailed(f"{target.label}: importing {path} failed: {nix_error(imported.stdout)}{left}")
    paths = f"{len(missing)} path{'' if len(missing) == 1 else 's'}"
    runner.echo.step(f"copied {paths}, {human_size(count)}", seconds=time.monotonic() - started)
    return True


def export_into(
    runner: LocalRunner, target: RemoteHost, paths: Sequence[str], receiver: Sequence[str], *, closure: Closure | None = None,
) -> Result:
    """The export of paths (of closure, when given), into `receiver`'s stdin on the target, over its connection; the receiver's result.

    An export that fails is the result's failure too (exit 1, its error line), whatever the receiver made of it.
    """
    with exported(runner, paths, closure) as source:
        received = target.feed(receiver, source, describe_source=source.describe)
    if source.error is not None:
        return Result(tuple(receiver), 1, "", f"exporting {len(paths)} paths failed: {source.error}")
    return received


class NixStoreExport:
    """`nix-store --export` of paths, as a stream to read; after close(), `error` is Nix's error line if it failed."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._process = subprocess.Popen(commands.nix_store_export(paths), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._process.stdout is not None
        self._sent = CountingReader(self._process.stdout)
        self.describe = "(the export above)"
        self.error: str | None = None

    @property
    def count(self) -> int:
        return self._sent.count

    def read(self, size: int = -1) -> bytes:
        return self._sent.read(size)

    def close(self) -> None:
        assert self._process.stdout is not None and self._process.stderr is not None
        self._process.stdout.close()
        said = self._process.stderr.read().decode("utf-8", "replace")
        if self._process.wait() != 0:
            self.error = nix_error(said)


def export_description(count: int) -> str:
    return f"(the export of the {count} path{'' if count == 1 else 's'} it lacks, written here)"


@contextmanager
def exported(runner: LocalRunner, paths: Sequence[str], closure: Closure | None) -> Iterator[ExportReader | NixStoreExport]:
    """The export of paths to read from: written here when the closure's records cover them all, else nix-store --export's.

    Its `error` (None when it went well) is known once the block ends.
    """
    objects = closure.export_of(paths) if closure is not None else None
    if objects is not None:
        yield ExportReader(objects, describe=export_description(len(paths)))
        return
    runner.echo.command(commands.nix_store_export(paths))
    export = NixStoreExport(paths)
    try:
        yield export
    finally:
        export.close()


def remove_failed_import(target: Host, missing: Sequence[str]) -> str:
    """Delete what a failed import of `missing` (dependencies first) left in the store; says what, for the error message."""
    try:
        result = target.run(["sh", "-c", script("delete_if_dead"), "sh", *reversed(missing)], sudo=True)
    except NixfabError as error:
        return f"; the paths it imported could not be removed ({error})"
    left = result.stdout.split() if result.ok else list(missing)
    if not left:
        return "; nothing it imported was kept: the store is as it was"
    return f"; {len(left)} of the paths it imported are still in the store (alive, or `nix-store --delete` failed): {' '.join(left)}"
