"""Train a queue of preset studies in the background, resuming, and commit each finished run.

The long studies (``baselines``, ``cpu`` with its tuning sweep, ``convergence``) take
many hours on 2 cores, longer than a working session.  This runner trains every
unfinished run of the given ``PRESET:STUDY[,STUDY]`` items, in order, skipping the
finished ones, so restarting it after an interruption goes on where it stopped (a run
cut short resumes from its last complete checkpoint).  With ``--commit`` it commits
each newly finished run folder on its own (``git add`` + ``git commit`` of that folder
only), so that a session that ends mid-queue loses at most the run in progress; a dense
run that a sparse run trained again (its weights were not in the cache) is committed too.

Usage::

    nohup setsid .venv/bin/python scripts/study_runner.py --commit \\
        baselines:table baselines:patterns cpu:tuning convergence:convergence,rho > runner.log 2>&1 &
    .venv/bin/python scripts/study_runner.py --dry-run cpu:tuning     # the queue, nothing trained

A preset with a selection study (``protocol``, ``cpu``'s ``learned``) leaves a label's table
runs out until its choice is recorded in the preset's ``chosen`` field.  The runner says how
many table runs wait so, and names each choice the selection rule can make from the finished
runs that the preset has not recorded yet (``=== choice ready: ...``): record it (a test
checks it against the rule) and restart the runner to queue those table runs.

The runs that need one dense model's weights follow that dense run (the weights live in the
ignored cache, which a fresh machine lacks, so a run whose dense model is not there trains it
again first), and a dense run whose only dependents wait for a choice goes last.

Within ``STUDY`` ``tuning``, runs go seed by seed, cheap tasks first (RTE, the slowest,
last), so that a partial sweep already holds one seed of every task.  A run that fails
is logged and skipped (the queue goes on); the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

TUNING_TASK_ORDER = {"mrpc": 0, "stsb": 1, "cola": 2, "rte": 3}


def queue(items: list[str], results_dir: str) -> list:
    """The unfinished runs of ``items`` (``PRESET:STUDY[,STUDY]``), deduplicated, in order."""
    from nxmlab.study.studies.runs import preset_runs

    runs, seen = [], set()
    for item in items:
        preset, _, studies = item.partition(":")
        names = [s for s in studies.split(",") if s] or ["table"]
        specs = preset_runs(preset, names, results_dir)
        if "tuning" in names:
            specs = sorted(specs, key=lambda s: (s.args.seed, TUNING_TASK_ORDER.get(s.task.name, 9),
                                                 s.args.num_train_epochs, s.args.learning_rate))
        for spec in specs:
            folder = spec.folder()
            if str(folder.path) in seen or folder.finished:
                continue
            seen.add(str(folder.path))
            runs.append(spec)
    presets = list(dict.fromkeys(item.partition(":")[0] for item in items))
    return by_start(runs, [spec for preset in presets for spec in _pending(preset, results_dir)])


def _pending(preset: str, results_dir: str) -> list:
    from nxmlab.study.studies.runs import pending_runs

    return pending_runs(preset, results_dir)


def start_of(spec) -> str:
    """The folder of the dense run ``spec`` starts from, takes its mask from or distils from;
    a dense run's own folder (and so does a run that needs no dense model)."""
    if spec.method.sparse and spec.method.needs_dense(spec):
        return str(spec.dense().folder().path)
    return str(spec.folder().path)


def by_start(runs: list, pending: list = ()) -> list:
    """``runs`` with each dense run and the runs that need its weights next to each other.

    The weights live in the ignored cache, which a fresh machine lacks: a run whose dense
    model is not there trains it again first.  So the runs of one dense model go together
    (in the order of each group's first run), and a dense run that only ``pending`` runs
    need (table runs that wait for a selection choice) goes last: trained now, its weights
    would have to be trained again when those runs are queued in a later session.
    """
    starts = [start_of(spec) for spec in runs]  # each parses a RunSpec: once per run
    needed = {start for spec, start in zip(runs, starts) if start != str(spec.folder().path)}
    later = {start_of(spec) for spec in pending} - needed
    first: dict[str, int] = {}
    for start in starts:
        first.setdefault(start, len(first))
    order = sorted(range(len(runs)), key=lambda i: (starts[i] in later, first[starts[i]]))
    return [runs[i] for i in order]


def ready_choices(presets, results_dir: str) -> list[str]:
    """``"<preset> <task> <label>: <options>"`` for each choice the selection rule makes from
    the finished selection runs that the preset's ``chosen`` field does not record yet."""
    from nxmlab.study.studies import selection
    from nxmlab.study.studies.presets import get_preset

    out = []
    for preset in presets:
        preset = get_preset(preset)
        if not preset.selection:
            continue
        rule, recorded = selection.choose(preset, results_dir), selection.recorded(preset)
        out += [f"{preset.name} {task} {label}: {options}" for task, per_label in rule.items()
                for label, options in per_label.items() if recorded.get(task, {}).get(label) != options]
    return out


def waiting(presets, results_dir: str) -> int:
    """How many table runs of ``presets`` wait for a selection choice (in no queue yet)."""
    return sum(len(_pending(preset, results_dir)) for preset in presets)


def changed(path: Path) -> bool:
    """The folder holds changes git has not committed (new, modified or deleted files)."""
    return bool(subprocess.run(["git", "status", "--porcelain", "--", "."], check=True, cwd=path,
                               capture_output=True, text=True).stdout.strip())


def to_commit(spec) -> list[Path]:
    """The run's folder, and its dense start's when the run trained that again (a fresh
    machine's cache lacks the weights, so the dense folder is rewritten: same predictions,
    a new recorded time); each only when it exists and git sees changes in it."""
    paths = [Path(spec.folder().path)]
    if spec.method.sparse and spec.method.needs_dense(spec):
        paths.append(Path(spec.dense().folder().path))
    return [p for p in paths if p.is_dir() and changed(p)]


def commit(path: Path) -> None:
    """Commit one finished run folder, and nothing else, in the repository that holds it (the
    runner may run from another checkout, e.g. a snapshot worktree, with ``--results-dir``
    pointing into the working repository)."""
    prefix = subprocess.run(["git", "rev-parse", "--show-prefix"], check=True, cwd=path, capture_output=True,
                            text=True).stdout.strip().rstrip("/")
    subprocess.run(["git", "add", "--", "."], check=True, cwd=path)
    subprocess.run(["git", "commit", "-q", "-m", f"results: {prefix or path}", "--", "."], check=True, cwd=path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", help="PRESET:STUDY[,STUDY], e.g. cpu:tuning")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run folder")
    parser.add_argument("--dry-run", action="store_true", help="print the queue and exit")
    ns = parser.parse_args(argv)

    from nxmlab.study.studies.presets import PRESETS
    from nxmlab.study.train.recipe import run_experiment

    for item in ns.items:
        if item.partition(":")[0] not in PRESETS:
            print(f"study_runner: error: unknown preset in {item!r} (known: {', '.join(sorted(PRESETS))})",
                  file=sys.stderr)
            return 2
    runs = queue(ns.items, ns.results_dir)
    presets = list(dict.fromkeys(item.partition(":")[0] for item in ns.items))
    print(f"=== {len(runs)} runs to do", flush=True)
    held = waiting(presets, ns.results_dir)
    if held:
        print(f"=== {held} table runs wait for a selection choice (not in this queue)", flush=True)
    announced = set()
    for line in ready_choices(presets, ns.results_dir):
        announced.add(line)
        print(f"=== choice ready: {line}", flush=True)
    if ns.dry_run:
        for spec in runs:
            print(f"    {spec.folder().path}")
        return 0
    failed = 0
    for i, spec in enumerate(runs, 1):
        path = spec.folder().path
        print(f"=== [{i}/{len(runs)}] {path} {time.strftime('%H:%M:%S')}", flush=True)
        tic = time.time()
        try:
            run_experiment(spec)
        except Exception as exc:  # noqa: BLE001 - logged, the queue goes on
            failed += 1
            print(f"=== FAILED {path}: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"=== done {path} {time.time() - tic:.0f}s", flush=True)
        for line in ready_choices(presets, ns.results_dir):
            if line not in announced:
                announced.add(line)
                print(f"=== choice ready: {line} (record it in the preset's chosen field, then restart "
                      "the runner to queue its table runs)", flush=True)
        if ns.commit:
            for folder in to_commit(spec):
                try:
                    commit(folder)
                except subprocess.CalledProcessError as exc:  # e.g. a concurrent git command held the index lock
                    print(f"=== not committed {folder}: {exc}; commit it by hand", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
