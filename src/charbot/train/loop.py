"""`charbot train`, top to bottom: data → base model → (LoRA) → transformers Trainer → one output directory.

The Trainer runs on accelerate, so `accelerate launch -m charbot train …` spreads the same run over GPUs
(DDP, FSDP or DeepSpeed, as `accelerate config` says) without changes here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from charbot.errors import ConfigError, ModelError
from charbot.persona import load_card, save_card
from charbot.train import outputs, recipe
from charbot.train.config import TrainConfig
from charbot.dataset import load_prepared
from charbot.models import resolve_base
from charbot.rendering import Renderer
from charbot.train.data import build_dataset
from charbot.train.progress import CountingCollator, RichProgress, TokenRate

FINAL_FILES = ("README.md", "metrics.json", "loss.png", "persona.json", "training_config.json")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    log_history: list[dict]
    written: bool = True  # False in the other processes of a distributed run: only the main one writes
    rank: int = 0


def load_base(base: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except OSError as exc:
        raise ModelError(f"could not load base model '{base}': {str(exc).splitlines()[0]}", "pass a local directory, or a hub id while the hub is reachable") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def make_collator(tokenizer, batching: str, max_length: int):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "packed":
        # One row per batch, examples back to back; position_ids restart at each example and transformers
        # turns that into a block-diagonal causal mask, so no token attends across examples.
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    padding = "max_length" if batching == "padded" else True
    return DataCollatorForSeq2Seq(tokenizer, padding=padding, max_length=max_length if batching == "padded" else None, label_pad_token_id=-100)


def prepare_for_training(model) -> None:
    """No KV cache while training: transformers only builds the block-diagonal mask for packed examples when
    no cache object exists, so with the cache on, packed examples would attend to each other."""
    model.config.use_cache = False


def add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def half_pass(cfg: TrainConfig, examples: int) -> int:
    """Optimizer steps in half a pass over `examples`, over every data-parallel process: early stopping's interval."""
    per_step = cfg.batch_size * cfg.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, math.ceil(math.ceil(examples / per_step) / 2))


def training_arguments(cfg: TrainConfig, checkpoints: Path, has_val: bool, epochs: float, stop_every: int | None = None):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    # Launched as several processes on CPUs (`accelerate launch --multi_gpu --num_processes N` or torchrun):
    # without use_cpu the Trainer sees no device to spread over and every process trains alone, all of them
    # then writing the output; with it, accelerate joins them in one DDP run over gloo.
    cpu_ddp = not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # early stopping (stopping.py) scores val and checkpoints at the same steps
    early = dict(eval_strategy="steps", eval_steps=stop_every, save_steps=stop_every) if stop_every else {}
    return TrainingArguments(
        **({"use_cpu": True, "ddp_backend": "gloo"} if cpu_ddp else {}),
        **early,
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=cfg.logging_steps,
        **({} if early else dict(eval_strategy=("steps" if cfg.eval_steps > 0 else "no") if has_val else "no",
                                 eval_steps=cfg.eval_steps if cfg.eval_steps > 0 else None, save_steps=cfg.save_steps)),
        save_strategy="steps",
        save_total_limit=cfg.save_total_limit,
        train_sampling_strategy="group_by_length" if cfg.batching == "bucketed" else "random",
        **({"activation_checkpointing": True} if cfg.gradient_checkpointing else {}),
        dataloader_pin_memory=cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,  # the rich bar replaces it
        remove_unused_columns=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def check_output_dir(cfg: TrainConfig, out: Path) -> None:
    if cfg.resume:
        ckpts = out / "checkpoints"
        if not ckpts.is_dir() or not any(ckpts.glob("**/checkpoint-*")):
            raise ConfigError(f"--resume: no checkpoint in {ckpts}", "start without --resume, or point -o at the earlier run's directory")
    elif (out / "config.json").exists() or (out / "checkpoints").exists():
        raise ConfigError(f"output directory {out} already holds a model or checkpoints", "pass --resume to continue it, or choose another -o / delete it")


def run_phase(trainer, checkpoints: Path, resume: bool) -> tuple[float, float]:
    """Train one phase, or with `resume` continue it from its last checkpoint: (mean training loss, seconds)."""
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    from charbot.train.stopping import end_on_kept, ended

    last = get_last_checkpoint(str(checkpoints)) if resume and checkpoints.is_dir() else None
    state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json")) if last else None
    if state is not None and ended(state):
        # the phase had ended before the crash; Trainer.train would take one step more (or, stopped on val, go on)
        trainer._load_from_checkpoint(last)
        trainer.state = state
        end_on_kept(trainer)
        logged = [h["loss"] for h in state.log_history if "loss" in h]
        return (sum(logged) / len(logged) if logged else float("nan")), 0.0
    result = trainer.train(resume_from_checkpoint=last)
    end_on_kept(trainer)
    return result.training_loss, result.metrics.get("train_runtime", 0.0)


def training_phases(cfg: TrainConfig, train_ex: list, character: str) -> list[tuple[str, list, float]]:
    """What is trained, in order: every example at once or, with --cast-first, the other speakers' examples
    and then the character's own, so that the last thing the model learns is the character's voice."""
    if not cfg.cast_first:
        return [("all", train_ex, cfg.epochs)]
    cast = [ex for ex in train_ex if ex.speaker and ex.speaker != character]
    own = [ex for ex in train_ex if not ex.speaker or ex.speaker == character]
    if not cast:
        raise ConfigError(f"--cast-first: {cfg.data}/train.jsonl has only {character}'s examples", "prepare the data with --cast N (other speakers' examples), or drop --cast-first")
    return [("cast", cast, cfg.epochs), ("character", own, cfg.character_epochs or cfg.epochs)]


def train(cfg: TrainConfig) -> TrainResult:
    import torch
    from transformers import Trainer, set_seed

    from charbot.train.stopping import StopOnVal, stopped

    cfg.validate()
    out = Path(cfg.output_dir).expanduser()
    check_output_dir(cfg, out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)

    # 1. data and base model
    train_ex, val_ex, persona_path = load_prepared(cfg.data)
    card = load_card(persona_path) if persona_path else None  # a bad card fails now, not after training
    character = train_ex[0].speaker or (card.name if card else "the character")
    cfg, chosen = recipe.choose(cfg, train_ex, character)
    phases = training_phases(cfg, train_ex, character)
    base = resolve_base(cfg.base_model)
    model, tokenizer = load_base(base)
    renderer = Renderer.for_tokenizer(tokenizer, cfg.prompt_format)
    # validation scores each held-out line once, as `charbot eval` does, whatever the training loss covers
    val_ds = build_dataset(tokenizer, renderer, val_ex, cfg.max_length, cfg.no_system, last_only=True, name_replies=cfg.name_replies) if val_ex else None

    # 2. what gets trained
    prepare_for_training(model)
    if cfg.method == "lora":
        model = add_lora(model, cfg)

    # 3. the trainer, once per phase, each phase continuing from the weights the last one left
    counter = CountingCollator(make_collator(tokenizer, cfg.batching, cfg.max_length))
    rate = TokenRate(counter)  # shared: useful tokens/s over every phase
    metrics: dict = {"train_examples": len(train_ex), "val_examples": len(val_ds) if val_ds is not None else 0,
                     "prompt_format": renderer.fmt, "base_model": cfg.base_model or "HuggingFaceTB/SmolLM2-135M-Instruct"}
    history: list[dict] = []
    steps, runtime, loss_sum = 0, 0.0, 0.0
    phased = len(phases) > 1
    for name, examples, epochs in phases:
        train_ds = build_dataset(tokenizer, renderer, examples, cfg.max_length, cfg.no_system, last_only=cfg.loss_on == "last", name_replies=cfg.name_replies)
        checkpoints = out / "checkpoints" / (name if phased else "")
        early = bool(cfg.early_stopping and val_ds is not None)
        args = training_arguments(cfg, checkpoints, val_ds is not None, epochs, half_pass(cfg, len(train_ds)) if early else None)
        callbacks = [rate] + ([RichProgress(rate, name if phased else "train")] if cfg.progress else [])
        callbacks += [StopOnVal(cfg.patience, cfg.stop_margin)] if early else []
        trainer = Trainer(
            model=model, args=args,
            train_dataset=train_ds, eval_dataset=val_ds, data_collator=counter, callbacks=callbacks,
        )
        if cfg.progress:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # the rich bar shows loss; raw log dicts would break it up
        if val_ds is not None and not cfg.resume and not history:
            metrics["val_loss_before"] = trainer.evaluate()["eval_loss"]
            metrics["val_perplexity_before"] = math.exp(metrics["val_loss_before"])
            history.append({"step": 0, "eval_loss": metrics["val_loss_before"]})
        loss, seconds = run_phase(trainer, checkpoints, cfg.resume)
        # the plot runs on one step axis: later phases continue the first one's step count
        history += [{**h, "step": h["step"] + steps} for h in trainer.state.log_history if "step" in h]
        if early:
            metrics.setdefault("early_stopping", []).append(stopped(trainer.state, name))
        if phased:
            metrics.setdefault("phases", []).append({"phase": name, "examples": len(train_ds), "steps": trainer.state.global_step, "train_loss": loss})
        steps += trainer.state.global_step
        runtime += seconds
        loss_sum += loss * trainer.state.global_step
        model = trainer.model
    metrics.update(train_loss=loss_sum / steps if steps else float("nan"), train_runtime_s=runtime, steps=steps,
                   useful_tokens_per_s=round(rate.tokens_per_second, 1), useful_tokens=rate.train_tokens,
                   # epochs of the last phase: over N data-parallel processes each step covers N batches
                   epoch=round(float(trainer.state.epoch or 0.0), 4),
                   loss_curve=[[h["step"], h["loss"]] for h in history if "loss" in h])
    if val_ds is not None:
        metrics["val_loss"] = trainer.evaluate()["eval_loss"]
        metrics["val_perplexity"] = math.exp(metrics["val_loss"])
    if not trainer.is_world_process_zero():
        return TrainResult(out, metrics, history, written=False, rank=trainer.args.process_index)

    # 4. one directory charbot chat/discord can load
    if cfg.method == "lora":
        model = model.merge_and_unload()  # plain weights: no peft needed to serve it
    save_outputs(out, model, tokenizer, cfg, metrics, history, persona_path, character, chosen)
    return TrainResult(out, metrics, history)


def save_outputs(out: Path, model, tokenizer, cfg: TrainConfig, metrics: dict, history: list[dict], persona_path, character: str,
                 chosen: dict[str, str] | None = None) -> None:
    """Write everything into a hidden staging folder, then move it in: a crash never leaves half a model."""
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".saving"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    model.config.use_cache = True  # serving wants the KV cache back
    model.generation_config = outputs.generation_config(tokenizer)
    model.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    if persona_path is not None and persona_path.name == "persona.json":
        shutil.copyfile(persona_path, stage / "persona.json")
    elif persona_path is not None:  # a PNG or CHARX card: serving finds persona.json beside the model
        save_card(load_card(persona_path), stage / "persona.json")
    config = cfg.to_dict()
    config["chosen_from_data"] = chosen or {}  # the settings nobody gave, and why each was chosen (recipe.py)
    (stage / "training_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    outputs.write_metrics(stage / "metrics.json", metrics)
    outputs.plot_losses(history, stage / "loss.png", f"{character}: fine-tuning {metrics['base_model']}")
    (stage / "README.md").write_text(outputs.model_card(character, str(metrics["base_model"]), config, metrics), encoding="utf-8")
    for item in stage.iterdir():
        item.replace(out / item.name)
    stage.rmdir()
