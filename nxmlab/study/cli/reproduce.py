"""``nxmlab reproduce``: execute the study notebooks in order with papermill.

Each notebook trains (or reuses) its runs through :func:`nxmlab.study.train.recipe.run_experiment`,
so a rerun only re-draws finished work.  Executed copies go to
``runs/notebooks/<preset>/<name>.ipynb`` (written under a temporary name and renamed
when the notebook finished; a failed one is kept as ``<name>.failed.ipynb``), figures
and tables to ``--figures-dir``.

Default folders (``results_dir``, ``figures_dir``, ``output_root`` left ``None``) are the
repository's ``results/``, ``figures/`` and ``runs/notebooks/``, as in the notebooks
(:func:`~nxmlab.study.catalog.resolve_dir`), whatever the working directory.  With
``train=False`` a results folder with no finished run is refused
(:class:`~nxmlab.study.results.verify.EmptyStoreError`): there would be nothing to draw.

The kernel is this interpreter: a private kernelspec (``nxmlab-<hash>``) whose argv
starts with ``sys.executable`` is put first on ``JUPYTER_PATH`` for the run, so a user
or system ``python3`` kernel can never be picked instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..catalog import NOTEBOOKS, resolve_dir
from ..studies.cost import STUDY_COST_FILE, live_cost, projected_cost  # noqa: F401 (STUDY_COST_FILE: its old home)
from ..studies.presets import Preset, resolve_preset
from ..studies.runs import preset_runs

__all__ = ["NOTEBOOKS", "NOTEBOOK_STUDIES", "notebook_dir", "plan", "format_plan", "venv_kernel",
           "execute_notebook", "check_glue", "reproduce"]

logger = logging.getLogger(__name__)

#: The preset studies (see :mod:`nxmlab.study.studies.presets`) each notebook trains or reuses.
NOTEBOOK_STUDIES: dict[str, tuple[str, ...]] = {
    "glue_table": ("table",),
    "dense_tuning": ("tuning",),
    "nm_sweep": ("patterns",),
    "convergence": ("convergence",),
    "rho_analysis": ("rho",),
    "sparsity_dynamics": ("dynamics",),
    "mask_distance": ("table", "rho"),
    "protocol": ("selection", "table"),
}


def notebook_dir() -> Path:
    """The repository's ``notebooks/`` folder."""
    folder = Path(__file__).resolve().parents[3] / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks folder {folder} not found (run from a source checkout)")
    return folder


def _select(notebooks: Sequence[str] | str | None) -> list[str]:
    if notebooks is None:
        return list(NOTEBOOKS)
    if isinstance(notebooks, str):
        notebooks = [n.strip() for n in notebooks.split(",") if n.strip()]
    names = [n.removesuffix(".ipynb") for n in notebooks]
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown or not names:
        raise ValueError(f"unknown notebook(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(NOTEBOOKS)}")
    return [n for n in NOTEBOOKS if n in names]  # always in dependency order


def plan(preset: Preset | str, results_dir: str | os.PathLike[str] = "results", glue_dir: str | None = None,
         notebooks: Sequence[str] | str | None = None) -> list[dict[str, Any]]:
    """What each notebook would train: ``[{notebook, runs, finished, new, earlier, pending}]`` (reads only).

    ``new`` counts the unfinished runs that this notebook trains (``pending`` names them);
    ``earlier`` the unfinished ones an earlier notebook of the plan trains first.
    """
    preset = resolve_preset(preset)
    seen: set[Path] = set()
    out = []
    for name in _select(notebooks):
        runs = preset_runs(preset, NOTEBOOK_STUDIES[name], str(results_dir), glue_dir)
        finished, pending = 0, []
        for spec in runs:
            folder = spec.folder()
            if folder.finished:
                finished += 1
            elif folder.path not in seen:
                pending.append(f"{spec.task.name} {spec.label} seed {spec.seed}"
                               + (f" rho {spec.cfg.rho:g}" if "rho" in spec.method.options else "")
                               + f" ({folder.name})")
            seen.add(folder.path)
        out.append({"notebook": name, "runs": len(runs), "finished": finished, "new": len(pending),
                    "earlier": len(runs) - finished - len(pending), "pending": pending})
    return out


def format_plan(preset: Preset, steps: list[dict[str, Any]], results_dir: str | os.PathLike[str]) -> str:
    """Human-readable :func:`plan`, with the projected wall time where ``make bench`` measured it."""
    lines = [f"preset {preset.name}: {preset.description}", f"results: {results_dir}"]
    for step in steps:
        lines.append(f"{step['notebook']}: {step['runs']} runs, {step['finished']} finished, "
                     f"{step['new']} to train" + (f", {step['earlier']} trained by an earlier notebook"
                                                  if step["earlier"] else ""))
        lines += [f"    to run: {p}" for p in step["pending"]]
    total = sum(s["new"] for s in steps)
    lines.append(f"total: {total} run(s) to train" if total else "total: nothing to train, every run is finished")
    studies = sorted({study for step in steps for study in NOTEBOOK_STUDIES[step["notebook"]]})
    lines += live_cost(preset, results_dir, studies) or projected_cost(preset.name)
    return "\n".join(lines)


@contextlib.contextmanager
def venv_kernel() -> Iterator[str]:
    """A kernelspec for this interpreter on top of ``JUPYTER_PATH`` (yields its name)."""
    name = "nxmlab-" + hashlib.sha256(sys.executable.encode()).hexdigest()[:8]
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="nxmlab-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            # the kernel's own log only says that it runs over local TCP and that papermill's shutdown
            # interrupted it (an "ERROR" at the end of every notebook); a cell's error reaches papermill
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=CRITICAL"],
            "display_name": f"nxmlab ({sys.executable})", "language": "python",
            "metadata": {"debugger": False},
        }))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp, *([old] if old else [])])
        try:
            yield name
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def execute_notebook(name: str, output_dir: str | os.PathLike[str], parameters: dict[str, Any],
                     kernel_name: str, progress_bar: bool = True, log_output: bool = False,
                     cwd: str | os.PathLike[str] | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` into ``<output_dir>/<name>.ipynb`` atomically.

    The notebook is written to ``.<name>.partial.ipynb`` while it runs and renamed when it
    finished; on failure it is renamed to ``<name>.failed.ipynb``, any older complete copy
    is removed, and the papermill error is raised.
    """
    import papermill as pm

    source = notebook_dir() / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"notebook {source} not found")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final, partial, failed = (output_dir / f"{name}.ipynb", output_dir / f".{name}.partial.ipynb",
                              output_dir / f"{name}.failed.ipynb")
    partial.unlink(missing_ok=True)
    try:
        pm.execute_notebook(str(source), str(partial), parameters=parameters, kernel_name=kernel_name,
                            progress_bar=progress_bar, log_output=log_output, cwd=str(cwd or os.getcwd()))
    except BaseException:
        final.unlink(missing_ok=True)
        if partial.exists():
            os.replace(partial, failed)
        raise
    failed.unlink(missing_ok=True)
    os.replace(partial, final)
    return final


class DamagedStoreError(RuntimeError):
    """The results store holds damaged runs; ``reproduce`` refuses to draw from it."""


def check_store(results_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`DamagedStoreError` naming the first damaged file when ``nxmlab verify`` would fail
    on the committed files of ``results_dir`` (a missing folder is an empty store)."""
    from ..results.verify import verify_results

    if not Path(results_dir).is_dir():
        return
    failed = [c for c in verify_results(results_dir, cache=False) if c.failed]
    if failed:
        first = failed[0]
        raise DamagedStoreError(
            f"{len(failed)} damaged run(s) in {results_dir}, e.g. {first.run}/{first.problems[0]}; "
            f"nothing was drawn. Run nxmlab verify {results_dir} for the list, then retrain them with "
            "--overwrite or move them away")


def check_glue(tasks: Sequence[str], glue_dir: str | None = None) -> None:
    """Load every evaluation split of ``tasks`` once, so that a missing GLUE mirror or an
    unreachable Hub fails in one line before any notebook has written a figure (the notebooks
    score the validation examples).  Raises what :func:`~nxmlab.study.data.glue.load_glue` raises."""
    from ..data.glue import get_task, load_glue

    for task in tasks:
        for split in get_task(task).eval_splits:
            load_glue(task, split, glue_dir, limit=1)


def reproduce(preset: Preset | str, results_dir: str | os.PathLike[str] | None = None,
              figures_dir: str | os.PathLike[str] | None = None, glue_dir: str | None = None,
              notebooks: Sequence[str] | str | None = None, dry_run: bool = False,
              output_root: str | os.PathLike[str] | None = None, progress_bar: bool = True,
              log_output: bool = False, parameters: dict[str, Any] | None = None,
              echo=print) -> list[Path]:
    """Execute the notebooks of ``preset`` in order (or only print the plan with ``dry_run``).

    Args:
        preset: Preset name or :class:`~nxmlab.study.studies.presets.Preset`.
        results_dir: Results store (finished runs are reused; ``None``: the repository's
            ``results/``; a relative path is taken from the working directory).
        figures_dir: Where the notebooks write figures and tables (``None``: the repository's ``figures/``).
        glue_dir: GLUE mirror (``None``: ``$NXMLAB_GLUE_DIR``, else the Hub).
        notebooks: Subset of :data:`NOTEBOOKS` (always run in that order); default: the
            preset's ``notebooks``, or all of them.
        dry_run: Print the plan and return without executing or writing anything.
        output_root: Executed copies go to ``<output_root>/<preset>/`` (``None``: the
            repository's ``runs/notebooks/``).
        progress_bar: papermill's per-cell progress bar.
        log_output: Stream the notebooks' output to the ``papermill`` logger.
        parameters: Extra notebook parameters (preset field overrides such as ``tasks``;
            ``train`` defaults to ``True`` here, ``{"train": False}`` only analyses finished runs).
        echo: Printer of the plan and of one line per notebook.

    Returns:
        The executed notebooks' paths (empty for a dry run).

    Raises:
        ValueError: an unknown preset, notebook or parameter;
            :class:`~nxmlab.study.results.verify.EmptyStoreError` with ``train=False`` and no finished run.
        DamagedStoreError: the store holds damaged runs (nothing is drawn).
        FileNotFoundError / ConnectionError: no GLUE data for a task's evaluation split
            (:func:`check_glue`; nothing is drawn).
    """
    parameters = dict(parameters or {})
    if "train" in parameters:
        from ..inputs import parse_bool

        parameters["train"] = parse_bool("train", parameters["train"], "notebook parameters")
    overrides = {k: v for k, v in parameters.items() if k not in ("train",)}
    base = resolve_preset(preset)  # raises ValueError for an unknown preset
    resolved = base.replace(**overrides)
    results_dir, figures_dir, output_root = (
        resolve_dir(None, default) if value is None else Path(os.path.abspath(Path(value).expanduser()))
        for value, default in ((results_dir, "results"), (figures_dir, "figures"), (output_root, "runs/notebooks")))
    check_store(results_dir)  # never draw from damaged runs
    if parameters.get("train") is False:  # nothing to train, so something must be there to draw
        from ..results.verify import require_finished_runs

        require_finished_runs(results_dir, "run without --no-train (train=False) to train the preset's runs")
    names = _select(notebooks or resolved.notebooks or None)
    glue_dir = None if glue_dir is None else str(Path(glue_dir).expanduser().absolute())
    steps = plan(resolved, results_dir, glue_dir, names)
    echo(format_plan(resolved, steps, results_dir))
    if parameters.get("train") is False:
        echo("train=False: the notebooks only analyse finished runs; nothing is trained")
    if dry_run:
        return []
    check_glue(resolved.tasks, glue_dir)  # before anything is written
    out_dir = Path(output_root) / base.name
    params = {"preset": base.name, "results_dir": str(results_dir), "figures_dir": str(figures_dir),
              "glue_dir": glue_dir, "train": True,  # the notebooks' own default is False
              **{k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()}}
    done = []
    with venv_kernel() as kernel:
        for i, name in enumerate(names, 1):
            step = steps[i - 1]
            echo(f"[{i}/{len(names)}] {name}: {step['runs']} runs ({step['finished']} finished) ...")
            tic = time.perf_counter()
            try:
                path = execute_notebook(name, out_dir, params, kernel, progress_bar, log_output)
            except Exception as exc:
                echo(f"[{i}/{len(names)}] {name}: FAILED after {time.perf_counter() - tic:.0f} s; "
                     f"see {out_dir / (name + '.failed.ipynb')}")
                raise RuntimeError(f"notebook {name} failed: {str(exc).strip().splitlines()[-1] if str(exc) else exc!r}"
                                   ) from exc
            echo(f"[{i}/{len(names)}] {name}: done in {time.perf_counter() - tic:.0f} s -> {path}")
            done.append(path)
    echo(f"figures and tables in {figures_dir}")
    return done
