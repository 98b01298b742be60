"""PyTorch Lightning: ``configure_optimizers`` returns a warmopt optimizer and an LR scheduler.

Trains a small MLP on scikit-learn's bundled digits (no download) on the CPU. Nothing about the
Trainer changes: Lightning calls ``optimizer.step(closure)`` and steps the scheduler, warmopt
scales the update inside the step and leaves ``param_groups[i]['lr']`` to the scheduler. The
warm-up summary is logged with ``self.log_dict`` after every optimizer step (device tensors, so
logging adds no host sync of its own; with ``logger=False`` the values still land in
``trainer.callback_metrics``).

    pip install lightning && python examples/lightning_example.py
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import warmopt


class DigitsClassifier(L.LightningModule):
    def __init__(self, lr: float = 3e-3, total_steps: int = 200) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))
        # self.optimizers() is Lightning's wrapper; .optimizer is the warmopt optimizer
        summary = warmopt.warmup_summary(self.optimizers().optimizer)
        keys = ("scale_median", "fraction_warmed", "group0/lr_effective")
        self.log_dict({f"warmup/{k}": summary[k] for k in keys})

    def configure_optimizers(self) -> Any:
        opt = warmopt.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        # no warm-up phase in the schedule: warmopt does the warm-up (don't warm twice)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self.hparams.total_steps, eta_min=self.hparams.lr / 10
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(steps: int = 200, seed: int = 0) -> dict[str, Any]:
    """Fit for ``steps`` steps; return the losses, module, trainer, optimizer and scheduler."""
    L.seed_everything(seed, verbose=False)
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    loader = DataLoader(data, batch_size=64, shuffle=True)
    module = DigitsClassifier(total_steps=steps)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    opt = trainer.optimizers[0]
    sched = trainer.lr_scheduler_configs[0].scheduler
    metrics = trainer.callback_metrics
    print(
        f"{trainer.global_step} steps: loss {module.losses[0]:.3f} -> {module.losses[-1]:.3f}, "
        f"warm-up scale median {float(metrics['warmup/scale_median']):.3f}, "
        f"lr {opt.param_groups[0]['lr']:.2e} (the scheduler's)"
    )
    return {
        "losses": module.losses,
        "module": module,
        "trainer": trainer,
        "optimizer": opt,
        "scheduler": sched,
    }


if __name__ == "__main__":
    main()
