"""`python -m devstack`: the embedded stack and the demo model, from the checkout (not part of the product).

    python -m devstack up [--dir .stack] [--no-prometheus]    the stack, left running (Ctrl-C stops it)
    python -m devstack demo                                    the same stack, the walkthrough, then exit
    python -m devstack train-demo --out FOLDER [--version v1.3] a demo model version, ready for `tmctl publish`

`./dev up`, `./dev demo` and `./dev train-demo` run these with the checkout's .venv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def cmd_up(args: argparse.Namespace) -> None:
    from devstack.stack import main as up

    up(args)


def cmd_train_demo(args: argparse.Namespace) -> None:
    from devstack.demo_model import train_demo_model

    formats = tuple(args.format or ["native"])
    print(f"training a demo model ({args.rounds} rounds, 10 strategies, 84 features)…", file=sys.stderr)
    model = train_demo_model(version=args.version, seed=args.seed, rounds=args.rounds, formats=formats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in model.files.items():
        (out / name).write_bytes(data)
    print(f"wrote {len(model.files)} files to {out} (accuracy {model.accuracy:.3f}, {model.training_samples} samples)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, demo, help_ in (
        ("up", False, "start the embedded stack: S3, Kubernetes API, operator, serving; Ctrl-C stops it"),
        ("demo", True, "start the embedded stack, run the walkthrough (promote, roll back…), then exit"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=cmd_up, demo=demo)
        p.add_argument("--dir", default=".stack", help="where the stack keeps its kubeconfig, logs and caches")
        p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus even if installed")
    p = sub.add_parser("train-demo", help="train a small real LightGBM strategy model into a folder")
    p.set_defaults(fn=cmd_train_demo)
    p.add_argument("--out", required=True)
    p.add_argument("--version", default="v1.0")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument(
        "--format",
        action="append",
        choices=["native", "pickle"],
        default=None,
        help="native (default) and/or pickle (a joblib LGBMClassifier, as the original scripts wrote)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
