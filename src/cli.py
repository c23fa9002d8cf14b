"""The `memory-models` command: train, evaluate and list the equations.

The CLI takes a config path and nothing that changes the experiment; everything an experiment
is lives in its YAML file.
"""

import argparse
import sys

import torch

from src.config import ConfigError, load_experiment


def _train(args) -> int:
    from src.training import train

    experiment = load_experiment(args.config)
    print(experiment.to_yaml())
    result = train(experiment, resume=args.resume)
    print(f"final: eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}")
    print(f"checkpoint: {experiment.train.out_dir}/checkpoint.pt")
    return 0


def _evaluate(args) -> int:
    from src.model import PaperModel
    from src.training import evaluate

    experiment = load_experiment(args.config)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = PaperModel(experiment.model, experiment.file)
    model.load_state_dict(checkpoint["model"])
    result = evaluate(model, experiment)
    print(
        f"step {checkpoint['step']}: eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}"
    )
    return 0


def _equations(args) -> int:
    from src.catalogue import catalogue, format_table

    print(format_table(catalogue()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memory-models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the model of CONFIG on its task")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in train.out_dir")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("evaluate", help="evaluate CHECKPOINT on the eval set of CONFIG")
    evaluate.add_argument("config")
    evaluate.add_argument("checkpoint")
    evaluate.set_defaults(run=_evaluate)
    equations = commands.add_parser("equations", help="print the equation catalogue")
    equations.set_defaults(run=_equations)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
