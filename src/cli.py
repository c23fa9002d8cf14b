"""The `memory-models` command: train, evaluate and list the equations.

The CLI takes a config path and nothing that changes the experiment; everything an experiment
is lives in its YAML file.
"""

import argparse
import sys

import torch

from src.config import ConfigError, load_comparison, load_experiment, read_yaml


def _train(args) -> int:
    from src.training import train

    experiment = load_experiment(args.config)
    print(experiment.to_yaml())
    result = train(experiment, resume=args.resume)
    print(f"final: eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}")
    print(f"checkpoint: {experiment.train.out_dir}/checkpoint.pt")
    return 0


def _compare(args) -> int:
    from src.compare import compare

    raw_out_dir = read_yaml(args.config)["train"].get("out_dir")
    experiments = load_comparison(args.config)
    compare(experiments, raw_out_dir)
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


def _generate(args) -> int:
    import yaml

    from src.config import resolve_model_section
    from src.generation import generate
    from src.model import PaperModel

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    config = yaml.safe_load(checkpoint["config"])
    model = PaperModel(resolve_model_section(config["model"], args.checkpoint), args.checkpoint)
    model.load_state_dict(checkpoint["model"])
    is_text = config["task"]["type"] == "text"
    if args.prompt_ids is not None:
        prompt = [int(token) for token in args.prompt_ids.split()]
    elif is_text:
        prompt = list(args.prompt.encode("utf-8"))
    else:
        raise ConfigError(f"{args.checkpoint}: a {config['task']['type']} model needs --prompt-ids")
    ids = generate(
        model, torch.tensor([prompt]), args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
    )[0].tolist()
    print(bytes(ids).decode("utf-8", errors="replace") if is_text else " ".join(map(str, ids)))
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
    compare = commands.add_parser("compare", help="train every model of CONFIG on one task; print one table")
    compare.add_argument("config")
    compare.set_defaults(run=_compare)
    evaluate = commands.add_parser("evaluate", help="evaluate CHECKPOINT on the eval set of CONFIG")
    evaluate.add_argument("config")
    evaluate.add_argument("checkpoint")
    evaluate.set_defaults(run=_evaluate)
    generate = commands.add_parser("generate", help="continue a prompt with the model of CHECKPOINT")
    generate.add_argument("checkpoint")
    generate.add_argument("--prompt", default="", help="text prompt (models trained on a text task)")
    generate.add_argument("--prompt-ids", help="space-separated token ids")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=_generate)
    equations = commands.add_parser("equations", help="print the equation catalogue")
    equations.set_defaults(run=_equations)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
