"""``repro <verb>``: flags are gin files, ``--bind NAME=VALUE`` overrides and paths; nothing else.

Every hyperparameter lives in gin. Bad input ends with one ``error:`` line and exit status 2
(set ``REPRO_DEBUG=1`` to see the traceback as well).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from repro import reproducible
from repro.errors import UserError


def _gin_args(parser: argparse.ArgumentParser, tracked: bool = True) -> None:
    parser.add_argument("--gin", action="append", default=[], metavar="FILE",
                        help="gin file (repeatable; later files override earlier ones)")
    parser.add_argument("--bind", action="append", default=[], metavar="NAME=VALUE",
                        help="gin binding applied after the files, e.g. --bind SEED=1")
    if tracked:
        parser.add_argument("--no-track", action="store_true", help="do not record an MLflow run")


def _configured(args: argparse.Namespace) -> None:
    """Parse the verb's gin: with ``--params``, the experiment and profile files
    :func:`repro.pipeline.runset.gin_files` composes (then any ``--gin``), then ``--bind``; without, the
    ``--gin`` files alone. (Training verbs with ``--params`` parse once per run: repro/pipeline/cells.py.)"""
    from repro import config

    files, bindings = list(args.gin), list(args.bind)
    if getattr(args, "params", None):
        from repro.pipeline import runset

        params = runset.read_params(Path(args.params))
        files = runset.gin_files(params) + files
    if not files:
        raise UserError("no --gin file given: pass --params params.yaml or at least an experiment, e.g. "
                        "--gin gin/experiments/digits.gin")
    config.parse(files, bindings)


def _train_teacher(args: argparse.Namespace) -> None:
    if args.params:  # every teacher params.yaml lists (teacher_seeds), in this process
        if args.out or args.metrics:
            raise UserError("--params writes models/teachers/seed<T> and metrics/teachers/seed<T>.json: "
                            "drop --out/--metrics, or drop --params and give --gin files")
        from repro.pipeline import cells, runset

        params = runset.read_params(Path(args.params))
        if params["teacher"] != "train":  # params.yaml imports a benchmark teacher instead of training one
            from repro.registry import import_teacher

            import_teacher.import_for_params(params, teacher_seed=args.teacher_seed, extra_files=[Path(f) for f in args.gin],
                                             bindings=args.bind)
            return
        cells.train_teachers(params, teacher_seed=args.teacher_seed, extra_files=[Path(f) for f in args.gin],
                             bindings=args.bind, checkpoint_root=Path(args.checkpoint_dir), track=not args.no_track)
        return
    if not args.out or not args.metrics:
        raise UserError("train-teacher needs --out DIR and --metrics FILE (or --params params.yaml)")
    _check_metrics_destinations([args.metrics])
    _configured(args)
    from repro.pipeline import stages

    stages.train_teacher(Path(args.out), Path(args.metrics), Path(args.checkpoint_dir), not args.no_track)


def _check_params(args: argparse.Namespace) -> None:
    from repro.pipeline import check, runset

    params = runset.read_params(Path(args.params))
    if params["teacher"] != "train":  # the import's network and expected top-1, before DVC removes the teacher
        from repro.registry import import_teacher

        import_teacher.check_choice(params, check.GinFacts(params, Path("gin")).dataset, Path(args.params))
    if args.out:
        check.write_record(params, Path(args.out))
    print(check.summary(params, Path(args.params), Path(args.out) if args.out else None))


def _import_teacher(args: argparse.Namespace) -> None:
    from repro.registry import import_teacher

    import_teacher.configure_dataset(args.dataset, args.data_root)
    out = Path(args.out or f"models/imported/{args.dataset}_{args.arch}")
    tolerance = import_teacher.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    import_teacher.import_teacher(Path(args.file), args.arch, out, args.expected_top1, tolerance,
                                  Path(args.metrics) if args.metrics else None)


def _distill(args: argparse.Namespace) -> None:
    if not args.params:
        if args.method is not None or args.kdci or args.control or args.seed is not None or args.teacher_seed is not None:
            raise UserError("--method/--seed/--kdci compose runs from params.yaml: also pass --params params.yaml "
                            "(or give the method's gin file with --gin)")
        if not args.teacher or not args.out:
            raise UserError("distill needs --teacher DIR and --out DIR (or --params params.yaml --method M)")
        _configured(args)
        from repro.pipeline import stages

        stages.distill(Path(args.teacher), Path(args.out), Path(args.checkpoint_dir), not args.no_track)
        return
    if args.method is None:
        raise UserError("--params needs --method (its cells: every teacher seed x seed of params.yaml), e.g. --method dafl")
    if args.teacher or args.out:
        raise UserError("--params places the students under models/<arm>/<method>/teacher<T>-seed<S>: "
                        "drop --teacher/--out, or drop --params and give --gin files")
    from repro.pipeline import cells, runset

    params = runset.read_params(Path(args.params))
    cells.distill_cells(params, args.method, kdci=args.kdci, control=args.control, teacher_seed=args.teacher_seed,
                        seed=args.seed, extra_files=[Path(f) for f in args.gin], bindings=args.bind,
                        checkpoint_root=Path(args.checkpoint_dir), track=not args.no_track)


def _check_metrics_destinations(paths: Sequence[str]) -> None:
    """Every --metrics file can be written: checked before the first model is trained or evaluated."""
    from repro import io

    for path in paths:
        io.check_file_destination(Path(path), "--metrics")


def _evaluate(args: argparse.Namespace) -> None:
    _check_metrics_destinations(args.metrics)
    _configured(args)
    from repro.pipeline import stages

    pairs = list(zip(args.model, args.metrics))
    if args.from_hub:  # every reference and destination is checked before the first pull writes anything
        from repro.registry import hub

        for reference in args.from_hub:
            hub.repo_folder(Path(args.hub_dir), hub.split_reference(reference)[0])
    for reference in args.from_hub:  # pull (verified), evaluate, and compare with the card's number
        folder = hub.pull(reference, Path(args.hub_dir))
        measured = stages.evaluate(folder, folder.parent / f"{folder.name}.evaluated.json", not args.no_track)
        card = hub.card_metrics(folder)["top1"]
        verdict = "matches" if abs(measured["top1"] - card) < 1e-6 else "DIFFERS from"
        print(f"{reference}: measured top-1 {measured['top1']:.2f}% {verdict} the card's {card:.2f}%")
    if len(args.model) != len(args.metrics):
        raise UserError(f"{len(args.model)} --model but {len(args.metrics)} --metrics: give one metrics file per model")
    if not pairs and not args.from_hub and not args.params:
        raise UserError("nothing to evaluate: give --model DIR --metrics FILE pairs, --params params.yaml or --from-hub ORG/NAME")
    for model, metrics in pairs:
        stages.evaluate(Path(model), Path(metrics), not args.no_track)
    if args.params:  # every baseline and KDCI student params.yaml asks for
        from repro.pipeline import cells, runset

        cells.evaluate_run_set(runset.read_params(Path(args.params)), not args.no_track)


def _publish(args: argparse.Namespace) -> None:
    from repro.registry import hub

    if args.model:
        targets = [(Path(args.model), args.repo_id)]
    else:
        from repro.pipeline.runset import read_params, runs, teacher_dir

        hub.validate_repo_id(args.repo_id)
        params = read_params(Path(args.params))
        targets = [(teacher_dir(t), f"{args.repo_id}-teacher{t}") for t in params["teacher_seeds"]]
        for run in runs(params):
            cell = f"teacher{run.teacher_seed}-seed{run.seed}"
            targets += [(run.baseline_dir, f"{args.repo_id}-{run.method}-{cell}"),
                        (run.kdci_dir, f"{args.repo_id}-{run.method}-kdci-{cell}")]
    if args.revision is not None:
        hub.validate_revision(args.revision, branch=True)
    fix = hub.ID_FIX if args.model else f"shorten or correct the --repo-id prefix {args.repo_id!r}"
    outs = [hub.repo_folder(Path(args.out), hub.validate_repo_id(repo_id, fix)) for _, repo_id in targets]
    for (model_dir, repo_id), out in zip(targets, outs):  # checked above: no upload before every id passed
        published = hub.publish(model_dir, repo_id, revision=args.revision, private=args.private,
                                dry_run=args.dry_run, out_dir=out)
        if not args.dry_run and not args.no_track:
            from repro.tracking import runs as tracking

            tracking.tag_published(model_dir, published["repo_id"], published["revision"])


def _pull(args: argparse.Namespace) -> None:
    from repro.registry import hub

    hub.pull(args.reference, Path(args.out))


def _registry(args: argparse.Namespace) -> None:
    from repro.tracking import runs as tracking

    print(tracking.format_registry(tracking.list_registry()))


def _audit(args: argparse.Namespace) -> None:
    from repro.tracking import audit

    print(audit.audit(args.reference))


def _report(args: argparse.Namespace) -> None:
    from repro.pipeline import report

    report.write_report(Path(args.metrics_dir), Path(args.out), Path(args.diagnostics) if args.diagnostics else None)


def _compare(args: argparse.Namespace) -> None:
    from repro.pipeline import compare

    compare.write_comparison(Path(args.published), [Path(path) for path in args.results], Path(args.out),
                             Path(args.metrics_dir))


def _ablate(args: argparse.Namespace) -> None:
    from repro.pipeline import ablate

    ablate.run_ablations(Path(args.params), Path(args.teacher) if args.teacher else None, Path(args.metrics_dir), Path(args.out),
                         track=not args.no_track)


def _shift_sweep(args: argparse.Namespace) -> None:
    from repro.pipeline import shift_sweep

    shift_sweep.run_sweep(Path(args.params), Path(args.teacher) if args.teacher else None, Path(args.out), track=not args.no_track)


def _bench(args: argparse.Namespace) -> None:
    from repro import io
    from repro.pipeline import bench

    if args.profile:  # a paper profile on random images of its dataset's shape
    
        if args.steps <= 0 or args.synthesis_steps <= 0:
            raise UserError("--steps and --synthesis-steps must be positive integers")
        print(bench.format_profile_table(bench.bench_profile(args.profile, args.experiment, args.methods, args.steps,
                                                             args.synthesis_steps, args.bind)))
        return
    outputs = [Path(path) if path else None for path in (args.json, args.markdown)]
    for path, flag in zip(outputs, ("--json", "--markdown")):
        if path is not None:  # before minutes of measuring, not after
            io.check_file_destination(path, f"{flag} file")
    if args.params:  # every method of params.yaml, the dictionary build, the stage start-up
        report = bench.bench_methods(Path(args.params), args.bind, startup=not args.no_startup)
        bench.write_report(report, *outputs)
        print(bench.format_report(report))
        return
    if any(outputs):
        raise UserError("--json and --markdown write the whole benchmark: give --params params.yaml with them")
    _configured(args)
    print(bench.format_result(bench.bench_kdci_overhead()))


def _diagnose(args: argparse.Namespace) -> None:
    _configured(args)
    from repro.pipeline import diagnose

    if args.params:  # exactly the students params.yaml lists (stale folders are ignored)
        from repro.pipeline.runset import read_params, runs

        models = [folder for run in runs(read_params(Path(args.params))) for folder in (run.baseline_dir, run.kdci_dir)]
    else:
        models = sorted({path.parent for root in args.models for path in Path(root).rglob(diagnose.SAMPLE_FILE)})
    if not models:
        raise UserError(f"no {diagnose.SAMPLE_FILE} under {', '.join(args.models)}: run the distillation stages first")
    diagnose.diagnose(models, Path(args.out), Path(args.teacher) if args.teacher else None)


def _verify(args: argparse.Namespace) -> None:
    from repro.pipeline import verify

    report = verify.verify(Path(args.metrics_dir), Path(args.results), Path(args.out))
    print(verify.summary(report, Path(args.out)))
    if args.strict and report["counts"]["identical"] != len(report["cells"]):
        raise SystemExit(1)


def _names(args: argparse.Namespace) -> None:
    import gin

    from repro import nets

    print("networks: " + ", ".join(nets.list_networks()))
    selectors = [selector for selector, _ in gin.config._REGISTRY.items()]  # noqa: SLF001 (gin has no public listing)
    ours = sorted({s.rsplit(".", 1)[-1] for s in selectors if s.startswith("repro.")})
    print("gin configurables (repro): " + ", ".join(ours))
    print("gin configurables (torch): " + ", ".join(sorted({s.rsplit(".", 1)[-1] for s in selectors if s.startswith("torch.optim")})))


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with each option's default where it has one (None, False and [] are none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.default is argparse.SUPPRESS
                or action.default in (None, False, [])):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or value ends like every other refusal: one ``error:`` line and exit
    status 2 (argparse prints its usage block first), and ``--help`` shows defaults. Sub-parsers
    inherit the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _seed(text: str) -> int:
    """--seed / --teacher-seed: an integer from 0 to MAX_SEED, as params.yaml's seeds and --bind SEED."""
    from repro.config import MAX_SEED

    value = _integer(text)
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: give an integer from 0 to {MAX_SEED}, e.g. 0")
    return value


def _positive(text: str) -> int:
    """A count of steps: an integer > 0."""
    value = _integer(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer: give a count such as 3")
    return value


def _percent(text: str) -> float:
    """Top-1 points: a finite number from 0 to 100 (float() alone lets nan and inf through)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:  # false for nan as well
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of top-1 points from 0 to 100, e.g. 2.0")
    return value


def build_parser() -> argparse.ArgumentParser:
    from repro import __version__

    parser = _Parser(prog="repro", description="KDCI reproduction: data-free KD pipeline stages.")
    parser.add_argument("--version", action="version", version=f"repro {__version__} (kdci-repro)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    teacher = verbs.add_parser("train-teacher", help="train the teacher on the real training split")
    _gin_args(teacher)
    teacher.add_argument("--out", default=None, help="artefact folder to write (Hub layout; without --params)")
    teacher.add_argument("--metrics", default=None, help="metrics JSON to write (without --params)")
    teacher.add_argument("--checkpoint-dir", default="checkpoints", help="where resume state is kept")
    teacher.add_argument("--params", default=None, help="train every teacher params.yaml lists (experiment, profile, "
                         "teacher_seeds) into models/teachers/seed<T>, instead of --gin/--out/--metrics")
    teacher.add_argument("--teacher-seed", type=_seed, default=None, help="with --params: only this teacher seed")
    teacher.set_defaults(run=_train_teacher, gin_names=True)

    imported = verbs.add_parser("import-teacher", help="convert a zju-vipa CMI / Fast-Datafree pretrained teacher "
                                "(.pth) into a teacher artefact, checked against its reported test top-1")
    imported.add_argument("file", metavar="FILE.pth", help="zju-vipa checkpoint, e.g. cifar10_wrn40_2.pth")
    imported.add_argument("--arch", required=True, help="repro network the file holds (`repro names`), e.g. wrn40_2")
    imported.add_argument("--dataset", required=True, help="cifar10 or cifar100 (gin/data/<name>.gin)")
    imported.add_argument("--out", default=None, help="artefact folder to write (default models/imported/<dataset>_<arch>)")
    imported.add_argument("--expected-top1", type=_percent, default=None, help="test top-1 (%%) the teacher should reach "
                          "(default: the benchmark's figure for resnet34 / wrn40_2; required for other networks)")
    imported.add_argument("--tolerance", type=_percent, default=None,
                          help="points below the expected top-1 still accepted (default 2.0)")
    imported.add_argument("--data-root", default=None, help="folder holding the torchvision CIFAR files (default data)")
    imported.add_argument("--metrics", default=None, help="metrics JSON to write (metrics/teachers/seed0.json lets "
                          "`repro publish --model` card it)")
    imported.set_defaults(run=_import_teacher, gin_names=True)

    distill = verbs.add_parser("distill", help="distil a student from a teacher artefact, data-free")
    _gin_args(distill)
    distill.add_argument("--teacher", default=None, help="teacher artefact folder (without --params)")
    distill.add_argument("--out", default=None, help="student artefact folder to write (without --params)")
    distill.add_argument("--checkpoint-dir", default="checkpoints", help="where resume state is kept")
    distill.add_argument("--params", default=None, help="distil every cell of --method params.yaml lists (each "
                         "teacher seed x seed) into models/<arm>/<method>/teacher<T>-seed<S>, in this process")
    distill.add_argument("--method", default=None, help="with --params: gin/methods/<method>.gin")
    distill.add_argument("--teacher-seed", type=_seed, default=None, help="with --params: only this teacher seed")
    distill.add_argument("--seed", type=_seed, default=None, help="with --params: only this student seed (SEED)")
    distill.add_argument("--kdci", action="store_true", help="with --params: wrap the method in KDCI (gin/kdci.gin)")
    distill.add_argument("--control", action="store_true", help="with --params: wrap the method in KDCI's "
                         "capacity-matched control (gin/kdci_control.gin: the same head, an uninformative dictionary)")
    distill.set_defaults(run=_distill, gin_names=True)

    evaluate = verbs.add_parser("evaluate", help="accuracy of an artefact on the real test split")
    _gin_args(evaluate)
    evaluate.add_argument("--model", default=[], action="append", help="artefact folder (repeatable)")
    evaluate.add_argument("--metrics", default=[], action="append", help="metrics JSON to write, one per --model")
    evaluate.add_argument("--params", default=None, help="evaluate every student params.yaml lists (models/{students,"
                          "kdci,control}/<method>/teacher<T>-seed<S> -> metrics/<arm>/<method>-teacher<T>-seed<S>.json)")
    evaluate.add_argument("--from-hub", default=[], action="append", metavar="ORG/NAME[@REV]",
                          help="pull a published model (verified) and evaluate it against its card (repeatable)")
    evaluate.add_argument("--hub-dir", default="models/hub", help="where pulled models are placed")
    evaluate.set_defaults(run=_evaluate, gin_names=True)

    publish = verbs.add_parser("publish", help="publish artefacts to the Hugging Face Hub (one repository per model)")
    publish.add_argument("--repo-id", required=True, metavar="ORG/NAME",
                         help="with --model: that model's repository; without: a prefix, giving ORG/NAME-teacher<T>, "
                              "ORG/NAME-<method>-teacher<T>-seed<k> and ORG/NAME-<method>-kdci-teacher<T>-seed<k> for "
                              "params.yaml's runs")
    publish.add_argument("--model", default=None, help="one artefact folder to publish (default: every final model)")
    publish.add_argument("--params", default="params.yaml", help="which runs are final (without --model)")
    publish.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    publish.add_argument("--private", action="store_true", help="create private repositories")
    publish.add_argument("--dry-run", action="store_true", help="write the repository folders and cards under "
                         "--out without uploading")
    publish.add_argument("--out", default="hub", help="dry-run output folder")
    publish.add_argument("--no-track", action="store_true", help="do not tag the MLflow model versions")
    publish.set_defaults(run=_publish)

    pull = verbs.add_parser("pull", help="download a published model (cached, verified) into models/hub/")
    pull.add_argument("reference", metavar="ORG/NAME[@REV]")
    pull.add_argument("--out", default="models/hub", help="folder that receives <ORG>--<NAME>/")
    pull.set_defaults(run=_pull)

    registry = verbs.add_parser("registry", help="models registered in MLflow and where they are published")
    registry.set_defaults(run=_registry)

    audit = verbs.add_parser("audit", help="how a recorded number was produced: an MLflow run, or the run that "
                             "wrote a metrics JSON's exact bytes (store: MLFLOW_TRACKING_URI or ./mlflow.db)")
    audit.add_argument("reference", metavar="RUN_ID|METRICS_JSON", help="an MLflow run id, or a metrics JSON "
                       "written by a stage (e.g. metrics/kdci/dafl-teacher0-seed0.json)")
    audit.set_defaults(run=_audit)

    report = verbs.add_parser("report", help="results table from the metrics JSON files")
    report.add_argument("--metrics-dir", default="metrics")
    report.add_argument("--out", default="reports")
    report.add_argument("--diagnostics", default=None, help="diagnostics.md to append (from `repro diagnose`)")
    report.set_defaults(run=_report)

    comparison = verbs.add_parser("compare", help="our results beside the paper's and the benchmark's "
                                  "published numbers")
    comparison.add_argument("--published", default="reports/published_numbers.csv",
                            help="published numbers, one row each with its source (CSV; see its comment lines)")
    comparison.add_argument("--results", nargs="+", default=["reports/results.json"], metavar="PATH",
                            help="results.json files of `repro report`, or folders searched for them")
    comparison.add_argument("--metrics-dir", default="metrics", help="metrics to identify the dataset and student of "
                            "a results.json written before report.py recorded them")
    comparison.add_argument("--out", default="reports/paper_comparison.md")
    comparison.set_defaults(run=_compare)

    ablate = verbs.add_parser("ablate", help="KDCI ablations (when params.yaml says study: true)")
    ablate.add_argument("--params", default="params.yaml", help="params file: experiment, profile, methods, seeds, study")
    ablate.add_argument("--teacher", default=None, help="teacher artefact folder (default: the first of teacher_seeds)")
    ablate.add_argument("--metrics-dir", default="metrics", help="where the baseline and KDCI metrics are")
    ablate.add_argument("--out", default="reports/ablations.md")
    ablate.add_argument("--no-track", action="store_true", help="do not record MLflow runs")
    ablate.set_defaults(run=_ablate, gin_names=True)

    sweep = verbs.add_parser("shift-sweep", help="dose-response: baseline, KDCI and control against a controlled "
                             "shift (when params.yaml says study: true)")
    sweep.add_argument("--params", default="params.yaml", help="params file: experiment, profile, seeds, study")
    sweep.add_argument("--teacher", default=None, help="teacher artefact folder (default: the first of teacher_seeds)")
    sweep.add_argument("--out", default="reports/shift_sweep", help="output folder")
    sweep.add_argument("--no-track", action="store_true", help="do not record MLflow runs")
    sweep.set_defaults(run=_shift_sweep, gin_names=True)

    bench = verbs.add_parser("bench", help="per method: synthesis round, student step, and the same step + KDCI")
    _gin_args(bench, tracked=False)
    bench.add_argument("--params", default=None, help="bench every method of params.yaml (experiment and profile "
                       "from it; --bind still applies) instead of the --gin files")
    bench.add_argument("--profile", default=None, help="bench a paper profile (e.g. paper-cifar10) on random images of "
                       "its dataset's shape at full network sizes: images/s and peak memory per method")
    bench.add_argument("--experiment", default=None, help="with --profile: gin/experiments/<name>.gin "
                       "(default: the dataset's ResNet-34 -> ResNet-18 pair)")
    bench.add_argument("--methods", nargs="+", default=["dafl", "deepinv", "cmi", "fast", "mosaickd", "dfnd"],
                       help="with --profile: methods to bench")
    bench.add_argument("--steps", type=_positive, default=3, help="with --profile: student steps timed per method")
    bench.add_argument("--synthesis-steps", type=_positive, default=2,
                       help="with --profile: optimisation steps per timed synthesis round (the full round is projected)")
    bench.add_argument("--json", default=None, metavar="FILE", help="with --params: write the figures as JSON "
                       "(reports/bench.json: per method and once, see repro/pipeline/bench.py)")
    bench.add_argument("--markdown", default=None, metavar="FILE", help="with --params: write them as markdown "
                       "tables (reports/bench.md)")
    bench.add_argument("--no-startup", action="store_true", help="with --params: skip the stage start-up "
                       "measurement (it trains a smoke teacher and runs four short distillations)")
    bench.set_defaults(run=_bench, gin_names=True)

    diag = verbs.add_parser("diagnose", help="class-proportion shift and Frechet distance of substitution data")
    _gin_args(diag, tracked=False)
    diag.add_argument("--teacher", default=None, help="teacher artefact folder for every student (default: the "
                      "teacher each student's config.json names)")
    diag.add_argument("--models", nargs="+", default=["models/students", "models/kdci"],
                      help="folders searched for student artefacts with a substitution sample")
    diag.add_argument("--params", default=None, help="diagnose exactly the students params.yaml lists (instead of --models)")
    diag.add_argument("--out", default="reports/diagnostics", help="output folder")
    diag.set_defaults(run=_diagnose, gin_names=True)

    check = verbs.add_parser("verify", help="regenerated metrics vs the committed ones (HEAD): identical, within the "
                             "committed interval, outside it, or missing; names both runs' platforms")
    check.add_argument("--metrics-dir", default="metrics", help="metrics folder (every *.json under it is a cell)")
    check.add_argument("--results", default="reports/results.json", help="results.json whose HEAD version gives the "
                       "intervals and the committed platform (the working-tree one gives this run's platform)")
    check.add_argument("--out", default="reports", help="folder that receives verify.md and verify.json")
    check.add_argument("--strict", action="store_true", help="exit 1 unless every cell is identical")
    check.set_defaults(run=_verify)

    checked = verbs.add_parser("check-params", help="validate all of params.yaml (DVC's first stage: a bad value stops "
                               "the pipeline before DVC removes any output)")
    checked.add_argument("--params", default="params.yaml", help="the parameters file to check")
    checked.add_argument("--out", default=None, help="write the checked parameters as JSON (what the stages depend on)")
    checked.set_defaults(run=_check_params)

    names = verbs.add_parser("names", help="list registered networks and gin configurables")
    names.set_defaults(run=_names, gin_names=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    reproducible.start_cli()  # first: the CPU kernel pins only work if set before torch is imported
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    launched = os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")
    try:
        if getattr(args, "gin_names", False):  # verbs that parse gin: every name must be known first
            import repro.configurables  # noqa: F401
        if launched:  # started by torchrun: join the process group first (torch imported only then)
            from repro.train import distributed

            distributed.init_from_env()
        run(args)
    except UserError as exc:
        if os.environ.get("REPRO_DEBUG"):
            raise
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint is kept; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if launched:
            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
