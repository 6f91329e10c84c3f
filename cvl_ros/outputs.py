"""Output safety: the one rule every cvl tool follows when it writes files (ROS-free).

**The rule.** A tool never deletes or overwrites anything it did not write:

1. *Ownership is recorded.* Every output folder holds a marker file, :data:`MARKER`
   (``.cvl-output.json``), naming the tool that made the folder and listing every file and
   folder the cvl tools wrote there. What is not listed belongs to the user.
2. *Foreign folders are refused.* Writing a whole folder (``cvl-build-db --out``,
   ``cvl-synth --out``) into an existing non-empty folder without the tool's marker is refused,
   with or without ``--overwrite``. Outputs of earlier versions (no marker) are accepted only
   where the tool recognises them exactly (``recognise=``); otherwise the message asks the user
   to delete the folder themselves.
3. *Overwriting is explicit and narrow.* An existing output of the tool is replaced only with
   ``--overwrite``, and only when every entry in it is listed in its marker: if the user put
   files there (``notes.txt``), ``--overwrite`` is **refused** with a message naming them, so
   nothing is ever deleted that the tool did not write (it does not move the user's files
   either: they stay where they are, the user decides).
4. *Checks come first.* Callers check their inputs before they enter :func:`prepare_output`,
   which checks the output before anything is written; an output equal to, inside or above
   an input (``--out ..``), or above the current directory, is refused.
5. *Atomic replacement.* The tool writes into a hidden temporary sibling
   (``.<name>.<tool>.partial-<pid>-<random>``) that is renamed onto the output at the end. A
   failure (exception, Ctrl-C) removes the temporary folder and leaves the old output as it
   was. A temporary folder left by a killed run (its process is gone) never blocks a re-run and
   is removed by the next run of the same tool.

Tools that write *some* paths into a folder shared with other tools or the user
(``cvl-build-tiles`` writes ``satmap/`` and the split files into a dataset root) use
:func:`prepare_members`: existing members need ``--overwrite`` and must be listed in the
folder's marker (or be recognised as written by an earlier version); they are staged in a
hidden folder and moved into place at the end, and the marker gains the new entries.

Errors are :class:`OutputError` (a ``ValueError``) whose message says what is wrong, where,
and how to fix it; CLIs print it as ``cvl-X: error: ...`` and exit with status 2.

Example::

    with prepare_output(args.out, tool="cvl-build-db", inputs=[args.tiles],
                        overwrite=args.overwrite) as tmp:
        write_everything_into(tmp)        # tmp: an empty folder beside args.out
    # here args.out holds the new output (with its marker); on an exception it is unchanged
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

MARKER = ".cvl-output.json"
MARKER_FORMAT = "cvl_ros.output/1"
#: At most this many foreign or existing entries are named in a message.
_SHOW = 5


class OutputError(ValueError):
    """An output path the tool must not write (message: what, where, how to fix)."""


# ------------------------------------------------------------------ helpers
def _abs(path) -> Path:
    """Absolute path with symlinks and ``..`` resolved (the folder that would be changed)."""
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _entries(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative POSIX paths; folders end with ``/``)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for d in dirnames:
            out.append((rel / d).as_posix() + "/")
        for f in filenames:
            out.append((rel / f).as_posix())
    return sorted(e for e in out if e != MARKER)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _listing(paths, root: Path | None = None) -> str:
    paths = list(paths)
    shown = ", ".join(str(root / p if root else p) for p in paths[:_SHOW])
    more = f" and {len(paths) - _SHOW} more" if len(paths) > _SHOW else ""
    return shown + more


def read_marker(folder) -> dict | None:
    """The marker of ``folder`` (``{"tool", "tools", "files", ...}``) or None.

    An unreadable or foreign ``.cvl-output.json`` counts as no marker (so the folder is foreign).
    """
    p = Path(folder) / MARKER
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != MARKER_FORMAT \
            or not isinstance(m.get("files"), list) or not isinstance(m.get("tool"), str):
        return None
    return m


def write_marker(folder, tool: str, files: Iterable[str], tools: Iterable[str] = ()) -> None:
    """Write ``folder``'s marker: made by ``tool``; ``files`` are the entries the tools wrote."""
    names = sorted(set(tools) | {tool})
    _write_json_atomic(Path(folder) / MARKER, {
        "format": MARKER_FORMAT, "tool": tool, "tools": names,
        "files": sorted(set(files) - {MARKER})})


def check_separate(outputs, inputs, what: str = "--out") -> None:
    """Refuse an output path equal to, inside or above an input path (or above the cwd)."""
    cwd = _abs(os.getcwd())
    for o in outputs:
        o = _abs(o)
        if _inside(cwd, o):
            raise OutputError(f"{what} {o} is (or contains) the current directory {cwd}; "
                              f"choose a new folder beside it, e.g. {what} {o / 'out'}")
        for i in inputs:
            if i is None:
                continue
            i = _abs(i)
            if o == i:
                raise OutputError(f"{what} {o} is the input {i}; choose another output folder")
            if _inside(o, i):
                raise OutputError(f"{what} {o} lies inside the input {i}; choose an output "
                                  "folder outside the inputs")
            if _inside(i, o):
                raise OutputError(f"{what} {o} contains the input {i} (output above an input); "
                                  "choose an output folder outside the inputs")


def owned_entries(folder, recognise: Callable[[Path], set] | None = None) -> set:
    """Entries of ``folder`` written by cvl tools: its marker's list, plus ``recognise(folder)``.

    ``recognise`` (optional) returns the entries an earlier version of the tool wrote (outputs
    without a marker) that the tool can recognise exactly; an empty set otherwise.
    """
    folder = Path(folder)
    m = read_marker(folder)
    owned = set(m["files"]) if m else set()
    if recognise is not None:
        owned |= set(recognise(folder))
    return owned


def foreign_entries(folder, recognise: Callable[[Path], set] | None = None) -> list[str]:
    """Entries of ``folder`` that no cvl tool wrote (the user's), sorted."""
    owned = owned_entries(folder, recognise)
    return [e for e in _entries(Path(folder)) if e not in owned]


def _clean_stale(parent: Path, prefix: str) -> None:
    """Remove ``<prefix><pid>-<rand>`` folders of dead processes that hold a partial marker."""
    for p in parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-")[0]
        if not pid.isdigit() or _pid_alive(int(pid)) or not p.is_dir():
            continue
        m = read_marker(p)
        if m is not None and m.get("partial"):
            shutil.rmtree(p, ignore_errors=True)


def _new_staging(parent: Path, prefix: str, tool: str) -> Path:
    _clean_stale(parent, prefix)
    tmp = parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    _write_json_atomic(tmp / MARKER, {"format": MARKER_FORMAT, "tool": tool, "tools": [tool],
                                      "files": [], "partial": True, "pid": os.getpid()})
    return tmp


# ------------------------------------------------------------------ whole-folder outputs
def check_output(out, *, tool: str, inputs=(), overwrite: bool = False,
                 recognise: Callable[[Path], set] | None = None, what: str = "--out") -> str:
    """Check that ``tool`` may write the folder ``out``; returns ``"new"`` or ``"replace"``.

    Raises :class:`OutputError` for a file, a non-empty folder of someone else (no marker of
    ``tool``, not recognised), an own output without ``overwrite``, an own output holding
    foreign entries, or an output that overlaps an input (see :func:`check_separate`).
    """
    out = _abs(out)
    check_separate([out], inputs, what)
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise OutputError(f"{what} {out} is a file, not a folder; choose a folder path")
    if not any(out.iterdir()):
        return "new"
    m = read_marker(out)
    legacy = set(recognise(out)) if (m is None and recognise is not None) else set()
    if m is None and not legacy:
        raise OutputError(f"{what} {out} is a folder that {tool} did not write (it is not "
                          f"empty and has no {MARKER}); {tool} will not delete or overwrite it: "
                          "choose a new or empty folder, or delete it yourself")
    if m is not None and m["tool"] != tool:
        raise OutputError(f"{what} {out} was written by {m['tool']}, not {tool}; choose "
                          "another folder")
    if not overwrite:
        raise OutputError(f"{what} {out} already holds {tool} output; pass --overwrite to "
                          "replace it, or choose another folder")
    foreign = foreign_entries(out, recognise)
    if foreign:
        raise OutputError(f"{what} {out} holds files {tool} did not write: "
                          f"{_listing(foreign, out)}; move them out (or delete them) and run "
                          "again: --overwrite only replaces what the tool wrote")
    return "replace"


@contextmanager
def prepare_output(out, *, tool: str, inputs=(), overwrite: bool = False,
                   recognise: Callable[[Path], set] | None = None,
                   what: str = "--out") -> Iterator[Path]:
    """Write the folder ``out`` safely; yields an empty temporary folder to write into.

    Args:
        out: the output folder (created with its parents; symlinks resolved).
        tool: the tool's name, e.g. ``"cvl-build-db"``; recorded in the marker.
        inputs: paths the tool reads; ``out`` may not equal, lie inside or contain any.
        overwrite: replace an existing output of ``tool`` (its ``--overwrite``).
        recognise: ``folder -> set of entries`` that an earlier version of the tool wrote (no
            marker); return an empty set unless the folder is recognised exactly.
        what: how the output is named in messages (the CLI flag).

    All checks (:func:`check_output`) run before the temporary folder is made. When the block
    ends normally, the marker is written and the temporary folder is renamed onto ``out`` (an
    old output is renamed aside first and removed after). On an exception the temporary folder
    is removed and ``out`` is left as it was.
    """
    out = _abs(out)
    check_output(out, tool=tool, inputs=inputs, overwrite=overwrite, recognise=recognise,
                 what=what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_staging(out.parent, f".{out.name}.{tool}.partial-", tool)
    try:
        yield tmp
        _commit_folder(tmp, out, tool, overwrite, recognise, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit_folder(tmp: Path, out: Path, tool: str, overwrite: bool, recognise, what) -> None:
    write_marker(tmp, tool, _entries(tmp))
    # Check again: the folder may have changed during a long run.
    state = check_output(out, tool=tool, overwrite=overwrite, recognise=recognise, what=what)
    if state == "new":
        try:
            os.rename(tmp, out)  # onto nothing or onto an empty folder
        except OSError as exc:
            raise OutputError(f"{what} {out}: could not move the new output into place "
                              f"({exc}); nothing was changed") from None
        return
    old = out.parent / f".{out.name}.{tool}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)  # only the tool's own files: checked by check_output above


def remove_output(folder, *, tool: str, recognise=None) -> bool:
    """Delete ``folder`` if ``tool`` wrote it and it holds nothing else; returns whether it did."""
    folder = Path(folder)
    m = read_marker(folder)
    legacy = set(recognise(folder)) if (m is None and recognise is not None) else set()
    if (m is None and not legacy) or (m is not None and m["tool"] != tool) \
            or foreign_entries(folder, recognise):
        return False
    shutil.rmtree(folder)
    return True


# ------------------------------------------------------------------ members of a shared folder
def _existing_under(root: Path, member: str) -> list[str]:
    p = root / member
    if p.is_symlink() or p.is_file():
        return [member]
    if p.is_dir():
        return [member.rstrip("/") + "/"] + [f"{member.rstrip('/')}/{e}" for e in _entries(p)]
    return []


def check_members(root, members: Iterable[str], *, tool: str, inputs=(),
                  overwrite: bool = False, recognise: Callable[[Path], set] | None = None,
                  what: str = "--out") -> None:
    """The checks of :func:`prepare_members`, without writing anything (to fail early)."""
    root = _abs(root)
    members = [str(m).strip("/") for m in members]
    check_separate([root / m for m in members], inputs, what)
    if root.exists() and not root.is_dir():
        raise OutputError(f"{what} {root} is a file, not a folder; choose a folder path")
    existing = [e for m in members for e in _existing_under(root, m)]
    existing_files = [e for e in existing if not e.endswith("/")]
    if existing_files and not overwrite:
        raise OutputError(f"{what} {root} already holds {_listing(existing_files, root)}; pass "
                          "--overwrite to replace them, or choose another folder")
    owned = owned_entries(root, recognise) if existing else set()
    foreign = [e for e in existing if e not in owned
               and not (e.endswith("/") and e.rstrip("/") in members)]
    if foreign:
        raise OutputError(f"{what} {root}: {_listing(foreign, root)} were not written by {tool} "
                          f"(not listed in {root / MARKER}); {tool} will not replace them: move "
                          "them away or delete them yourself, then run again")


@contextmanager
def prepare_members(root, members: Iterable[str], *, tool: str, inputs=(),
                    overwrite: bool = False, recognise: Callable[[Path], set] | None = None,
                    what: str = "--out") -> Iterator[Path]:
    """Write the paths ``members`` (relative files or folders) inside a shared folder ``root``.

    For tools that add to a folder holding other things (a dataset root). Yields an empty
    staging folder (hidden, inside ``root``) that mirrors ``root``: write member ``m`` to
    ``staging / m``. Checks first: no member may overlap an input; a member that exists needs
    ``overwrite``, and then every entry in it must be listed in ``root``'s marker (or be
    recognised by ``recognise(root)`` as written by an earlier version), else the run is
    refused with the foreign entries named. At the end each staged member replaces the old one
    (moved aside, then removed: only owned entries), members the block did not write are left
    as they were, and ``root``'s marker gains the new entries (created naming ``tool`` when
    ``root`` had none). On an exception the staging folder is removed and ``root`` is unchanged.
    """
    root = _abs(root)
    members = [str(m).strip("/") for m in members]
    check_members(root, members, tool=tool, inputs=inputs, overwrite=overwrite,
                  recognise=recognise, what=what)
    root.mkdir(parents=True, exist_ok=True)
    staging = _new_staging(root, f".{tool}.partial-", tool)
    try:
        yield staging
        _commit_members(root, staging, members, tool, overwrite, recognise, what)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _commit_members(root: Path, staging: Path, members, tool, overwrite, recognise,
                    what) -> None:
    done = [m for m in members if (staging / m).exists() or (staging / m).is_symlink()]
    written = set()
    for m in done:
        p = staging / m
        if p.is_dir() and not p.is_symlink():
            written |= {m + "/"} | {f"{m}/{e}" for e in _entries(p)}
        else:
            written.add(m)
        parts = m.split("/")[:-1]  # the folders above the member
        written |= {"/".join(parts[:k]) + "/" for k in range(1, len(parts) + 1)}
    # Check again (the folder may have changed during the run), then move.
    replaced = [m for m in done if (root / m).exists() or (root / m).is_symlink()]
    removed = {e for m in replaced for e in _existing_under(root, m)}
    if any(not e.endswith("/") for e in removed) and not overwrite:
        raise OutputError(f"{what} {root}: {_listing(replaced, root)} appeared during the run; "
                          "pass --overwrite to replace them")
    if removed:
        owned = owned_entries(root, recognise)
        foreign = sorted(e for e in removed if e not in owned and e.rstrip("/") not in members)
        if foreign:
            raise OutputError(f"{what} {root}: {_listing(foreign, root)} appeared during the "
                              f"run and were not written by {tool}; nothing was changed")
    backup = root / f".{tool}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    moved_aside, placed = [], []
    try:
        for m in replaced:
            (backup / m).parent.mkdir(parents=True, exist_ok=True)
            os.rename(root / m, backup / m)
            moved_aside.append(m)
        for m in done:
            (root / m).parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging / m, root / m)
            placed.append(m)
    except BaseException:
        for m in reversed(placed):
            os.rename(root / m, staging / m)
        for m in reversed(moved_aside):
            os.rename(backup / m, root / m)
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)  # only owned entries: checked above
    marker = read_marker(root)
    files = (set(marker["files"]) - removed if marker else set()) | written
    write_marker(root, marker["tool"] if marker else tool, files,
                 tools=(marker.get("tools", []) if marker else []) + [tool])


# ------------------------------------------------------------------ run folders
def check_run_folder(folder, *, tool: str, owns: Callable[[str], bool], inputs=(),
                     recognise: Callable[[Path], set] | None = None,
                     what: str = "--out") -> str:
    """Check that ``tool`` may write its fixed file names into the run folder ``folder``.

    For tools that write and re-write a few known names (``owns(entry)`` is true for them)
    into a folder they keep using (``cvl-train``'s ``out_dir``, ``cvl-ablate --out``): the
    folder must be new or empty, or hold ``tool``'s marker, or be recognised as an earlier
    run (``recognise``). In such a folder the entries ``owns`` names belong to the tool;
    anything else there (the user's notes) is never touched. Returns ``"new"`` or ``"run"``.
    Raises :class:`OutputError` for a file, a folder of someone else, a folder of another
    cvl tool, or an overlap with an input (:func:`check_separate`).
    """
    folder = _abs(folder)
    check_separate([folder], inputs, what)
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder; choose a folder path")
    if not any(folder.iterdir()):
        return "new"
    m = read_marker(folder)
    if m is not None and m["tool"] != tool:
        raise OutputError(f"{what} {folder} was written by {m['tool']}, not {tool}; choose "
                          "another folder")
    if m is None and not (recognise is not None and recognise(folder)):
        clash = [e for e in _entries(folder) if owns(e)]
        said = f"; it holds {_listing(clash, folder)}" if clash else ""
        raise OutputError(f"{what} {folder} is a folder that {tool} did not write (it is not "
                          f"empty and has no {MARKER}){said}; {tool} will not write into it: "
                          "choose a new or empty folder")
    return "run"


def run_entries(folder, owns: Callable[[str], bool]) -> list[str]:
    """The entries of a run folder that its tool owns (``owns(entry)``), sorted."""
    folder = Path(folder)
    return [e for e in _entries(folder) if owns(e)] if folder.is_dir() else []


def mark_run_folder(folder, *, tool: str, owns: Callable[[str], bool]) -> None:
    """Create ``folder`` (and parents) and write its marker listing the entries ``tool`` owns.

    Call it before the run writes (so a killed run leaves a folder that is recognisably the
    tool's) and after it (to list what it wrote).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = read_marker(folder)
    files = set(m["files"]) if m else set()
    write_marker(folder, tool, files | set(run_entries(folder, owns)),
                 tools=m.get("tools", []) if m else [])


# ------------------------------------------------------------------ result files
def check_result_file(path, *, tool: str, is_own: Callable[[Path], bool], inputs=(),
                      sidecars: Iterable = (), what: str = "--json") -> None:
    """Check that ``tool`` may write the result file ``path`` (and the ``sidecars`` beside it).

    An existing ``path`` is replaced only if ``is_own(path)`` recognises it as the tool's
    earlier result; ``sidecars`` are ``(path, recognise or None)`` pairs of files written
    beside it (a Markdown table, plots): an existing one is replaced only when ``path`` is
    the tool's own result or ``recognise(sidecar)`` is true. ``path`` may not be an input.
    Raises :class:`OutputError` naming the file and what to do.
    """
    p = _abs(path)
    for i in inputs:
        if i is not None and _abs(i) == p:
            raise OutputError(f"{what} {p} is the input {i}; choose another output path")
    own = False
    if p.exists() or p.is_symlink():
        if p.is_dir():
            raise OutputError(f"{what} {p} is a folder; give a file path, e.g. "
                              f"{what} {p / 'result.json'}")
        own = _safe_is_own(is_own, p)
        if not own:
            raise OutputError(f"{what} {p} exists and is not a {tool} result; {tool} will not "
                              "overwrite it: choose another path, or delete it yourself")
    for side, recognise in sidecars:
        s = _abs(side)
        if not (s.exists() or s.is_symlink()) or own:
            continue
        if s.is_dir() or recognise is None or not _safe_is_own(recognise, s):
            raise OutputError(f"{what} {p}: {tool} also writes {s}, which exists and is not "
                              f"{tool}'s; it will not overwrite it: choose another {what} path, "
                              "or move that file away")


def _safe_is_own(fn: Callable[[Path], bool], p: Path) -> bool:
    try:
        return bool(fn(p))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def read_json(path) -> object:
    """The JSON value in ``path``, or None when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
