"""`detach cache build|info|verify|clear SPEC`: the cache of a spec, as training would use it."""

from __future__ import annotations

import argparse
import multiprocessing
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detach_framework.cache.build import ensure_store
from detach_framework.cache.keys import CacheContext, CachePlan, payload_differences, plan_cache
from detach_framework.cache.store import (
    BUILDING,
    COMPLETE,
    LAST_RUN,
    CorruptEntryError,
    DamagedStoreError,
    damaged_store,
    decode_record,
    directory_size,
    inspect_store,
    iterate_entries,
    read_marker,
    remove_store,
)
from detach_framework.errors import UserError
from detach_framework.spec import Experiment, load_spec


def run_cache_command(args: argparse.Namespace, host: Any, context_for: Callable[[Experiment], CacheContext]) -> int:
    """`context_for(spec)` builds the source and model exactly as training does (a Session), so the backbone's
    weights, and so the cache uid, are the ones training will see."""
    spec = load_spec(args.spec, host.registry, args.overrides)
    if args.action == "clear" and getattr(args, "all", False):
        return clear_all(Path(spec.cache.dir))
    if spec.cache.mode == "off":
        raise UserError(f"{args.spec}: cache.mode is off, this spec uses no cache")
    context = context_for(spec)
    plan = plan_cache(context)
    if plan is None:
        raise UserError(
            f"{args.spec}: nothing to cache: the video backbone trains (model.video_backbone.frozen=false) and "
            "cache.frames is not on"
        )
    return {"build": build, "info": info, "verify": verify, "clear": clear}[args.action](plan, context)


def build(plan: CachePlan, context: CacheContext) -> int:
    written = ensure_store(plan, context)
    state = "built" if written else "already complete"
    print(f"{state}: {plan.path} ({plan.entries} entries, {written} written now; uid {plan.uid})")
    return 0


def info(plan: CachePlan, context: CacheContext) -> int:
    state = inspect_store(plan.uid, plan.path, plan.partial_path)
    content = [f"features ({plan.features_dtype})" if plan.features else "", "frames" if plan.frames else ""]
    rows = [
        ("path", str(state.path)),
        ("uid", plan.uid),
        ("state", state.message),
        ("content", " + ".join(c for c in content if c)),
        ("entries", f"{plan.entries} expected ({', '.join(f'{k} {v}' for k, v in plan.split_sizes.items())})"),
        ("size", _megabytes(directory_size(state.path)) if state.path.is_dir() else "-"),
    ]
    last = read_marker(plan.path / LAST_RUN)
    if last:
        rows.append(
            (
                "last run",
                f"hit rate {last.get('hit_rate', 0):.1%} ({last.get('hits')} hits, {last.get('misses')} misses, "
                f"{last.get('built')} built) at {last.get('finished')}",
            )
        )
    else:
        rows.append(("last run", "no reads recorded"))
    others = _other_caches(plan)
    if others:
        size = sum(directory_size(p) for p, _ in others)
        rows.append(("other caches", f"{len(others)} for other settings in {plan.root} ({_megabytes(size)})"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


def verify(plan: CachePlan, context: CacheContext) -> int:
    """Exit 0 when the cache is complete, current and every entry passes its checksum; 1 otherwise."""
    state = inspect_store(plan.uid, plan.path, plan.partial_path)
    problems: list[str] = []
    if state.state == "missing":
        problems.append(f"missing: {plan.path} is not built")
        family = plan.uid.rsplit("-", 1)[0]  # same dataset and backbone: most likely this spec before a change
        for path, marker in _other_caches(plan):
            if path.name.rsplit("-", 1)[0] != family:
                continue
            changed = payload_differences(marker.get("payload", {}), plan.payload)
            problems.append(f"stale: {path.name} was built for other settings ({', '.join(changed[:4])})")
    elif state.state in ("stale", "foreign", "damaged"):
        problems.append(f"{state.state}: {state.message}")
    else:
        problems += _isolated(_check_partial if state.state == "partial" else _check_entries, plan, state.path)
    if problems:
        for line in problems:
            print(line)
        return 1
    print(f"ok: {plan.path}: {plan.entries} entries, uid {plan.uid}, every checksum matches")
    return 0


def _isolated(scan: Callable[[CachePlan], list[str]], plan: CachePlan, path: Path) -> list[str]:
    """`scan(plan)` in a forked child where fork exists. LMDB trusts the offsets and sizes in its pages (and
    py-lmdb touches every page of a value it returns), so a damaged page can send a read past the end of the
    file: a SIGBUS, which ends the child, and the store reads as damaged."""
    if "fork" not in multiprocessing.get_all_start_methods():
        answer = _answer(scan, plan)
    else:
        fork = multiprocessing.get_context("fork")
        receiver, sender = fork.Pipe(duplex=False)
        child = fork.Process(target=lambda: sender.send(_answer(scan, plan)), daemon=True)
        child.start()
        sender.close()
        try:
            answer = receiver.recv()
        except EOFError:  # the child died before answering
            child.join()
            if child.exitcode is None or child.exitcode >= 0:
                raise RuntimeError(f"verify: the scan of {path} failed (exit code {child.exitcode})") from None
            reason = f"reading it killed the reader with {signal.Signals(-child.exitcode).name}"
            return [f"damaged: {damaged_store(path, reason)}"]
        child.join()
    kind, value = answer
    if kind == "error":
        raise UserError(value)
    return value


def _answer(scan: Callable[[CachePlan], list[str]], plan: CachePlan) -> tuple[str, Any]:
    try:
        return "problems", scan(plan)
    except DamagedStoreError as exc:  # a page that does not parse, found while walking the entries
        return "problems", [f"damaged: {exc}"]
    except UserError as exc:
        return "error", str(exc)


def _check_partial(plan: CachePlan) -> list[str]:
    written = sum(1 for _ in iterate_entries(plan.partial_path)) if (plan.partial_path / "data.mdb").exists() else 0
    return [f"partial: {written} of {plan.entries} entries written, no {COMPLETE}; build resumes it"]


def _check_entries(plan: CachePlan) -> list[str]:
    problems: list[str] = []
    expected = {plan.key(split, i) for split, size in plan.split_sizes.items() for i in range(size)}
    corrupt: list[str] = []
    foreign = 0
    for key, value in iterate_entries(plan.path):
        if key not in expected:
            foreign += 1
            continue
        expected.discard(key)
        try:
            decode_record(value, key.decode())
        except CorruptEntryError as exc:
            corrupt.append(str(exc))
    if corrupt:
        problems.append(f"corrupt: {len(corrupt)} entries fail their checksum or header:")
        problems += [f"  {line}" for line in corrupt[:10]]
    if expected:
        problems.append(f"incomplete: {len(expected)} entries missing (e.g. {sorted(expected)[0].decode()})")
    if foreign:
        problems.append(f"stale: {foreign} entries carry another uid than {plan.uid}")
    return problems


def clear(plan: CachePlan, context: CacheContext) -> int:
    removed = [path for path in (plan.path, plan.partial_path) if remove_store(path)]
    if plan.root.is_dir():  # (cache.dir under a file: unlink would raise NotADirectoryError)
        plan.lock_path.unlink(missing_ok=True)
    print(f"removed {', '.join(map(str, removed))}" if removed else f"nothing to remove at {plan.path}")
    return 0


def clear_all(root: Path) -> int:
    if not root.is_dir():
        print(f"nothing to remove: {root} does not exist")
        return 0
    stores = [p for p in root.iterdir() if (p / COMPLETE).is_file() or (p / BUILDING).is_file()]
    for path in stores:
        remove_store(path)
    for lock in root.glob("*.lock"):
        lock.unlink(missing_ok=True)
    print(f"removed {len(stores)} caches from {root}")
    return 0


def _other_caches(plan: CachePlan) -> list[tuple[Path, dict[str, Any]]]:
    if not plan.root.is_dir():
        return []
    out = []
    for path in sorted(plan.root.iterdir()):
        marker = read_marker(path / COMPLETE) if path.is_dir() else None
        if marker is not None and path != plan.path:
            out.append((path, marker))
    return out


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
