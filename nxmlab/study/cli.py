"""The ``nxmlab`` command line: ``train``, ``table``, ``verify``, ``reproduce``, ``export``, ``verify-export``.

Bad input exits with status 2 and one line on stderr (a traceback only with ``--debug``);
``nxmlab <command> --help`` documents every option.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "system_fault", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nxmlab: error: ...`` and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"nxmlab: error: {message} (see {self.prog} --help)\n")


def _is_main() -> bool:
    from .distributed import is_main

    return is_main()


def _train(ns: argparse.Namespace) -> int:
    from transformers import HfArgumentParser

    from .config import NxMTrainingArguments, RunConfig, load_config_file
    from .recipe import run_experiment

    parser = HfArgumentParser((RunConfig, NxMTrainingArguments), prog="nxmlab train",
                              description="Train one method on one GLUE task into the results store. "
                                          "Also accepts a single JSON/YAML config file.")
    argv = ns.args
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        cfg, args = load_config_file(argv[0])  # every value type-checked, one line on error
    else:
        cfg, args = parser.parse_args_into_dataclasses(args=argv)
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
    from .frames import glue_table, load_scores, to_markdown

    if not Path(ns.results_dir).is_dir():
        raise UsageError(f"results folder {ns.results_dir} does not exist")
    df = load_scores(ns.results_dir)
    if ns.model:
        df = df[df["model"] == ns.model]
    if ns.pattern:
        df = df[(df["pattern"] == ns.pattern) | df["pattern"].isna()]
    if ns.csv:  # every run, with the studies that list it and its split (heldout: a selection run)
        from .presets import membership

        where = membership(ns.results_dir, set(df["model"]))
        df = df.assign(studies=[";".join(where.get(r, ([], None))[0]) for r in df["run"]],
                       row=[where.get(r, ([], None))[1] or lb for r, lb in zip(df["run"], df["label"], strict=True)])
        df.to_csv(sys.stdout, index=False)
    else:  # the reported runs only: selection runs are scored on held-out training examples
        sys.stdout.write(to_markdown(glue_table(df[df["split"] == "validation"])))
    return 0


def _verify(ns: argparse.Namespace) -> int:
    from .verify import level_problem, verify_results

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


def _reproduce(ns: argparse.Namespace) -> int:
    from .presets import get_preset
    from .reproduce import reproduce

    get_preset(ns.preset)  # unknown preset: one line, exit 2
    try:
        reproduce(ns.preset, ns.results_dir, ns.figures_dir, ns.glue_dir, ns.notebooks, ns.dry_run, ns.output_dir,
                  progress_bar=not ns.quiet, log_output=not ns.quiet,
                  parameters={"train": False} if ns.no_train else None)
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
    meta, problems = verify_export(ns.folder)
    for problem in problems:
        print(f"FAIL  {problem}")
    status = "FAIL" if problems else "ok"
    print(f"{status}: {len(meta['targets'])} targets, {meta['pattern']}, {meta['form']} form, from {meta.get('source_run')}")
    return 1 if problems else 0


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def system_fault(exc: BaseException) -> str | None:
    """A one-line message for a fault of the system (disk full, read-only path), or ``None``.

    Looks through the exception's causes: an ``OSError`` with its errno, and the messages
    torch's and safetensors' writers give on a full disk.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            where = f" writing {seen.filename}" if seen.filename else ""
            return (f"disk full (no space left on device){where}: free some space and run the same command "
                    "again (finished phases and complete checkpoints are kept; the run resumes)")
        if isinstance(seen, OSError) and seen.errno in _READ_ONLY:
            where = f" {seen.filename}" if seen.filename else " a file"
            return f"cannot write{where}: {_READ_ONLY[seen.errno]}; choose a writable folder"
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text:
            return ("disk full (no space left on device) while saving: free some space and run the same command "
                    "again (finished phases and complete checkpoints are kept; the run resumes)")
        if "inline_container.cc" in text or "PytorchStreamWriter" in text:
            return (f"torch could not write a file ({text.strip().splitlines()[0][:120]}); the disk may be full: "
                    "free some space and run the same command again (the run resumes)")
        seen = seen.__cause__ or seen.__context__
    return None


def build_parser() -> argparse.ArgumentParser:
    """The ``nxmlab`` parser with one subcommand per verb."""
    from .presets import PRESETS
    from .reproduce import NOTEBOOKS

    parser = _Parser(prog="nxmlab", description="NxM (keep m of every n) sparsification study "
                                     "toolkit. Add --debug anywhere for tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,table,verify,reproduce,export,verify-export}")
    train = sub.add_parser("train", add_help=False, help="train one method on one GLUE task (nxmlab train --help)")
    train.add_argument("args", nargs=argparse.REMAINDER)
    train.set_defaults(func=_train)

    table = sub.add_parser("table", help="print the GLUE table (or the score frame) of a results folder",
                           description="Print the GLUE table of a results folder as markdown, or with --csv the "
                                       "score frame: one row per finished run.")
    table.add_argument("results_dir", help="results store, e.g. results")
    table.add_argument("--csv", action="store_true", help="print the score frame as CSV, one row per run")
    table.add_argument("--model", help="only runs of this model")
    table.add_argument("--pattern", help="only runs of this n:m pattern (dense rows always shown)")
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
                                     "finished runs are reused.")
    rep.add_argument("--preset", required=True, help=f"study preset: {', '.join(PRESETS)}")
    rep.add_argument("--results-dir", default="results", help="results store (default: results)")
    rep.add_argument("--figures-dir", default="figures", help="figures and tables (default: figures)")
    rep.add_argument("--glue-dir", default=None, help="GLUE Parquet mirror (default: $NXMLAB_GLUE_DIR, else the Hub)")
    rep.add_argument("--notebooks", default=None, help=f"comma-separated subset of {','.join(NOTEBOOKS)}")
    rep.add_argument("--output-dir", default="runs/notebooks", help="executed notebooks go to <this>/<preset>/")
    rep.add_argument("--dry-run", action="store_true", help="print the plan (runs per notebook) and exit")
    rep.add_argument("--quiet", action="store_true", help="no progress bar and no streamed notebook output")
    rep.add_argument("--no-train", action="store_true",
                     help="only analyse the finished runs (the notebooks' train=False): never train")
    rep.set_defaults(func=_reproduce)

    from .exporting import DTYPES

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
                          "config.json first and check its score against the committed one")
    exp.add_argument("--tolerance", type=float, default=1.0,
                     help="largest score difference, in points, a rebuild may show (default: 1.0)")
    exp.set_defaults(func=_export)

    vexp = sub.add_parser("verify-export", help="check an exported folder against its n:m metadata",
                          description="Load an exported folder and check every target against the n:m metadata in "
                                      "its config.json; exit 1 on any problem.")
    vexp.add_argument("folder", help="folder written by nxmlab export")
    vexp.set_defaults(func=_verify_export)
    return parser


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
    logging.basicConfig(level=logging.INFO if _is_main() else logging.ERROR, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ..callbacks import NonFiniteError

    try:
        return ns.func(ns)
    except NonFiniteError as exc:  # a numerical fault, not bad input: exit 1
        if debug:
            raise
        if _is_main():
            print(f"nxmlab: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # HfArgumentParser on bad train arguments or --help
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
        fault = system_fault(exc)
        if fault is not None:  # the system, not the input: exit 1
            print(f"nxmlab: error: {fault}", file=sys.stderr)
            return 1
        if not isinstance(exc, (UsageError, ValueError, OSError, ImportError)):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _is_main():  # torchrun: one line, from rank 0
            print(f"nxmlab: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
