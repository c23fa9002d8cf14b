"""The `memory-models` command: train, compare, evaluate, generate, estimate, info, export, serve, equations.

The CLI takes a config path and nothing that changes the experiment; everything an experiment
is lives in its YAML file. Every expected user error (a config, a checkpoint, a run directory, a
flag, a diverging run) ends in one line on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar, cast

import torch

from src import runs, training
from src.checkpoints import CheckpointError
from src.compare import ComparisonError, compare
from src.config import TOKENIZED_TASKS, ExperimentConfig, load_comparison, load_experiment, override_model_section
from src.distributed import launched_rank
from src.estimate import out_of_memory_advice
from src.model import PaperModel
from src.tasks.tokenizer import decode_bytes, encode, load_tokenizer
from src.validation import ConfigError, yaml_value

T = TypeVar("T")


class UsageError(ValueError):
    """A flag value the command cannot use; the message names the flag."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _device(args: argparse.Namespace, configured: str, where: str) -> torch.device:
    """The --device flag if given, else the config's train.device (`where` names it)."""
    return runs.select_device(args.device or configured, "--device" if args.device else where)


def _example(experiment: ExperimentConfig, checkpoint_path: str, shown: int = 8) -> str:
    """One held-out example and the trained model's answers at its first `shown` scored positions."""
    from src.tasks import IGNORE, build_task, held_out

    model = runs.load_trained_model(checkpoint_path, torch.device("cpu"), experiment.model).model
    inputs, targets = held_out(build_task(experiment.task)).sample(1, seed=experiment.eval.seed)
    with torch.no_grad():
        predicted = model(inputs).argmax(-1)[0].tolist()
    inputs, targets = inputs[0].tolist(), targets[0].tolist()
    scored = [t for t, target in enumerate(targets) if target != IGNORE][:shown]

    def show(ids: list[int]) -> str:  # text tasks as quoted text (their bytes or tokenizer), the others as ids
        text = _decode(experiment.task, ids)
        return repr(text) if experiment.task["type"] in TOKENIZED_TASKS else text

    context = show(inputs[: scored[0]][-48:])
    answers = [f"{show([inputs[t]])} -> {show([predicted[t]])} "
               f"({'right' if predicted[t] == targets[t] else f'expected {show([targets[t]])}'})"
               for t in scored]  # fmt: skip
    return f"example (held-out): context {context}\n  query -> model's answer: " + ", ".join(answers)


def _train(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.config)
    main_process = launched_rank() == 0  # under torchrun, rank 0 alone prints
    if main_process:
        print(experiment.to_yaml())
    result = training.train(experiment, resume=args.resume, overwrite=args.overwrite)
    if main_process:
        checkpoint = f"{experiment.train.out_dir}/checkpoint.pt"
        print(_example(experiment, checkpoint))
        print(f"checkpoint: {checkpoint}")
        print(f"final: eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    experiments = load_comparison(args.config)
    out_dir = Path(next(iter(experiments.values())).train.out_dir).parent  # each model's is train.out_dir/<name>
    compare(experiments, out_dir, resume=args.resume, overwrite=args.overwrite)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """The --set KEY=VALUE flags as {key: value}, each value read as YAML (`--set model.blocks[1].mixer.top_k=4`)."""
    overrides = {}
    for text in args.set or []:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, e.g. model.blocks[1].mixer.top_k=4, got {text!r}")
        try:
            overrides[key.strip()] = yaml_value(value)
        except ConfigError as error:
            raise UsageError(f"--set {text!r}: {error}") from error
    return overrides


def _model_section(args: argparse.Namespace, section: dict, file: str) -> dict:
    """The model section to read a checkpoint with: `section`, with the --set overrides applied."""
    overrides = _overrides(args)
    return override_model_section(section, overrides, file, "--set") if overrides else section


def _evaluate(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.config)
    device = _device(args, experiment.train.device, f"{experiment.file}: train.device")
    section = _model_section(args, experiment.model, experiment.file)
    checkpoint = runs.read_checkpoint(args.checkpoint)
    runs.check_config_matches(args.checkpoint, checkpoint["config"], experiment, ("model", "task"))
    model = runs.load_trained_model(args.checkpoint, device, section, checkpoint).model
    with training.out_of_memory_at(experiment, checkpoint["step"], "evaluation", device):
        result = training.evaluate(model, experiment)
    print(
        f"step {checkpoint['step']}: eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}"
    )
    return 0


def _prompt(args: argparse.Namespace, task: dict, vocab_size: int) -> list[int]:
    """The prompt's token ids: --prompt-ids, or --prompt encoded as the model's text task encodes it."""
    if args.prompt_ids is not None:
        try:
            prompt = [int(token) for token in args.prompt_ids.split()]
        except ValueError as error:
            raise UsageError(f"--prompt-ids must be space-separated integers, got {args.prompt_ids!r}") from error
        if outside := [token for token in prompt if not 0 <= token < vocab_size]:
            raise UsageError(f"--prompt-ids: {outside[0]} is outside the model's vocabulary [0, {vocab_size})")
    elif task["type"] in TOKENIZED_TASKS:
        text = _utf8(args.prompt, "--prompt")
        prompt = list(text) if task.get("tokenizer") is None else _tokenizer_call(encode, task["tokenizer"], text)
    else:
        raise UsageError(f"{args.checkpoint}: a {task['type']} model needs --prompt-ids")
    if not prompt:
        raise UsageError("the prompt is empty: give --prompt TEXT (text models) or --prompt-ids IDS")
    return prompt


def _utf8(text: str, flag: str) -> bytes:
    """`text` as UTF-8; bytes of the command line that are not UTF-8 (kept as lone surrogates) are a UsageError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raw = text.encode("utf-8", "surrogateescape")
        position = len(text[: error.start].encode("utf-8", "surrogateescape"))
        raise UsageError(f"{flag} is not valid UTF-8: byte {position} is {raw[position]:#04x}; give text") from error


def _tokenizer_call(function: Callable[..., T], tokenizer: str, *args: object) -> T:
    """`function(tokenizer, *args)`, a missing or unreadable tokenizer becoming a UsageError."""
    try:
        return function(tokenizer, *args)
    except (ValueError, ImportError) as error:
        raise UsageError(f"the checkpoint's task tokenizer: {error}") from error


def _decode(task: dict, ids: list[int]) -> str:
    """Generated ids as text (the model's text task's bytes or tokenizer), else as numbers."""
    if task["type"] not in TOKENIZED_TASKS:
        return " ".join(map(str, ids))
    if task.get("tokenizer") is None:
        return decode_bytes(ids)
    return _tokenizer_call(lambda name, ids: load_tokenizer(name).decode(ids), task["tokenizer"], ids)


def _generate(args: argparse.Namespace) -> int:
    from src.config import model_vocab_size, resolve_model_section
    from src.generation import PromptTooLong, check_sampling, fit_prompt, generate, prompt_limit

    checkpoint = runs.read_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    model_section = _model_section(args, resolve_model_section(config["model"], args.checkpoint), args.checkpoint)
    vocab_size = model_vocab_size(model_section)
    prompt = _prompt(args, config["task"], vocab_size)
    try:
        check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, vocab_size)
    except ValueError as error:
        raise UsageError(str(error)) from error
    device = _device(args, config["train"].get("device", "cpu"), f"{args.checkpoint}: train.device")
    if args.max_prompt_tokens < 1:
        raise UsageError(f"--max-prompt-tokens must be >= 1, got {args.max_prompt_tokens}")
    model = runs.load_trained_model(args.checkpoint, device, model_section, checkpoint).model
    try:
        bound = prompt_limit(model, args.max_new_tokens, args.max_prompt_tokens, "--max-prompt-tokens")
        prompt = fit_prompt(prompt, *bound, args.truncate, "--truncate")
    except PromptTooLong as error:
        raise UsageError(str(error)) from error
    ids = generate(
        model,
        torch.tensor([prompt], device=device),
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
    )[0].tolist()
    print(_decode(config["task"], ids))
    return 0


def _check_estimate_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--batch", args.batch), ("--length", args.length)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")


def _estimate(args: argparse.Namespace) -> int:
    from src.estimate import EstimateError, estimate_training_memory

    experiment = load_experiment(args.config)
    _check_estimate_flags(args)
    try:
        print(estimate_training_memory(experiment, args.batch, args.length, args.device).table())
    except EstimateError as error:
        raise UsageError(str(error)) from error
    return 0


def _info(args: argparse.Namespace) -> int:
    from src.estimate import estimate_training_memory
    from src.info import model_info
    from src.tasks import build_task

    experiment = load_experiment(args.config)
    _check_estimate_flags(args)
    length = args.length or build_task(experiment.task).sample(1, seed=experiment.train.seed)[0].shape[1]
    print(model_info(experiment, length))
    if args.batch is not None or args.length is not None:
        print(estimate_training_memory(experiment, args.batch, args.length, args.device).table())
    return 0


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    if missing := [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]:
        raise UsageError(f"serve needs the 'serve' extra ({', '.join(missing)} missing): uv sync --extra serve")
    from src.serve.server import serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
    serve(args.config, args.host, args.port)
    return 0


def _export(args: argparse.Namespace) -> int:
    from src.adapted.config import is_adapted_section
    from src.hf_directory import DirectoryError, check_target
    from src.pretrained import hf_mamba_config, safetensors_torch

    try:  # before the checkpoint is read, so a refusal costs nothing
        safetensors_torch("export")
        check_target(args.directory, args.overwrite)
    except (ImportError, DirectoryError) as error:
        raise UsageError(str(error)) from error
    checkpoint = runs.read_checkpoint(args.checkpoint)
    if is_adapted_section(checkpoint["config"]["model"]):
        raise UsageError(
            f"{args.checkpoint}: an adapted model (model.base) does not export; only PaperModels (block lists) do: "
            "an adapted model keeps its frozen base by reference, and its checkpoint holds only what trains"
        )
    trained = runs.load_trained_model(args.checkpoint, torch.device("cpu"), checkpoint=checkpoint)
    model = cast(PaperModel, trained.model)  # an adapted model was refused above
    try:
        model.save_pretrained(args.directory, overwrite=args.overwrite)
    except DirectoryError as error:
        raise UsageError(str(error)) from error
    form = "Hugging Face MambaForCausalLM" if hf_mamba_config(model.config) else "memory_models"
    print(f"{args.directory}: config.json + model.safetensors ({form}) of step {checkpoint['step']}")
    return 0


def _equations(args: argparse.Namespace) -> int:
    from src.catalogue import catalogue, format_table

    print(format_table(catalogue()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="memory-models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the model of CONFIG on its task")
    train.add_argument("config")
    existing_run = train.add_mutually_exclusive_group()
    existing_run.add_argument("--resume", action="store_true", help="continue from the checkpoint in train.out_dir")
    existing_run.add_argument("--overwrite", action="store_true", help="replace the run in train.out_dir")
    train.set_defaults(run=_train)
    comparison = commands.add_parser("compare", help="train every model of CONFIG on one task; print one table")
    comparison.add_argument("config")
    existing_runs = comparison.add_mutually_exclusive_group()
    existing_runs.add_argument(
        "--resume", action="store_true", help="continue each model's run (finished ones are read)"
    )
    existing_runs.add_argument("--overwrite", action="store_true", help="replace the models' runs in train.out_dir")
    comparison.set_defaults(run=_compare)
    evaluate = commands.add_parser("evaluate", help="evaluate CHECKPOINT on the eval set of CONFIG")
    evaluate.add_argument("config")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--device", choices=runs.DEVICES, help="default: the config's train.device")
    set_help = "read the model with a setting its weights still fit, e.g. model.blocks[1].mixer.top_k=4 (repeatable)"
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    evaluate.set_defaults(run=_evaluate)
    generate = commands.add_parser("generate", help="continue a prompt with the model of CHECKPOINT")
    generate.add_argument("checkpoint")
    generate.add_argument(
        "--prompt",
        default="",
        help="text prompt (text and fact_recall models: encoded as their task encodes, bytes or the base's tokenizer)",
    )
    generate.add_argument("--prompt-ids", help="space-separated token ids")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=4096,
        help="refuse a longer prompt (an adapted model: also its base's positions less --max-new-tokens)",
    )
    generate.add_argument("--truncate", action="store_true", help="keep the prompt's last tokens that fit instead")
    generate.add_argument("--device", choices=runs.DEVICES, help="default: the checkpoint's train.device")
    generate.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    generate.set_defaults(run=_generate)
    estimate = commands.add_parser("estimate", help="peak memory of one training step of CONFIG, without a GPU")
    estimate.add_argument("config")
    estimate.add_argument("--batch", type=int, help="default: train.batch_size")
    estimate.add_argument("--length", type=int, help="default: the task's sequence length")
    device_help = "the device priced, on any machine (default: the config's train.device; auto prices cuda)"
    estimate.add_argument("--device", choices=["cpu", "cuda"], help=device_help)
    estimate.set_defaults(run=_estimate)
    info = commands.add_parser(
        "info", help="parameters per block, the step state's bytes, and with --batch / --length the memory estimate"
    )
    info.add_argument("config")
    info.add_argument("--batch", type=int, help="estimate a training step at this batch (default: train.batch_size)")
    info.add_argument("--length", type=int, help="the state after this many tokens (default: the task's length)")
    info.add_argument("--device", choices=["cpu", "cuda"], help=device_help)
    info.set_defaults(run=_info)
    serving = commands.add_parser("serve", help="serve the chat model with memory of CONFIG over HTTP")
    serving.add_argument("config")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8000)
    serving.set_defaults(run=_serve)
    export = commands.add_parser(
        "export", help="write the model of a train CHECKPOINT as DIRECTORY: config.json + model.safetensors"
    )
    export.add_argument("checkpoint")
    export.add_argument("directory")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIRECTORY")
    export.set_defaults(run=_export)
    equations = commands.add_parser("equations", help="print the equation catalogue")
    equations.set_defaults(run=_equations)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 1
    except (ConfigError, CheckpointError, runs.RunError, UsageError, ComparisonError) as error:
        text = out_of_memory_advice(error) if isinstance(error, training.OutOfMemory) else str(error)
        message = " ".join(line.strip() for line in text.splitlines() if line.strip())
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
