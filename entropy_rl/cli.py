"""The `entropy-rl` command: demo | train | sft | eval | compare | report | methods | validate.

Errors print one line `entropy-rl CMD: error: ...` and exit 2 for bad input (config, task or dataset,
paths, a missing or too-old optional extra) or 1 when a run fails (disk full, a run that stopped itself);
set ENTROPY_RL_DEBUG=1 to get the traceback instead. Any other exception is a bug and prints its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

DEMO_RUN_DIR = "runs/demo"
DEBUG_ENV = "ENTROPY_RL_DEBUG"  # set to 1 to re-raise caught errors with their traceback


def cmd_demo(args: argparse.Namespace) -> int:
    """Warm-start a tiny Qwen2 model on Countdown-3 by SFT, then run GRPO on CPU (the defaults of Config)."""
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import train

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(None, overrides)
    print(f"entropy-rl demo: {cfg.train.steps} GRPO steps of {cfg.rollout.prompts_per_step} prompts x "
          f"{cfg.rollout.group_size} samples on {cfg.task.name}, method {cfg.algorithm.method}; run dir {args.run_dir}")
    t0 = time.perf_counter()
    result = train(cfg, args.run_dir, resume=args.resume, overwrite=not args.resume, progress=not args.no_progress)
    summarize(result, time.perf_counter() - t0)
    return 0


def summarize(result, seconds: float) -> None:
    """Print the first-vs-last entropy and reward summary of a finished run, and its pass@k from step 0 on."""
    from entropy_rl.metrics.sinks import read_jsonl
    from entropy_rl.report.data import pass_story

    logged = read_jsonl(result.run_dir / "metrics.jsonl")
    rows = [r for r in logged if r.get("step", 0) >= 1]  # RL steps; step 0 is the warm start's eval
    if len(rows) >= 2:
        n = min(10, len(rows) // 2)
        mean = lambda key, rs: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        h0, h1 = mean("entropy/token_mean", rows[:n]), mean("entropy/token_mean", rows[-n:])
        r0, r1 = mean("reward/mean", rows[:n]), mean("reward/mean", rows[-n:])
        print(f"entropy/token_mean {h0:.4f} -> {h1:.4f} nats ({100 * (h1 - h0) / max(h0, 1e-12):+.1f}%), "
              f"reward/mean {r0:.3f} -> {r1:.3f} (first vs last {n} steps)")
    story = pass_story(logged)
    if story:
        print(f"eval/{story}")
    print(f"done in {seconds:.0f} s; metrics in {result.run_dir / 'metrics.jsonl'}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a YAML config (or continue a run with --resume RUN_DIR)."""
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import train

    split_config_arg(args)
    if args.skip_bad_rows:
        args.overrides.append("task.params.skip_bad_rows=true")
    if args.resume and args.config is None:
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.yaml", args.overrides)
    else:
        if args.config is None:
            raise SystemExit("entropy-rl train: give a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.resume or args.run_dir or f"runs/{Path(args.config).stem}")
    t0 = time.perf_counter()
    result = train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.no_progress)
    summarize(result, time.perf_counter() - t0)
    return 0


def split_config_arg(args: argparse.Namespace) -> None:
    """`entropy-rl sft a.b=c` (no CONFIG): argparse puts the first override in `config`; move it back."""
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides = [args.config, *args.overrides]
        args.config = None


def cmd_sft(args: argparse.Namespace) -> int:
    """Only the supervised warm start; saves the model + tokenizer to --out.

    --out is an SFT output directory (marked and locked like a run directory): rerunning the same command
    continues an interrupted SFT from its newest checkpoint, and says so when it has already finished.
    """
    import functools
    import os
    import shutil

    import torch

    from entropy_rl.models import save_pretrained
    from entropy_rl.tasks import make_task
    from entropy_rl.train import checkpoint as ckpt
    from entropy_rl.train.config import load_config
    from entropy_rl.train.loop import initial_model, pick_device, prepare_run_dir, rollout_sampling
    from entropy_rl.train.rundir import record_files
    from entropy_rl.train.sft import warm_start

    split_config_arg(args)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    log = functools.partial(print, flush=True)
    with prepare_run_dir(cfg, out, resume=not args.overwrite, overwrite=args.overwrite, kind="sft", log=log):
        if (out / ckpt.COMPLETE).is_file():
            print(f"{out} already holds this SFT, finished; pass --overwrite to train it again")
            return 0
        torch.manual_seed(cfg.train.seed)
        task = make_task(cfg.task.name, **cfg.task.params)
        model, tokenizer = warm_start(cfg, task, rollout_sampling(cfg), lambda: initial_model(cfg, task), out,
                                      out / "sft_metrics.jsonl", pick_device(cfg.train.device), log)
        staging = out / "checkpoints" / ".model"  # inside a toolkit entry until its file names are recorded
        shutil.rmtree(staging, ignore_errors=True)
        save_pretrained(model, tokenizer, staging)
        names = sorted(os.listdir(staging))
        record_files(out, "sft", names)
        for name in names:
            os.replace(staging / name, out / name)
        (out / ckpt.COMPLETE).write_text("ok")
        shutil.rmtree(ckpt.checkpoint_dir(out), ignore_errors=True)
    print(f"saved to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Sampled accuracy, pass@k and maj@k of a model directory, or of a run directory's final model (or warm start),
    on a task's eval split; prints them as JSON and keeps them as a result file (entropy_rl/metrics/passk.py).
    For a run directory the task and sampling settings default to the run's config.yaml.

    The result goes to --out, else to the eval/ folder of the run or SFT output the model belongs to
    (`result_home`); a stored result with the same settings (model weights by content included) is printed
    instead of sampling again, unless --no-cache. With a stored warm-start result evaluated the same way, the
    crossover k (the smallest k where the warm start's pass@k >= the run's) is printed on stderr.
    The work is `plan_passk_eval` then `execute_passk_eval` (entropy_rl/train/evaluate.py); this wrapper only maps
    the flags.
    """
    import json

    from entropy_rl.train.evaluate import execute_passk_eval, plan_passk_eval

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    plan = plan_passk_eval(args.model, args.ks, args.problems, args.samples, args.seed, args.warm_start, args.out,
                           args.task, args.task_params, args.temperature, args.top_p, args.max_new_tokens, args.top_h,
                           log, args.device)
    result = execute_passk_eval(plan, args.no_cache, log)
    print(json.dumps(result.metrics, indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run several methods x seeds on one config and write a side-by-side summary (and report); with --k, pass@k
    curves of every run and of the warm start."""
    from entropy_rl.train.compare import compare

    split_config_arg(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    compare(args.config, args.overrides, methods, args.seeds, args.out, jobs=args.jobs, methods_dir=args.methods_dir,
            baseline=args.baseline, equal_tokens=args.equal_tokens, pool_law=args.pool_law, ks=args.ks,
            eval_problems=args.eval_problems)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """List method variants, registered policy-loss methods, advantage estimators, rollout strategies and tasks with
    their defaults."""
    from entropy_rl.catalogue import describe_params, method_needs, render_markdown
    from entropy_rl.presets import packaged_variants, settings

    if args.markdown:
        print(render_markdown(), end="")
        return 0
    import entropy_rl.advantages  # noqa: F401
    import entropy_rl.methods  # noqa: F401
    from entropy_rl.core.advantage import ADVANTAGES
    from entropy_rl.core.policy_loss import POLICY_LOSSES
    from entropy_rl.tasks import TASKS

    print("Method variants (entropy-rl compare --methods NAME; entropy_rl/presets/methods/NAME.yaml):")
    for v in packaged_variants():
        print(f"  {v.name:<22} {v.description}")
        print(f"  {'':<22} sets: {', '.join(settings(v.overrides))}")
    print("Policy-loss methods (algorithm.method):")
    for name in POLICY_LOSSES.names():
        e = POLICY_LOSSES.get(name)
        print(f"  {name:<16} [{e.obj.stage}] {e.doc}")
        print(f"  {'':<16} paper: {e.obj.paper or '-'}; needs: {method_needs(e.obj)}")
        print(f"  {'':<16} params: {describe_params(e.params_cls)}")
    print("Advantage estimators (algorithm.advantage):")
    for name in ADVANTAGES.names():
        e = ADVANTAGES.get(name)
        print(f"  {name:<16} {e.doc}")
        print(f"  {'':<16} params: {describe_params(e.params_cls)}")
    from entropy_rl.rollout.strategies import STRATEGIES

    print("Rollout strategies (rollout.strategy):")
    for name in STRATEGIES.names():
        e = STRATEGIES.get(name)
        print(f"  {name:<20} {e.doc}")
        print(f"  {'':<20} params: {describe_params(e.params_cls) or '-'}")
    print("Tasks (task.name):")
    for name in TASKS.names():
        e = TASKS.get(name)
        print(f"  {name:<16} {e.doc}")
        print(f"  {'':<16} params: {describe_params(e.params_cls)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config (schema, types, ranges, method/task parameters) without building anything."""
    import yaml

    from entropy_rl.train.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    print(f"{args.config}: ok", file=sys.stderr)
    return 0


def float_in_unit(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text[:40]}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def k_grid(text: str) -> list[int]:
    """argparse type of `eval --k` and `compare --k`: see entropy_rl.metrics.passk.parse_ks."""
    from entropy_rl.metrics.passk import parse_ks

    try:
        return parse_ks(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_at_least(lo: int, hi: int = 2**63 - 1) -> Callable[[str], int]:
    """An argparse `type` accepting integers in [lo, hi] (so `--jobs 0` is a usage error, not a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text[:40]}'")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}" if value < lo else f"must be <= {hi}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="entropy-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="SFT warm start + GRPO on Countdown-3 with a tiny model, on CPU")
    p.add_argument("--run-dir", default=DEMO_RUN_DIR,
                   help=f"output directory (default {DEMO_RUN_DIR}; an earlier demo run there is replaced)")
    p.add_argument("--steps", type=int_at_least(0), default=None, help="RL steps (default 300)")
    p.add_argument("--resume", action="store_true", help="continue the demo run in --run-dir")
    p.add_argument("--no-progress", action="store_true", help="plain log lines, no progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=c")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (omit with --resume RUN_DIR)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=c")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in the run directory (removes only what entropy-rl wrote there)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="dataset tasks (jsonl): skip and count malformed rows instead of failing on the first one")
    p.add_argument("--no-progress", action="store_true", help="plain log lines, no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("sft", help="supervised warm start only")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the demo config)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=c")
    p.add_argument("--out", required=True,
                   help="directory to save the model and tokenizer (rerun the same command to continue an interrupted SFT)")
    p.add_argument("--overwrite", action="store_true", help="replace an SFT output in --out (only what entropy-rl wrote)")
    p.set_defaults(fn=cmd_sft)

    p = sub.add_parser("eval", help="sampled accuracy and pass@k of a model directory or of a run's final model")
    p.add_argument("model", metavar="MODEL_OR_RUN_DIR",
                   help="a model directory (model + tokenizer), or a run directory: its newest complete checkpoint, "
                        "else its SFT warm start; task and sampling then default to the run's config")
    p.add_argument("--task", default=None, help="task name (default: the run's, else countdown)")
    p.add_argument("--task-params", nargs="*", default=[], help="task parameters key=value (over the run's, same task)")
    p.add_argument("--problems", type=int_at_least(1), default=256)
    p.add_argument("--samples", type=int_at_least(1), default=None,
                   help="samples per problem, the n of the unbiased pass@k estimator (default: the largest --k, else 8)")
    p.add_argument("--k", dest="ks", type=k_grid, default=None, metavar="K,K,...",
                   help="the k of pass@k and maj@k, e.g. 1,2,4,...,256 ('...' fills in doublings; default 1, 2, 4, ... "
                        "up to --samples)")
    p.add_argument("--temperature", type=float, default=None, help="default: the run's rollout.temperature, else 1.0")
    p.add_argument("--top-p", type=float, default=None, help="default: the run's rollout.top_p, else 1.0")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=None, help="default: the run's rollout.max_new_tokens, else 16")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--top-h", type=float_in_unit, default=None, metavar="ALPHA",
                   help="sample with Top-H decoding (arXiv:2509.02510) at entropy scale ALPHA in (0, 1] instead of plain sampling")
    p.add_argument("--warm-start", action="store_true",
                   help="evaluate the model the run started from (RUN/sft/model, else its model.path) instead of its final model")
    p.add_argument("--out", default=None,
                   help="folder for the JSON result passk_<settings hash>.json (default: the eval/ folder of the run or "
                        "SFT output the model belongs to; a model directory elsewhere gets no file)")
    p.add_argument("--no-cache", action="store_true", help="sample again even when a result with the same settings is stored")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "auto"),
                   help="where to sample (default: the run's train.device, else cuda when available)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("compare", help="run methods x seeds on one config and summarise side by side")
    p.add_argument("config", nargs="?", default=None, help="base YAML config (default: the demo config)")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=c applied to every run")
    p.add_argument("--methods", required=True,
                   help="comma-separated method variants (`entropy-rl methods` lists them) or policy-loss registry keys")
    p.add_argument("--seeds", type=int_at_least(1), default=1, help="seeds per method (base seed, +1, ...)")
    p.add_argument("--jobs", type=int_at_least(1), default=1, help="runs in parallel (default 1: sequential)")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/compare_<config name>_<hash of the config with overrides>)")
    p.add_argument("--methods-dir", default=None,
                   help="a directory of your own variants <name>.yaml (partial configs); they win over the packaged ones")
    p.add_argument("--baseline", default=None,
                   help="the method the summary compares the others with (default ppo_clip if compared, else the first)")
    p.add_argument("--equal-tokens", action="store_true",
                   help="summarise every run up to the smallest run's total of tokens generated (equal generation "
                        "budget, e.g. across rollout strategies)")
    p.add_argument("--pool-law", action="store_true",
                   help="in the report, fit R = -a exp(H) + b once over all runs (one model and task), not per run")
    p.add_argument("--k", dest="ks", type=k_grid, default=None, metavar="K,K,...",
                   help="after training, evaluate pass@k curves (e.g. 1,2,4,...,256; as `entropy-rl eval RUN --k`, "
                        "largest k samples per problem, cached) of the warm start and of every finished run's final "
                        "model; the summary adds pass@kmax and the crossover k against the warm start, the report "
                        "the curves")
    p.add_argument("--eval-problems", type=int_at_least(1), default=128,
                   help="eval problems per pass@k curve (with --k; default 128)")
    p.set_defaults(fn=cmd_compare)

    from entropy_rl.report.cli import cmd_report  # light import (argparse, pathlib only)

    p = sub.add_parser("report", help="self-contained HTML report (embedded figures) of one or more run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/report, or <common parent>/report)")
    p.add_argument("--labels", default=None, help="comma-separated legend names, one per run (default: directory names)")
    p.add_argument("--summary", default=None, help="markdown table file to include, e.g. a compare summary.md")
    p.add_argument("--pool-law", action="store_true",
                   help="fit R = -a exp(H) + b once per model and task, pooling the runs' points (default: per run)")
    p.add_argument("--smooth", type=int_at_least(0), default=None,
                   help="EMA span in steps for curves along training (default: automatic; 0 = raw curves only)")
    p.add_argument("--base", action="append", default=None, metavar="DIR",
                   help="a folder of `entropy-rl eval` results of the base model for the pass@k curves (repeatable; "
                        "each run's own warm-start results are found without it)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("methods", help="list method variants, methods, advantage estimators, rollout strategies and tasks with defaults")
    p.add_argument("--markdown", action="store_true", help="print docs/methods.md (generated from the registries)")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("validate", help="validate a config without building anything")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input prints one clear line and exits 2; a failed run exits 1 (see the module docstring)."""
    from entropy_rl.core.registry import ParamsError, RegistryError
    from entropy_rl.train.config import ConfigError, clip

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may follow --flags (`train cfg.yaml --run-dir d a.b=c`); argparse leaves those unparsed
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    hint = f" (set {DEBUG_ENV}=1 for the traceback)"
    try:
        return args.fn(args)
    except (ConfigError, RegistryError, ParamsError) as e:  # config and registry names: the message is complete
        if debug:
            raise
        print(f"entropy-rl {args.command}: error: {clip(str(e))}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError) as e:
        if debug:  # bad paths, task and dataset errors (ValueError: a bad row, a bad task parameter)
            raise
        print(f"entropy-rl {args.command}: error: {clip(str(e))}{hint}", file=sys.stderr)
        return 2
    except ImportError as e:  # a missing or too-old optional extra (vLLM, TRL, verl): the message names the fix
        if debug:
            raise
        print(f"entropy-rl {args.command}: error: {clip(str(e))}{hint}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # the run failed: disk full, I/O error, a run that stopped itself
        if debug:
            raise
        print(f"entropy-rl {args.command}: {clip(str(e))}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
