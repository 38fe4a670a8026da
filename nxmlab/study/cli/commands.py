"""The ``nxmlab`` command line: ``train``, ``table``, ``verify``, ``reproduce``, ``export``, ``verify-export``.

Bad input exits with status 2 and one line on stderr (a traceback only with ``--debug``);
``nxmlab <command> --help`` documents every option.  The parser is built from the standard
library and :mod:`~nxmlab.study.catalog` alone, and torch and transformers are imported
inside the verbs, so ``nxmlab --help`` and every ``<verb> --help`` answer at once
(``train --help``, which ``HfArgumentParser`` builds from torch's and transformers'
classes, from a cache: :mod:`~nxmlab.study.cli.trainhelp`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..catalog import DTYPES, NOTEBOOKS, PRESET_NAMES

__all__ = ["main", "build_parser", "system_fault", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


def _is_main() -> bool:
    from ..train.distributed import is_main

    return is_main()


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    """argparse's error as one line with a pointer to ``--help`` (no usage dump); exit status 2.

    Under ``torchrun`` only rank 0 prints it.
    """
    parser.exit(EXIT_USAGE, f"nxmlab: error: {message} (see {parser.prog} --help)\n" if _is_main() else None)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nxmlab: error: ...`` and exit status 2."""

    def error(self, message: str):
        _one_line_error(self, message)


_TRAIN_DESCRIPTION = ("Train one method on one GLUE task into the results store. "
                      "Also accepts a single JSON/YAML config file.")


def _train_parser():
    """``HfArgumentParser`` over ``RunConfig`` and the training arguments, with one-line errors."""
    from transformers import HfArgumentParser

    from ..train.config import NxMTrainingArguments, RunConfig

    class TrainParser(HfArgumentParser):
        def error(self, message: str):
            _one_line_error(self, message)

    return TrainParser((RunConfig, NxMTrainingArguments), prog="nxmlab train", description=_TRAIN_DESCRIPTION)


def _train_help() -> str:
    from .trainhelp import train_help

    return train_help(lambda: _train_parser().format_help())


def _train(ns: argparse.Namespace) -> int:
    from ..train.config import load_config_file
    from ..train.recipe import run_experiment

    argv = ns.args
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        cfg, args = load_config_file(argv[0])  # every value type-checked, one line on error
    else:
        cfg, args = _train_parser().parse_args_into_dataclasses(args=argv)
    metrics = run_experiment(cfg, args)
    if not _is_main():
        return 0  # torchrun: rank 0 reports
    phases = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in metrics["phases"].items())
    label = metrics["method"] + ("+kd" if metrics["kd"] else "")
    score = (f"score {100 * metrics['score']:.2f}" if metrics["score"] is not None
             else f"no score ({(metrics.get('missing') or {}).get('score', 'missing')})")
    print(f"{metrics['task']} {label}: {score} ({phases})")
    return 0


def _table(ns: argparse.Namespace) -> int:
    from ..results.frames import glue_table, load_scores, to_markdown
    from ..results.verify import EmptyStoreError, level_problem, require_finished_runs

    root = Path(ns.results_dir)
    problem = level_problem(root, "table")
    if problem:
        raise UsageError(problem)
    pattern = None
    if ns.pattern is not None:
        from ...nxm import NxM

        pattern = str(NxM.parse(ns.pattern))  # a malformed pattern: one line, exit 2
    if ns.model is not None and not ns.model.strip():
        raise UsageError("--model must name a model, got ''")
    require_finished_runs(root)  # an empty store is refused, never shown as an empty table
    df = load_scores(root)
    if df.empty:
        skipped = df.attrs.get("skipped") or {}
        raise EmptyStoreError(f"nothing to show: none of the finished runs under {root} could be read "
                              f"({len(skipped)} skipped, e.g. {next(iter(skipped.values()), '?')})")
    if ns.model is not None:
        models = sorted(df["model"].dropna().unique())
        if ns.model not in models:
            raise UsageError(f"--model {ns.model!r}: no finished run of that model under {root}; "
                             f"its models: {', '.join(models)}")
        df = df[df["model"] == ns.model]
    if pattern is not None:
        patterns = sorted(df["pattern"].dropna().unique())
        if pattern not in patterns:
            of = f" of model {ns.model}" if ns.model is not None else ""
            raise UsageError(f"--pattern {pattern}: no finished run{of} with that pattern under {root}; "
                             f"its patterns: {', '.join(patterns) or 'none (dense runs only)'}")
        df = df[(df["pattern"] == pattern) | df["pattern"].isna()]
    if ns.csv:  # every run, with the studies that list it and its split (heldout: a selection run)
        from ..studies.runs import membership

        where = membership(str(root), set(df["model"]))
        df = df.assign(studies=[";".join(where.get(r, ([], None))[0]) for r in df["run"]],
                       row=[where.get(r, ([], None))[1] or lb for r, lb in zip(df["run"], df["label"], strict=True)])
        df.to_csv(sys.stdout, index=False)
    else:  # the reported runs only: selection runs are scored on held-out training examples
        sys.stdout.write(to_markdown(glue_table(df[df["split"] == "validation"])))
    return 0


def _verify(ns: argparse.Namespace) -> int:
    from ..results.verify import level_problem, verify_results

    problem = level_problem(ns.results_dir)
    if problem:
        raise UsageError(problem)
    checks = verify_results(ns.results_dir, cache=not ns.no_cache, rescore=ns.rescore, glue_dir=ns.glue_dir)
    for check in checks:
        status = "FAIL" if check.failed else ("ok" if check.ok else "unfinished")
        print(f"{status:10} {check.run}")
        for problem in check.problems:
            print(f"{'':10}   - {check.run}/{problem}" if not problem.startswith("/") else f"{'':10}   - {problem}")
    bad = sum(c.failed for c in checks)
    finished = sum(c.finished for c in checks)
    unfinished = sum(not c.finished and not c.failed for c in checks)
    print(f"{finished} finished run(s) checked, {bad} with problems, {unfinished} unfinished")
    if bad:
        return 1
    if not finished:
        print(f"nxmlab: error: nothing to check: no finished run under {ns.results_dir} "
              "(expected <results>/<task>/<run>/metrics.json)", file=sys.stderr)
        return 1
    return 0




def _cli_dir(value: str | None, default: str) -> Path:
    """A folder option of ``reproduce``: by default the repository's (as in the notebooks),
    whatever the working directory; a path given on the command line is taken from the working directory."""
    from ..catalog import resolve_dir

    return resolve_dir(None, default) if value is None else Path(os.path.abspath(Path(value).expanduser()))


def _reproduce(ns: argparse.Namespace) -> int:
    from ..studies.presets import get_preset
    from .reproduce import reproduce

    preset = get_preset(ns.preset)  # unknown preset: one line, exit 2
    parameters: dict = {"train": False} if ns.no_train else {}
    if ns.tasks is not None:  # a subset of the preset's tasks, e.g. one task whose runs are complete
        tasks = [t.strip() for t in ns.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in preset.tasks]
        if not tasks or unknown:
            raise UsageError(f"--tasks {ns.tasks!r}: preset {preset.name} has the tasks {', '.join(preset.tasks)}")
        parameters["tasks"] = tasks
    if ns.quiet:  # papermill's own lines (input, output, kernel) too
        logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        reproduce(ns.preset, _cli_dir(ns.results_dir, "results"), _cli_dir(ns.figures_dir, "figures"), ns.glue_dir,
                  ns.notebooks, ns.dry_run, _cli_dir(ns.output_dir, "runs/notebooks"),
                  progress_bar=not ns.quiet, log_output=not ns.quiet, parameters=parameters or None)
    except RuntimeError as exc:  # a notebook failed: its executed copy says where
        print(f"nxmlab: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _export(ns: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from .exporting import export_run

    hf_logging.disable_progress_bar()  # the loading/writing bars of every shard
    if ns.tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0, got {ns.tolerance}")
    summary = export_run(ns.run, ns.out, compressed=ns.format == "compressed", dtype=ns.dtype, rebuild=ns.rebuild,
                         tolerance=ns.tolerance)
    if summary["rebuild"]:
        scores = summary["rebuild"]
        print(f"rebuilt {summary['run']}: score {100 * scores['rebuilt']:.2f} (committed {100 * scores['committed']:.2f})")
    ratio = summary["targets_stored"] / summary["targets_dense"]
    print(f"exported {summary['run']} -> {summary['out']}: {summary['form']} form, {summary['dtype']}, "
          f"{summary['targets']} targets {summary['pattern']}")
    print(f"target weights: {_mb(summary['targets_dense'])} dense, {_mb(summary['targets_stored'])} stored "
          f"({ratio:.3f}x); folder {_mb(summary['files'])}")
    return 0



def _verify_export(ns: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from .exporting import verify_export

    hf_logging.disable_progress_bar()
    if not Path(ns.folder).is_dir():
        raise UsageError(f"folder {ns.folder} does not exist")
    try:
        meta, problems = verify_export(ns.folder)
    except ValueError as exc:  # an unreadable config.json, weights file or metadata: named, exit 1
        print(f"nxmlab: error: {_first_line(exc)}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"FAIL  {problem}")
    status = "FAIL" if problems else "ok"
    print(f"{status}: {len(meta['targets'])} targets, {meta['pattern']}, {meta['form']} form, from {meta.get('source_run')}")
    return 1 if problems else 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_RESUME = "run the same command again (finished phases and complete checkpoints are kept; the run resumes)"
#: errno -> (what happened, what to do) for faults of the system while writing.
_WRITE_FAULTS = {
    errno.ENOSPC: ("disk full (no space left on device)", "free some space and " + _RESUME),
    errno.EDQUOT: ("disk quota exceeded", "free some space (or raise the quota) and " + _RESUME),
    errno.EFBIG: ("file too large for the file system (or for `ulimit -f`)",
                  "write the results and their cache to a file system that allows larger files "
                  "(--results_dir, $NXMLAB_CACHE_DIR) or raise the limit, then " + _RESUME),
    errno.EIO: ("input/output error", "check the disk (or the network file system), then " + _RESUME),
}
_DENIED = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}
#: How Rust writers (safetensors) report an errno: "... (os error 28)".
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
#: Local variables that hold the file a writer was writing (looked up innermost frame first).
_PATH_NAMES = ("filename", "f", "file", "path", "save_directory", "output_dir")
_TEMPORARY = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # store.atomic_write's ".<name>.<random>.tmp"


def _fault_path(exc: BaseException) -> str | None:
    """The file a failed write was writing: the ``OSError``'s filename, else the path argument
    of the innermost writer in the traceback (``torch.save``'s ``f``, safetensors' ``filename``,
    ``atomic_write``'s ``path``, ...); a temporary file is named by the file it becomes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.filename:
            return str(seen.filename)
        frames, tb = [], seen.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            for name in _PATH_NAMES:
                value = frame.f_locals.get(name)
                if isinstance(value, (str, os.PathLike)) and os.sep in str(value) and len(str(value)) < 4096:
                    path = Path(value)
                    match = _TEMPORARY.match(path.name)
                    return str(path.with_name(match.group(1)) if match else path)
        seen = seen.__cause__ or seen.__context__
    return None


def system_fault(exc: BaseException) -> str | None:
    """A one-line message for a fault of the system while writing, or ``None`` for any other error.

    Disk full (``ENOSPC``), quota exceeded (``EDQUOT``), file too large (``EFBIG``), I/O error
    (``EIO``), read-only file system (``EROFS``) and permission denied (``EACCES``, ``EPERM``):
    the line names the file and says what to do; the run resumes when the same command runs
    again.  Looks through the exception's causes: an ``OSError`` and its errno, the "(os error
    N)" of safetensors' writer, and torch's writer failing (``inline_container.cc``).
    """
    where = _fault_path(exc)
    seen: BaseException | None = exc
    while seen is not None:
        code = seen.errno if isinstance(seen, OSError) else None
        if code is None:
            match = _OS_ERROR.search(str(seen))
            code = int(match.group(1)) if match else None
        writing = f"writing {where}" if where else "while saving"
        if code in _WRITE_FAULTS:
            what, todo = _WRITE_FAULTS[code]
            return f"{what} {writing}: {todo}"
        if code in _DENIED:
            todo = "choose a writable folder" if code == errno.EROFS else "fix its permissions or choose a folder you may write"
            return f"cannot write {where or 'a file'}: {_DENIED[code]}; {todo} (--results_dir, $NXMLAB_CACHE_DIR), then {_RESUME}"
        text = str(seen)
        if "No space left on device" in text:
            return f"disk full (no space left on device) {writing}: free some space and {_RESUME}"
        if "inline_container.cc" in text or "PytorchStreamWriter" in text:
            return (f"torch could not write {where or 'a file'} ({text.strip().splitlines()[0][:120]}); the disk may be "
                    f"full or the file larger than the file system allows: free some space (or use another file "
                    f"system) and {_RESUME}")
        seen = seen.__cause__ or seen.__context__
    return None


def build_parser() -> argparse.ArgumentParser:
    """The ``nxmlab`` parser with one subcommand per verb (standard library only: no torch)."""
    parser = _Parser(prog="nxmlab", description="NxM (keep m of every n) sparsification study "
                                     "toolkit. Add --debug anywhere for tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,table,verify,reproduce,export,verify-export}")
    train = sub.add_parser("train", add_help=False, help="train one method on one GLUE task (nxmlab train --help)")
    train.add_argument("args", nargs=argparse.REMAINDER)
    train.set_defaults(func=_train)

    table = sub.add_parser("table", help="print the GLUE table (or the score frame) of a results folder",
                           description="Print the GLUE table of a results folder as markdown, or with --csv the "
                                       "score frame: one row per finished run. A folder with no finished run, "
                                       "and a filter that matches no run, are refused (exit 2).")
    table.add_argument("results_dir", help="results store, e.g. results")
    table.add_argument("--csv", action="store_true", help="print the score frame as CSV, one row per run")
    table.add_argument("--model", help="only runs of this model (one of the store's)")
    table.add_argument("--pattern", help="only runs of this n:m pattern, e.g. 4:2 (dense rows always shown)")
    table.set_defaults(func=_table)

    verify = sub.add_parser("verify", help="check every finished run of a results folder",
                            description="Check every file of every finished run of a results folder (and its "
                                        "cache, when present); exit 1 on any problem or when there is "
                                        "nothing to check.")
    verify.add_argument("results_dir", help="results store, e.g. results")
    verify.add_argument("--no-cache", action="store_true",
                        help="check only the committed files, not the cache (weights, full masks, ADMM state)")
    verify.add_argument("--rescore", action="store_true",
                        help="also recompute every score from predictions.parquet and the GLUE validation labels")
    verify.add_argument("--glue-dir", help="GLUE Parquet mirror for --rescore (default: $NXMLAB_GLUE_DIR, else the Hub)")
    verify.set_defaults(func=_verify)

    rep = sub.add_parser("reproduce", help="run the study notebooks of a preset with papermill",
                         description="Execute the study notebooks (" + ", ".join(NOTEBOOKS) + ") with papermill; "
                                     "finished runs are reused. The default folders are the repository's, "
                                     "whatever the working directory.")
    rep.add_argument("--preset", required=True, help=f"study preset: {', '.join(PRESET_NAMES)}")
    rep.add_argument("--results-dir", default=None, help="results store (default: the repository's results/)")
    rep.add_argument("--figures-dir", default=None, help="figures and tables (default: the repository's figures/)")
    rep.add_argument("--glue-dir", default=None, help="GLUE Parquet mirror (default: $NXMLAB_GLUE_DIR, else the Hub)")
    rep.add_argument("--notebooks", default=None, help=f"comma-separated subset of {','.join(NOTEBOOKS)}")
    rep.add_argument("--tasks", default=None,
                     help="comma-separated subset of the preset's tasks (e.g. cola: one task's answers and "
                          "figures while the others train; give it its own --figures-dir)")
    rep.add_argument("--output-dir", default=None,
                     help="executed notebooks go to <this>/<preset>/ (default: the repository's runs/notebooks/)")
    rep.add_argument("--dry-run", action="store_true", help="print the plan (runs per notebook) and exit")
    rep.add_argument("--quiet", action="store_true", help="no progress bar and no streamed notebook output")
    rep.add_argument("--no-train", action="store_true",
                     help="only analyse the finished runs (the notebooks' train=False): never train; a store "
                          "with no finished run is refused")
    rep.set_defaults(func=_reproduce)

    exp = sub.add_parser("export", help="export a finished n:m run as a Hugging Face folder",
                         description="Write a finished n:m run as a Hugging Face folder whose config.json records the "
                                     "pattern, the targets, the method, the source run and its score. The dense form "
                                     "reloads with AutoModelForSequenceClassification; the compressed form stores the "
                                     "targets in compressed-tensors' bitmask layout (load it with "
                                     "nxmlab.export.load_sparse).")
    exp.add_argument("run", help="committed run folder, e.g. results/mrpc/magnitude-4x2-minilm-l6-seed42-<hash>")
    exp.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    exp.add_argument("--format", choices=("dense", "compressed"), default="dense", help="dense (default) or compressed")
    exp.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: as trained)")
    exp.add_argument("--rebuild", action="store_true",
                     help="when the run's weights are not in the cache (a fresh clone), retrain it from its "
                          "config.json first (with progress) and check its score against the committed one")
    exp.add_argument("--tolerance", type=float, default=1.0,
                     help="largest score difference, in points, a rebuild may show (default: 1.0)")
    exp.set_defaults(func=_export)

    vexp = sub.add_parser("verify-export", help="check an exported folder against its n:m metadata",
                          description="Load an exported folder and check every target against the n:m metadata in "
                                      "its config.json; exit 1 on any problem, including a file that cannot be read.")
    vexp.add_argument("folder", help="folder written by nxmlab export")
    vexp.set_defaults(func=_verify_export)
    return parser


def _non_finite(exc: BaseException) -> bool:
    """True for :class:`nxmlab.callbacks.NonFiniteError` (checked without importing transformers)."""
    callbacks = sys.modules.get("nxmlab.callbacks")
    return callbacks is not None and isinstance(exc, callbacks.NonFiniteError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nxmlab`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    try:  # train's options belong to HfArgumentParser (argparse's REMAINDER drops leading options)
        ns = argparse.Namespace(func=_train, args=argv[1:]) if argv[:1] == ["train"] else parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    if ns.func is _train and any(a in ("-h", "--help") for a in ns.args):
        sys.stdout.write(_train_help())
        return 0
    logging.basicConfig(level=logging.INFO if _is_main() else logging.ERROR, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return ns.func(ns)
    except SystemExit as exc:  # HfArgumentParser on bad train arguments
        return int(exc.code or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        if debug:
            raise
        print("nxmlab: interrupted; run the same command again to resume (finished phases and complete "
              "checkpoints are kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        if _non_finite(exc):  # a numerical fault, not bad input: exit 1
            if _is_main():
                print(f"nxmlab: error: {exc}", file=sys.stderr)
            return 1
        fault = system_fault(exc)
        if fault is not None:  # the system, not the input: exit 1
            if _is_main():
                print(f"nxmlab: error: {fault}", file=sys.stderr)
            return 1
        if not isinstance(exc, (UsageError, ValueError, OSError, ImportError)):
            raise
        if _is_main():  # torchrun: one line, from rank 0
            print(f"nxmlab: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
