"""What a study costs in wall time: a preset's runs priced from step times.

* :func:`project_preset_seconds` (pure: no I/O, no torch) turns a preset and per-task
  seconds per optimizer step into the wall time of every run its studies train,
  evaluations and ADMM Z/U updates included;
* :func:`live_projection` prices them from the step times the results store recorded
  (:func:`store_step_table`), counting finished runs as done: ``nxmlab reproduce
  --dry-run`` and the notebooks' plans (:func:`live_cost`);
* :func:`projected_cost` reads the projection ``make bench`` measured
  (``bench/results/study_cost.json``, a source checkout's, when it is there).

``bench/study_cost.py`` measures the step times and writes that JSON; it imports the
projection from here, so that nothing in nxmlab imports the benchmarks.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..results.store import iter_runs, read_json
from ..train.methods import Prune, parse_label
from .presets import Preset, get_preset
from .runs import pending_runs, preset_runs

__all__ = ["GLUE_TRAIN_SIZES", "GLUE_EVAL_SIZES", "KINDS", "OUTLIER_FACTOR", "STUDY_COST_FILE", "has_rho",
           "phase_kinds", "step_seconds", "project_preset_seconds", "store_records", "median_polish",
           "store_step_table", "live_projection", "projected_cost", "live_cost"]

#: GLUE training-set sizes (the GLUE README / nyu-mll/glue).
GLUE_TRAIN_SIZES: dict[str, int] = {"mnli": 392_702, "qnli": 104_743, "qqp": 363_846, "sst2": 67_349,
                                    "cola": 8_551, "mrpc": 3_668, "stsb": 5_749, "rte": 2_490, "wnli": 635}
#: GLUE validation sizes (MNLI: matched + mismatched, both evaluated).
GLUE_EVAL_SIZES: dict[str, int] = {"mnli": 9_815 + 9_832, "qnli": 5_463, "qqp": 40_430, "sst2": 872,
                                   "cola": 1_043, "mrpc": 408, "stsb": 1_500, "rte": 277, "wnli": 71}
#: Step kinds a run is made of.
KINDS = ("dense", "admm", "fixed", "admm+kd", "fixed+kd")


# ====================================================================== pure projection
def setting(batch_size: int | None, train_only_targets: bool | None = False) -> str | None:
    """The training setting a step time depends on besides task and kind: ``"b32"`` or
    ``"b16 targets"`` (only the target Linears train); ``None`` when the batch is unknown."""
    if batch_size is None:
        return None
    return f"b{int(batch_size)}" + (" targets" if train_only_targets else "")


def column(kind: str, setting_: str | None) -> str:
    """A step-time table's column: ``kind`` alone (the preset's batch size, every weight
    training) or ``"<kind> @ <setting>"`` (:func:`setting`)."""
    return kind if setting_ is None else f"{kind} @ {setting_}"


def _runs_of(preset, studies: Iterable[str], specs: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Every run of the studies (or the given ``specs``), deduplicated, in order: ``task``,
    ``label``, ``seed``, ``rho``, ``lengths``, ``batch_size``, ``setting`` and ``heldout``.

    The runs are :func:`preset_runs`'s (so budgets, convergence variants and a protocol's
    own dense batch size apply); ``rho`` is filled in for ADMM runs, ``lengths`` maps each
    phase-length field (``num_train_epochs``, ``retrain_epochs``) to its epochs in that run,
    ``heldout`` is the fraction of the training set a selection run leaves out (else ``None``).
    """
    out = []
    for spec in preset_runs(preset, list(studies)) if specs is None else specs:
        rho = float(spec.cfg.rho) if has_rho(spec.label) else None
        lengths = {step.epochs: spec.epochs(step.epochs) for step in spec.method.phases}
        batch = int(spec.args.per_device_train_batch_size)
        canonical = spec.canonical()  # what the run's config.json will hold, as store_records reads it
        out.append({"task": spec.task.name, "label": spec.label, "seed": spec.seed, "rho": rho, "lengths": lengths,
                    "batch_size": batch, "setting": setting(batch, bool(canonical.get("train_only_targets"))),
                    "heldout": spec.cfg.heldout})
    return out


def has_rho(label: str) -> bool:
    """The method of ``label`` has a ``rho`` option (its runs are keyed by rho too)."""
    return "rho" in parse_label(label)[0].options


def _phases(label: str, lengths: Mapping[str, float]) -> list[tuple[str, str, float]]:
    """``(phase, step kind, epochs)`` of one run of a method label, from the method registry.

    Kinds: ``dense`` (no mask), ``admm`` (a phase with hooks), ``fixed`` (after the prune),
    each sparse kind with ``+kd`` when the label distils.
    """
    method, kd = parse_label(label)
    out, pruned = [], False
    for step in method.steps:
        if isinstance(step, Prune):
            pruned = True
            continue
        kind = "admm" if step.hooks is not None else ("fixed" if pruned else "dense")
        out.append((step.name, kind + ("+kd" if kd and kind != "dense" else ""), lengths[step.epochs]))
    return out


def _evaluations(label: str) -> int:
    """Validation passes of one run: dense 1 (final); sparse 3 (before/after prune, final)."""
    return 3 if parse_label(label)[0].sparse else 1


def step_seconds(table_: Mapping[str, float], kind: str) -> float | None:
    """One step kind (or :func:`column`) from a task's table; ``x+kd`` falls back to ``x`` +
    ``kd_extra``."""
    if kind in table_:
        return float(table_[kind])
    base, _, kd = kind.partition("+")
    kd, _, at = kd.partition(" @ ")
    if kd and column(base, at or None) in table_ and "kd_extra" in table_:
        return float(table_[column(base, at or None)]) + float(table_["kd_extra"])
    return None


def _run_step_seconds(table_: Mapping[str, float], kind: str, setting_: str | None, batch: int,
                      preset_batch: int) -> float | None:
    """Seconds per step of one phase: the table's time at the run's own setting when it has
    one; else the plain kind's (timed at the preset's batch size) scaled to the run's batch
    at a constant time per example."""
    own = step_seconds(table_, column(kind, setting_)) if setting_ is not None else None
    if own is not None:
        return own
    plain = step_seconds(table_, kind)
    return None if plain is None else plain * batch / preset_batch


def project_preset_seconds(preset, seconds_per_step: Mapping[str, Mapping[str, float]],
                           studies: Iterable[str] = ("table", "rho", "dynamics", "convergence"),
                           train_sizes: Mapping[str, int] | None = None,
                           eval_sizes: Mapping[str, int] | None = None,
                           update_seconds: Mapping[str, float] | float = 0.0,
                           eval_fraction: float = 1 / 3,
                           finished: Iterable[tuple[str, str, int, float | None]] = (),
                           specs: Sequence[Any] | None = None) -> dict[str, Any]:
    """Projected wall time of every run a preset's notebooks train. Pure (no I/O).

    Args:
        preset: A :class:`nxmlab.study.studies.presets.Preset` or its name.
        seconds_per_step: ``{task: {kind: seconds}}`` with kinds ``dense``, ``admm``,
            ``fixed``, ``admm+kd``, ``fixed+kd`` (or ``kd_extra``, added to ``admm`` /
            ``fixed`` for the ``+kd`` kinds), measured at the preset's batch size, every
            weight training; and optionally columns (:func:`column`) ``"<kind> @ <setting>"``
            timed at another setting (:func:`setting`: a protocol's batch 16 with only the
            targets training), used for the runs of that setting.  A run with no column of
            its own scales the plain kind to its batch size at a constant time per example.
        studies: The studies the notebooks run (``nxmlab reproduce`` runs all three).
        train_sizes / eval_sizes: Examples per task (default: GLUE's); the preset's
            ``train_limit`` / ``eval_limit`` apply.
        update_seconds: Seconds per ADMM Z/U update (per task, or one number); one
            update per epoch.
        eval_fraction: Cost of evaluating one example relative to training on it
            (forward only, ~1/3 of forward + backward).
        finished: ``(task, label, seed, rho)`` runs already done (``rho`` for ``admm*``
            labels, else ``None``); they cost nothing.
        specs: Price these parsed runs instead of the studies' (e.g.
            :func:`~nxmlab.study.studies.runs.pending_runs`).

    Returns:
        ``{"preset", "model", "runs": [{task, label, seed, rho, steps, seconds, phases,
        finished}], "total_seconds", "remaining_seconds", "by_task", "by_label",
        "missing"}``; runs whose step times are missing count 0 and are listed in
        ``missing``.
    """
    preset = get_preset(preset)
    train_sizes = dict(GLUE_TRAIN_SIZES if train_sizes is None else train_sizes)
    eval_sizes = dict(GLUE_EVAL_SIZES if eval_sizes is None else eval_sizes)
    done = {(t, lb, s, None if r is None else float(r)) for t, lb, s, r in finished}
    runs, missing = [], []
    by_task: dict[str, float] = {}
    by_label: dict[str, float] = {}
    total = remaining = 0.0
    for run in _runs_of(preset, studies, specs):
        task, label, seed, rho, lengths = run["task"], run["label"], run["seed"], run["rho"], run["lengths"]
        batch, setting_, heldout = run["batch_size"], run["setting"], run["heldout"]
        n_train = train_sizes[task] if preset.train_limit is None else min(train_sizes[task], preset.train_limit)
        n_eval = eval_sizes[task] if preset.eval_limit is None else min(eval_sizes[task], preset.eval_limit)
        if heldout:  # a selection run trains on the rest of the training set and scores the held-out part
            n_train, n_eval = n_train - round(heldout * n_train), round(heldout * n_train)
        steps_per_epoch = math.ceil(n_train / batch)
        table_ = seconds_per_step.get(task, {})
        phases, seconds, steps, ok = [], 0.0, 0, True
        for phase, kind, epochs in _phases(label, lengths):
            per_step = _run_step_seconds(table_, kind, setting_, batch, preset.batch_size)
            phase_steps = math.ceil(epochs * steps_per_epoch)
            if per_step is None:
                ok = False
                missing.append(f"{task} {label}: no '{column(kind, setting_)}' step time")
                continue
            phase_seconds = phase_steps * per_step
            if phase == "admm":
                upd = update_seconds.get(task, 0.0) if isinstance(update_seconds, Mapping) else update_seconds
                phase_seconds += math.floor(epochs) * float(upd)
            phases.append({"phase": phase, "kind": kind, "epochs": epochs, "steps": phase_steps,
                           "seconds_per_step": per_step, "seconds": phase_seconds})
            seconds += phase_seconds
            steps += phase_steps
        dense_step = _run_step_seconds(table_, "dense", setting_, batch, preset.batch_size)
        eval_seconds = 0.0
        if dense_step is not None:
            eval_seconds = _evaluations(label) * n_eval * dense_step / batch * eval_fraction
        seconds += eval_seconds
        key = (task, label, seed, rho)
        is_done = key in done
        runs.append({"task": task, "label": label, "seed": seed, "rho": rho, "batch_size": batch,
                     "setting": setting_, "heldout": heldout, "steps": steps,
                     "train_seconds": seconds - eval_seconds, "eval_seconds": eval_seconds, "seconds": seconds,
                     "phases": phases, "complete": ok, "finished": is_done})
        total += seconds
        remaining += 0.0 if is_done else seconds
        by_task[task] = by_task.get(task, 0.0) + seconds
        by_label[label] = by_label.get(label, 0.0) + seconds
    return {"preset": preset.name, "model": preset.model, "runs": runs, "total_seconds": total,
            "remaining_seconds": remaining, "by_task": by_task, "by_label": by_label, "missing": missing}


# ==================================================================== the results store
def store_records(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every finished run's phases: model, task, label, seed, rho, phase, s/step, s/epoch,
    and the run's :func:`setting` (batch size, only the targets training) from its config."""
    rows = []
    for folder in iter_runs(results_dir):
        try:
            m = folder.metrics()
            cfg = folder.config() or {}
        except ValueError:  # unreadable: not a finished run
            continue
        if m is None:
            continue
        label = m["method"] + ("+kd" if m.get("kd") else "")
        batch = (cfg.get("training") or {}).get("per_device_train_batch_size")
        for phase, p in (m.get("phases") or {}).items():
            rows.append({"run": folder.name, "model": m.get("model"), "task": m["task"], "label": label,
                         "seed": m.get("seed"), "rho": m.get("rho"), "phase": phase,
                         "setting": setting(batch, bool(cfg.get("train_only_targets"))),
                         "seconds_per_step": p.get("seconds_per_step"), "seconds_per_epoch": p.get("seconds_per_epoch"),
                         "steps": p.get("steps")})
    return rows


def phase_kinds(label: str) -> list[tuple[str, str]]:
    """``(phase, step kind)`` of every training phase of a method label (see :func:`_phases`)."""
    lengths = {step.epochs: 1.0 for step in parse_label(label)[0].phases}  # only the kinds are read
    return [(ph, kind) for ph, kind, _ in _phases(label, lengths)]


# ============================================================== live projection (dry runs)
#: A stored (task, kind) step time more than this factor above the two-way fit is taken
#: as slowed by other work on the cores (contention only slows) and replaced by the fit.
OUTLIER_FACTOR = 1.5


def median_polish(cells: Mapping[tuple[str, str], float], iterations: int = 10
                  ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Tukey's median polish of ``{(row, col): value}`` (cells may be missing).

    Fits ``value ~ overall + row[r] + col[c]`` by alternately sweeping out row and column
    medians, so one aberrant cell barely moves the fit.  Returns ``(overall, row, col)``.
    """
    resid = dict(cells)
    rows = {r: 0.0 for r, _ in resid}
    cols = {c: 0.0 for _, c in resid}
    overall = 0.0
    for _ in range(iterations):
        for effects, axis in ((rows, 0), (cols, 1)):
            for key in effects:
                m = statistics.median(v for k, v in resid.items() if k[axis] == key)
                effects[key] += m
                for k in resid:
                    if k[axis] == key:
                        resid[k] -= m
            other = cols if axis == 0 else rows
            m = statistics.median(other.values())
            overall += m
            for key in other:
                other[key] -= m
    return overall, rows, cols


def store_step_table(preset, results_dir: str | os.PathLike[str], cost: Mapping[str, Any] | None = None,
                     settings: Iterable[str | None] | None = None
                     ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Seconds per optimizer step by task and step kind for ``preset``'s model, for a live projection.

    The store's finished runs (same model: today's training, length-grouped batches) give
    the median ``seconds_per_step`` per task and :func:`column` (step kind at the run's
    setting: batch size, only the targets training).  A two-way fit of their logs
    (:func:`median_polish`: task effect + column effect) then fills the columns a stored task
    lacks (a protocol's batch-16 steps on a task that has only batch-32 runs so far) and
    replaces any cell more than :data:`OUTLIER_FACTOR` above the fit: runs timed while
    other work shared the cores.  A KD column no task has timed yet (``fixed+kd @ b16
    targets``) is its step kind's time times the median KD/no-KD ratio of the stored
    settings where both were timed.  A task with no stored run gets ``make bench``'s
    measured step times (``cost``: study_cost.json) times the median store/bench ratio; else
    nothing (the projection lists it as missing).  Returns ``(table, source by task)``; with
    ``settings`` (:func:`setting`), the source notes only name the columns at those settings.
    """
    preset = get_preset(preset)
    measured: dict[tuple[str, str], list[float]] = {}
    for r in store_records(results_dir):
        if r["model"] != preset.model or not r["seconds_per_step"]:
            continue
        kinds = dict(phase_kinds(r["label"]))
        if r["phase"] in kinds:
            key = (r["task"], column(kinds[r["phase"]], r.get("setting")))
            measured.setdefault(key, []).append(float(r["seconds_per_step"]))
    cells = {k: math.log(statistics.median(v)) for k, v in measured.items()}
    overall, row, col = median_polish(cells) if cells else (0.0, {}, {})
    bench = ((cost or {}).get("seconds_per_step") or {}).get("small", {})
    bench_batch = ((cost or {}).get("config") or {}).get("batch")
    bench_at = {column(k, setting(bench_batch)): k for k in KINDS}  # make bench times every weight training
    ratios = [math.exp(v) / bench[t][bench_at[c]] for (t, c), v in cells.items()
              if c in bench_at and bench.get(t, {}).get(bench_at[c])]
    calib = statistics.median(ratios) if ratios else None
    kd_ratios = [math.exp(v - cells[t, column(c.split(" @ ")[0].removesuffix("+kd"), at or None)])
                 for (t, c), v in cells.items() if "+kd" in c
                 for at in [c.partition(" @ ")[2]]
                 if (t, column(c.split(" @ ")[0].removesuffix("+kd"), at or None)) in cells]
    kd_factor = statistics.median(kd_ratios) if kd_ratios else None
    table_: dict[str, dict[str, float]] = {}
    source = {}
    for task in sorted({t for t, _ in cells} | set(preset.tasks)):
        have = table_.setdefault(task, {})
        if task not in row:
            if calib:
                have.update({k: bench[task][k] * calib for k in KINDS if bench.get(task, {}).get(k)})
            source[task] = f"make bench x {calib:.2f} (store/bench ratio)" if have else "none"
            continue
        notes = []
        for kind in col:  # every column some task has (KINDS, each at the settings timed)
            fit = math.exp(overall + row[task] + col[kind])
            if (task, kind) not in cells:
                have[kind] = fit
                notes.append((kind, f"{kind} fitted"))
            elif math.exp(cells[task, kind]) > OUTLIER_FACTOR * fit:
                have[kind] = fit
                notes.append((kind, f"{kind} {math.exp(cells[task, kind]):.2f} s -> fit {fit:.2f} s"))
            else:
                have[kind] = math.exp(cells[task, kind])
        for kind in [k for k in have if k.split(" @ ")[0] in ("admm", "fixed")]:
            at = kind.partition(" @ ")[2] or None
            twin = column(kind.split(" @ ")[0] + "+kd", at)
            if twin not in have and kd_factor:  # a KD setting no task has run: the store's KD factor
                have[twin] = have[kind] * kd_factor
                notes.append((twin, f"{twin} = {kind} x {kd_factor:.2f}"))
        for kind in KINDS:  # the plain kinds: the preset's batch size, every weight training
            if kind not in have and column(kind, setting(preset.batch_size)) in have:
                have[kind] = have[column(kind, setting(preset.batch_size))]
        if settings is not None:  # only the notes about columns the preset's runs use
            keep = {column(k, x) for k in KINDS for x in settings} | set(KINDS)
            notes = [(c, text) for c, text in notes if c in keep]
        source[task] = "store" + (f" ({', '.join(text for _, text in notes)})" if notes else "")
    return table_, {t: source[t] for t in preset.tasks}


def live_projection(preset, results_dir: str | os.PathLike[str], studies: Iterable[str],
                    cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`project_preset_seconds` of ``studies`` on :func:`store_step_table`'s step times,
    counting the runs already finished in ``results_dir`` as done.

    Each finished run also has ``measured_seconds``: the wall time its training phases
    recorded (``metrics.json``; evaluations and loss-free controls not included), summed
    in ``measured_seconds`` with their count in ``finished_runs``; ``step_table`` is the
    step-time table it priced them with.
    """
    specs = preset_runs(preset, list(studies), str(results_dir))  # the runs it prices, in the same order
    settings = {setting(int(s.args.per_device_train_batch_size), bool(s.canonical().get("train_only_targets")))
                for s in specs}
    table_, source = store_step_table(preset, results_dir, cost, settings)
    out = project_preset_seconds(preset, table_, studies=studies, specs=specs)
    out["remaining_seconds"] = out["measured_seconds"] = 0.0
    out["finished_runs"] = 0
    for run, spec in zip(out["runs"], specs, strict=True):  # (task, label, seed, rho) misses the n:m pattern
        folder = spec.folder()
        run["finished"] = folder.finished
        out["remaining_seconds"] += 0.0 if run["finished"] else run["seconds"]
        if run["finished"]:
            phases = (folder.metrics() or {}).get("phases") or {}
            run["measured_seconds"] = float(sum(p.get("seconds") or 0.0 for p in phases.values()))
            out["measured_seconds"] += run["measured_seconds"]
            out["finished_runs"] += 1
    out["source"], out["step_table"] = source, table_
    return out


#: Projected preset costs measured by ``make bench`` (bench/study_cost.py) in a source checkout.
STUDY_COST_FILE = Path(__file__).resolve().parents[3] / "bench" / "results" / "study_cost.json"


def projected_cost(preset_name: str, cost_file: str | os.PathLike[str] = STUDY_COST_FILE) -> list[str]:
    """Lines with the projected wall time of a preset from ``make bench``'s study-cost JSON.

    Empty when the file is absent (e.g. an installed, not checked-out, nxmlab).
    """
    data = read_json(cost_file) if Path(cost_file).is_file() else None
    projection = (data or {}).get("projections", {}).get(preset_name)
    if not projection:
        return []
    machine = data.get("machine", {})
    when = str(machine.get("date_utc", "?"))[:10]
    cpus, threads = machine.get("cpu_count", "?"), machine.get("torch_threads", "?")
    lines = [f"projected wall time ({projection['basis']}; make bench on {when}, {cpus} CPU cores, "
             f"{threads} torch thread(s); "
             f"rerun make bench to refresh): {projection['total_hours']:.1f} h in all, "
             f"{projection['remaining_hours']:.1f} h not yet in the store when measured"]
    by_task = projection.get("by_task_hours") or {}
    if by_task:
        lines.append("    by task: " + ", ".join(f"{task} {hours:.1f} h" for task, hours in by_task.items()))
    by_label = projection.get("by_label_hours") or {}
    if by_label:
        lines.append("    by method: " + ", ".join(f"{label} {hours:.1f} h" for label, hours in by_label.items()))
    return lines


def live_cost(preset: Preset, results_dir: str | os.PathLike[str], studies: Sequence[str],
              cost_file: str | os.PathLike[str] = STUDY_COST_FILE) -> list[str]:
    """Lines with the projected wall time of ``studies`` from the step times the results
    store recorded (:func:`live_projection`); empty when nothing is recorded to project from."""
    cost = read_json(cost_file) if Path(cost_file).is_file() else None
    proj = live_projection(preset, results_dir, studies, cost)
    if not proj["runs"] or not proj["total_seconds"]:  # nothing recorded to project from
        return []
    hours = {k: v / 3600 for k, v in proj["by_task"].items()}
    lines = [f"projected wall time on this machine's recorded step times (results store; length-grouped batches): "
             f"{proj['total_seconds'] / 3600:.1f} h in all, {proj['remaining_seconds'] / 3600:.1f} h not yet finished",
             f"    measured: {proj['measured_seconds'] / 3600:.1f} h of training in the {proj['finished_runs']} "
             f"finished run(s)",
             "    by task: " + ", ".join(f"{t} {h:.1f} h" for t, h in hours.items()),
             "    step times: " + "; ".join(f"{t}: {s}" for t, s in proj["source"].items())]
    if len(studies) > 1:  # each study's own runs (a run two studies share counts in both)
        each = {s: live_projection(preset, results_dir, [s], cost) for s in studies}
        lines.insert(2, "    by study: " + ", ".join(
            f"{s} {len(p['runs'])} runs {p['total_seconds'] / 3600:.1f} h ({p['remaining_seconds'] / 3600:.1f} h "
            f"not finished)" for s, p in each.items() if p["runs"]))
    pending = pending_runs(preset, str(results_dir)) if "table" in studies else []
    if pending:  # table runs that wait for a choice are in no study's list yet
        wait = project_preset_seconds(preset, proj["step_table"], specs=pending)
        lines.append(f"    not in the totals above: {len(pending)} table run(s) that wait for the selection's choice, "
                     f"about {wait['total_seconds'] / 3600:.1f} h (priced at their grid's setting)")
    if proj["missing"]:
        lines.append(f"    not costed (no step time): {len(proj['missing'])} phase(s), e.g. {proj['missing'][0]}")
    return lines
