"""Hugging Face ``transformers.Trainer`` with ``optimizers=(warmopt optimizer, scheduler)``.

A tiny BERT classifier built from a config (random weights, no download) learns a toy task on
random tokens (the label says whether the first token is in the lower half of the vocabulary),
on the CPU. Pass the optimizer and scheduler yourself; the Trainer steps both (clipping first,
as usual). Use a schedule **without** a warm-up phase (``num_warmup_steps=0``): warmopt warms up
inside ``step()``, and keeping both would multiply the two ramps. A :class:`WarmupCallback`
records :func:`warmopt.warmup_summary` after every step (and writes it to TensorBoard with
:func:`warmopt.log_warmup` when given a ``SummaryWriter``).

    pip install transformers accelerate && python examples/hf_trainer.py
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_scheduler,
)

import warmopt


class RandomTokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``n`` random sequences; label 1 where the first token is below ``vocab_size // 2``."""

    def __init__(self, n: int = 512, length: int = 16, vocab_size: int = 100, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, vocab_size, (n, length), generator=gen)
        self.labels = (self.input_ids[:, 0] < vocab_size // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


class WarmupCallback(TrainerCallback):
    """Keeps the warm-up summary of every step (plain floats) and optionally logs it."""

    def __init__(self, writer: Any = None) -> None:
        self.writer = writer
        self.history: list[dict[str, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        opt = kwargs["optimizer"]
        opt = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps it
        if self.writer is not None:
            warmopt.log_warmup(self.writer, opt, state.global_step)
        summary = warmopt.warmup_summary(opt)  # device tensors; float() syncs, fine here
        self.history.append({k: float(v) for k, v in summary.items()})


def main(steps: int = 60, output_dir: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Train for ``steps`` steps; return the losses, trainer, optimizer, scheduler, callback."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    opt = warmopt.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = get_scheduler(
        "cosine_with_min_lr",
        opt,
        num_warmup_steps=0,  # warmopt warms up: no second ramp
        num_training_steps=steps,
        scheduler_specific_kwargs={"min_lr_rate": 0.1},
    )
    callback = WarmupCallback()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=output_dir or tmp,
            max_steps=steps,
            per_device_train_batch_size=32,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=seed,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=RandomTokens(seed=seed),
            optimizers=(opt, sched),
            callbacks=[callback],
        )
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    last = callback.history[-1]
    print(
        f"{trainer.state.global_step} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"warm-up scale median {last['scale_median']:.3f}, "
        f"lr {opt.param_groups[0]['lr']:.2e} (the scheduler's)"
    )
    return {
        "losses": losses,
        "trainer": trainer,
        "optimizer": opt,
        "scheduler": sched,
        "callback": callback,
    }


if __name__ == "__main__":
    main()
