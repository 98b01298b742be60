"""The tasks of the LR-robustness benchmark (``python -m benchmarks.quality``).

Every task ships offline and is loaded by real code:

* ``digits_ce``   scikit-learn's bundled 8x8 digits (``load_digits``), the demo's 3-layer ReLU MLP
                  without normalisation layers (``benchmarks.demo.make_model``), cross-entropy,
                  mini-batches of 64.
* ``digits_mse``  the same data and MLP, mean squared error on one-hot targets (summed over the 10
                  classes, averaged over samples), full batch: the regime in which Kalra &
                  Barkeshli (2024) find warm-up matters most (large pre-conditioned sharpness at
                  initialisation).
* ``lm_post_ln``  character-level language model on the English text of Python's own
                  ``pydoc_data.topics`` (the ``topics`` dict values joined), a small post-LN
                  Transformer (``nn.TransformerEncoderLayer(norm_first=False)``, causal mask): the
                  warm-up-sensitive layout (Xiong et al. 2020).
* ``lm_pre_ln``   the same model as a standard pre-LN Transformer with a final LayerNorm: the
                  control.
* ``gru_rmsprop`` a small GRU character model on the same text, trained with RMSprop (whose first
                  update is ~10x ``lr``: ``square_avg`` is not bias-corrected).

Held-out tasks (``split="heldout"``): fixed before any method was run on them, and never used to
choose a constant, a default or a design; results on them are reported separately.

* ``digits_cnn``         the digits images through a small CNN (two 3x3 convolutions, max-pool,
                         linear head), cross-entropy, mini-batches of 32, Adam.
* ``cancer_mlp``         scikit-learn's bundled breast-cancer table (``load_breast_cancer``),
                         standardised, an MLP 30-64-64-2, AdamW (weight decay 0.01, beta2 0.99).
* ``digits_ae``          an autoencoder 64-128-16-128-64 on the digits images (sigmoid output,
                         summed squared error), mini-batches of 64, Adam.
* ``code_tf_b95``        a character-level pre-LN Transformer on Python source code from this
                         interpreter's standard library (``difflib``, ``dataclasses``,
                         ``textwrap``, ``pprint``), AdamW with weight decay 0.1, beta2 0.95.
* ``code_tf_b999``       the same at beta2 0.999.
* ``code_lstm_rmsprop``  a character LSTM on other standard-library source (``typing``,
                         ``inspect``), RMSprop.

Fresh held-out tasks (``split="fresh"``): added when the default policy changed from the ramp
(a running maximum) to the watched cap, and fixed -- data, model, optimizer, schedule, grid,
steps, seeds -- before any method was run on them. The choice between the two designs was made
on the tuning tasks and the demo, after the held-out results above had been seen for both; these
tasks are the check that was not. Two of them keep the learning rate constant (no decay), the
regime of the demo:

* ``wine_mlp_const``     scikit-learn's bundled wine table (``load_wine``, 178 x 13), standardised,
                         an MLP 13-64-64-3, cross-entropy, full batch, constant lr (Adam).
* ``diabetes_mlp``       scikit-learn's bundled diabetes regression (``load_diabetes``, 442 x 10),
                         inputs and target standardised, an MLP 10-64-64-1, squared error,
                         mini-batches of 32, cosine decay (Adam).
* ``code_tf_const``      a character-level pre-LN Transformer on standard-library source not used
                         elsewhere (``argparse``, ``calendar``, ``csv``), constant lr (AdamW,
                         weight decay 0.1, beta2 0.98).

A *problem* (built once per worker process and cached) knows how to make the model for a seed,
the batch plan for a seed (drawn up front from its own generator, so every method sees the same
batches in the same order) and how to evaluate the training and validation loss on fixed data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskSpec", "TASKS", "task_specs", "get_problem", "param_kinds"]


@dataclass(frozen=True)
class TaskSpec:
    """Settings of one task in one mode (``full``, ``quick`` or ``tiny``).

    Attributes:
        name: key in :data:`TASKS`.
        title: one line for tables and plots.
        optimizer: ``"adam"``, ``"adamw"`` (decoupled ``weight_decay``) or ``"rmsprop"``.
        beta2: Adam's ``betas[1]`` or RMSprop's ``alpha``.
        lrs: the learning-rate grid (half-decades).
        steps: optimizer steps per run.
        oracle_lengths: the linear warm-up lengths the hand-tuned oracle chooses from.
        size: model and batch sizes, passed to the problem.
        split: ``"tuning"`` (constants and designs may be chosen on it) or ``"heldout"``
            (never looked at before a design is frozen; see the module docstring).
        weight_decay: AdamW's decoupled weight decay (``optimizer="adamw"`` only).
        schedule: ``"cosine"`` (the shared decay) or ``"constant"`` (none: the lr as given,
            times each method's warm-up).
    """

    name: str
    title: str
    optimizer: str
    beta2: float
    lrs: tuple[float, ...]
    steps: int
    oracle_lengths: tuple[int, ...]
    size: dict[str, int] = field(default_factory=dict)
    split: str = "tuning"
    weight_decay: float = 0.0
    schedule: str = "cosine"

    @property
    def problem_key(self) -> tuple[Any, ...]:
        return (self.name, tuple(sorted(self.size.items())))


def _half_decades(lo_exp: float, hi_exp: float) -> tuple[float, ...]:
    """1e{lo}, 3e{lo}, ..., 1e{hi} (3 standing for 10^0.5 rounded, as usual)."""
    out = []
    e = lo_exp
    while e <= hi_exp + 1e-9:
        base = 10 ** math.floor(e + 1e-9)
        out.append(float(f"{base * (1 if abs(e - round(e)) < 1e-9 else 3):.0e}"))
        e += 0.5
    return tuple(out)


def _lm_size(tiny: bool) -> dict[str, int]:
    """The character Transformers' sizes (every Transformer task shares them)."""
    if tiny:
        return {"d_model": 16, "layers": 1, "heads": 2, "ff": 32, "ctx": 16, "batch": 4}
    return {"d_model": 64, "layers": 2, "heads": 4, "ff": 256, "ctx": 32, "batch": 16}


def task_specs(mode: str) -> list[TaskSpec]:
    """The tasks with their grids and lengths for ``mode`` (``full``, ``quick`` or ``tiny``).

    The full grids were extended upward until Adam without warm-up clearly fails on each task
    (see the benchmark's output); ``quick`` keeps the grid on fewer steps and one seed;
    ``tiny`` is a smoke test.
    """
    if mode not in ("full", "quick", "tiny"):
        raise ValueError(f"Invalid mode: {mode!r}")
    tiny = mode == "tiny"
    quick = mode == "quick"

    def steps(full: int) -> int:
        return 8 if tiny else (full // 2 if quick else full)

    def lengths(n: int) -> tuple[int, ...]:
        return (2, 4) if tiny else (max(2, n // 20), max(2, n // 5), max(2, n // 2))

    def grid(lo: float, hi: float) -> tuple[float, ...]:
        g = _half_decades(lo, hi)
        return (g[len(g) // 2], g[-1]) if tiny else g

    mlp = {"width": 32} if tiny else {"width": 128}
    lm = _lm_size(tiny)
    gru = (
        {"embed": 8, "hidden": 16, "ctx": 16, "batch": 4}
        if tiny
        else {"embed": 32, "hidden": 128, "ctx": 32, "batch": 16}
    )
    specs = []
    n = steps(400)
    specs.append(
        TaskSpec(
            "digits_ce",
            "digits MLP, cross-entropy, batch 64 (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {**mlp, "batch": 64},
        )
    )
    n = steps(250)
    specs.append(
        TaskSpec(
            "digits_mse",
            "digits MLP, MSE on one-hot, full batch (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {**mlp, "batch": 0},
        )
    )
    n = steps(250)
    specs.append(
        TaskSpec(
            "lm_post_ln",
            "char LM, post-LN Transformer (Adam)",
            "adam",
            0.99,
            grid(-2.5, -1),
            n,
            lengths(n),
            {**lm, "arch": 0},
        )
    )
    n = steps(250)
    specs.append(
        TaskSpec(
            "lm_pre_ln",
            "char LM, pre-LN Transformer + final LN, control (Adam)",
            "adam",
            0.99,
            grid(-2.5, -1),
            n,
            lengths(n),
            {**lm, "arch": 1},
        )
    )
    n = steps(250)
    specs.append(
        TaskSpec(
            "gru_rmsprop",
            "char LM, GRU (RMSprop)",
            "rmsprop",
            0.99,
            grid(-2.5, -1),
            n,
            lengths(n),
            gru,
        )
    )
    specs += _heldout_specs(steps, lengths, grid, tiny)
    specs += _fresh_specs(steps, lengths, grid, tiny)
    return specs


def _fresh_specs(
    steps: Callable[[int], int],
    lengths: Callable[[int], tuple[int, ...]],
    grid: Callable[[float, float], tuple[float, ...]],
    tiny: bool,
) -> list[TaskSpec]:
    """The fresh held-out tasks (see the module docstring): fixed before their first run."""
    n = steps(300)
    out = [
        TaskSpec(
            "wine_mlp_const",
            "wine MLP 13-64-64-3, cross-entropy, full batch, constant lr (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {"width": 16 if tiny else 64},
            split="fresh",
            schedule="constant",
        ),
        TaskSpec(
            "diabetes_mlp",
            "diabetes regression MLP 10-64-64-1, MSE, batch 32 (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {"width": 16 if tiny else 64, "batch": 32},
            split="fresh",
        ),
    ]
    lm = _lm_size(tiny)
    n = steps(250)
    out.append(
        TaskSpec(
            "code_tf_const",
            "char LM on Python source, pre-LN Transformer, constant lr (AdamW wd 0.1, beta2 0.98)",
            "adamw",
            0.98,
            grid(-3, -1),
            n,
            lengths(n),
            {**lm, "arch": 1},
            split="fresh",
            weight_decay=0.1,
            schedule="constant",
        )
    )
    return out


def _heldout_specs(
    steps: Callable[[int], int],
    lengths: Callable[[int], tuple[int, ...]],
    grid: Callable[[float, float], tuple[float, ...]],
    tiny: bool,
) -> list[TaskSpec]:
    """The held-out tasks: fixed (data, model, optimizer, grid, steps) before any result on them
    was seen, and never used to choose anything."""
    lm = _lm_size(tiny)
    out = []
    n = steps(300)
    out.append(
        TaskSpec(
            "digits_cnn",
            "digits CNN (2 conv + linear), cross-entropy, batch 32 (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {"channels": 4 if tiny else 8, "batch": 32},
            split="heldout",
        )
    )
    n = steps(200)
    out.append(
        TaskSpec(
            "cancer_mlp",
            "breast-cancer MLP, cross-entropy, batch 32 (AdamW wd 0.01, beta2 0.99)",
            "adamw",
            0.99,
            grid(-3, -0.5),
            n,
            lengths(n),
            {"width": 16 if tiny else 64, "batch": 32},
            split="heldout",
            weight_decay=0.01,
        )
    )
    n = steps(300)
    out.append(
        TaskSpec(
            "digits_ae",
            "digits autoencoder 64-128-16-128-64, MSE, batch 64 (Adam)",
            "adam",
            0.999,
            grid(-3, -0.5),
            n,
            lengths(n),
            {"width": 32 if tiny else 128, "code": 16, "batch": 64},
            split="heldout",
        )
    )
    for beta2, tag in ((0.95, "b95"), (0.999, "b999")):
        n = steps(250)
        out.append(
            TaskSpec(
                f"code_tf_{tag}",
                f"char LM on Python source, pre-LN Transformer (AdamW wd 0.1, beta2 {beta2})",
                "adamw",
                beta2,
                grid(-3, -1),
                n,
                lengths(n),
                {**lm, "arch": 1},
                split="heldout",
                weight_decay=0.1,
            )
        )
    n = steps(250)
    out.append(
        TaskSpec(
            "code_lstm_rmsprop",
            "char LM on Python source, LSTM (RMSprop)",
            "rmsprop",
            0.99,
            grid(-3, -1),
            n,
            lengths(n),
            {"embed": 8, "hidden": 16, "ctx": 16, "batch": 4}
            if tiny
            else {"embed": 32, "hidden": 128, "ctx": 32, "batch": 16},
            split="heldout",
        )
    )
    return out


TASKS = ("digits_ce", "digits_mse", "lm_post_ln", "lm_pre_ln", "gru_rmsprop")
HELDOUT_TASKS = (
    "digits_cnn",
    "cancer_mlp",
    "digits_ae",
    "code_tf_b95",
    "code_tf_b999",
    "code_lstm_rmsprop",
)
FRESH_TASKS = ("wine_mlp_const", "diabetes_mlp", "code_tf_const")


# --------------------------------------------------------------------------- problems


class Problem:
    """What a run needs from a task: model, batches, loss and the two evaluations."""

    def make_model(self, seed: int) -> nn.Module:
        raise NotImplementedError

    def plan(self, seed: int, steps: int) -> Any:
        """The batches of a run, fixed by the seed (identical for every method)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def val_loss(self, model: nn.Module) -> float:
        raise NotImplementedError

    def extra(self, model: nn.Module) -> dict[str, float]:
        return {}

    def kinds(self, model: nn.Module) -> dict[str, str]:
        """Kind of each parameter tensor, for the warm-up length report (:func:`param_kinds`)."""
        return param_kinds(model)

    def constant_loss(self) -> float:
        """Training loss of the best constant predictor (marginals only) on the evaluation data."""
        raise NotImplementedError


def _entropy(labels: torch.Tensor, classes: int) -> float:
    p = torch.bincount(labels.reshape(-1), minlength=classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


class DigitsProblem(Problem):
    """Digits with the demo's split and MLP; ``batch=0`` means full batch."""

    def __init__(self, loss: str, width: int, batch: int) -> None:
        from .demo import load_data

        self.data = load_data()
        self.kind, self.width, self.batch = loss, width, batch

    def make_model(self, seed: int) -> nn.Module:
        from .demo import make_model

        return make_model(seed, self.width)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return F.cross_entropy(out, y)
        target = F.one_hot(y, 10).to(out.dtype)
        return (out - target).square().sum(1).mean()

    def plan(self, seed: int, steps: int) -> Any:
        if self.batch == 0:
            return None
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randint(0, len(self.data.x_train), (steps, self.batch), generator=gen)

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        if plan is None:
            return self._loss(model(self.data.x_train), self.data.y_train)
        idx = plan[step]
        return self._loss(model(self.data.x_train[idx]), self.data.y_train[idx])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(self._loss(model(self.data.x_train), self.data.y_train))

    @torch.no_grad()
    def val_loss(self, model: nn.Module) -> float:
        return float(self._loss(model(self.data.x_val), self.data.y_val))

    def kinds(self, model: nn.Module) -> dict[str, str]:
        # The first layer sees the raw pixels: border pixels are always 0 and many others mostly
        # 0, so its gradient has sparse columns -- the embedding-like tensor of this network.
        return {**param_kinds(model), "0.weight": "input"}

    def constant_loss(self) -> float:
        if self.kind == "ce":
            return _entropy(self.data.y_train, 10)
        p = torch.bincount(self.data.y_train, minlength=10).double() / len(self.data.y_train)
        return float(1.0 - (p * p).sum())  # E sum_c (1[y=c] - p_c)^2 at the optimum, predicting p

    @torch.no_grad()
    def extra(self, model: nn.Module) -> dict[str, float]:
        acc = (model(self.data.x_val).argmax(1) == self.data.y_val).float().mean()
        return {"val_acc": float(acc)}


def load_text() -> str:
    """The English text of Python's own help topics (ships with CPython, no download)."""
    import pydoc_data.topics

    return "".join(pydoc_data.topics.topics.values())


class Block(nn.Module):
    """One Transformer block: causal multi-head self-attention and a GELU MLP (4x is not needed).

    ``pre_ln=False`` is the original post-LN block, ``x = LN(x + f(x))`` (Vaswani et al.),
    ``pre_ln=True`` the GPT-2 block, ``x = x + f(LN(x))``.
    """

    def __init__(self, d_model: int, heads: int, ff: int, pre_ln: bool) -> None:
        super().__init__()
        self.heads, self.pre_ln = heads, pre_ln
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, ff), nn.Linear(ff, d_model)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attend(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attend(x))
        return self.ln2(x + self.mlp(x))


class CharTransformer(nn.Module):
    """Token + position embeddings, ``layers`` causal blocks, an optional final LayerNorm, a head.

    torch's default initialisation (embeddings N(0, 1), linear layers U(+-1/sqrt(fan_in))).
    """

    def __init__(
        self,
        vocab: int,
        d_model: int,
        layers: int,
        heads: int,
        ff: int,
        ctx: int,
        pre_ln: bool,
        final_norm: bool,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, ff, pre_ln) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


class CharGRU(nn.Module):
    """Embedding, one GRU layer, a linear head."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.tok(idx))
        return self.head(out)


class CharProblem(Problem):
    """Next-character prediction on the help-topics text: first 90 % train, last 10 % validation."""

    EVAL_BATCHES = 8

    def __init__(
        self, factory: Callable[[int], nn.Module], ctx: int, batch: int, text: str | None = None
    ) -> None:
        text = load_text() if text is None else text
        self.chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        cut = int(0.9 * len(data))
        self.train_data, self.val_data = data[:cut], data[cut:]
        self.factory, self.ctx, self.batch = factory, ctx, batch
        # Fixed evaluation windows (their own generators: independent of the training seed).
        self.train_eval = self._windows(self.train_data, 7, self.EVAL_BATCHES * batch)
        self.val_eval = self._windows(self.val_data, 8, self.EVAL_BATCHES * batch)

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def _windows(self, data: torch.Tensor, seed: int, n: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(data) - self.ctx - 1, (n,), generator=gen)
        return torch.stack([data[s : s + self.ctx + 1] for s in starts.tolist()])

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return self.factory(self.vocab)

    def plan(self, seed: int, steps: int) -> Any:
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randint(
            0, len(self.train_data) - self.ctx - 1, (steps, self.batch), generator=gen
        )

    def _loss(self, model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
        logits = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        offs = plan[step].unsqueeze(1) + torch.arange(self.ctx + 1)
        return self._loss(model, self.train_data[offs])

    @torch.no_grad()
    def _eval(self, model: nn.Module, windows: torch.Tensor) -> float:
        parts = [float(self._loss(model, w)) for w in windows.split(4 * self.batch)]
        return sum(parts) / len(parts)

    def train_loss(self, model: nn.Module) -> float:
        return self._eval(model, self.train_eval)

    def val_loss(self, model: nn.Module) -> float:
        return self._eval(model, self.val_eval)

    def constant_loss(self) -> float:
        return _entropy(self.train_eval[:, 1:], self.vocab)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (ReLU), a 2x2 max-pool and a linear head on the 8x8 digit images."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.head = nn.Linear(2 * channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


class DigitsCNNProblem(DigitsProblem):
    """Digits with the demo's split, the small CNN above, cross-entropy, mini-batches."""

    def __init__(self, channels: int, batch: int) -> None:
        super().__init__("ce", 0, batch)
        self.channels = channels

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return DigitsCNN(self.channels)

    def kinds(self, model: nn.Module) -> dict[str, str]:
        return param_kinds(model)


class CancerProblem(Problem):
    """scikit-learn's bundled breast-cancer data (569 x 30), standardised on the training split
    (80/20, fixed permutation); an MLP 30-w-w-2 with ReLU, cross-entropy, mini-batches."""

    def __init__(self, width: int, batch: int) -> None:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(x))
        tr, va = perm[:cut], perm[cut:]
        mu, sd = x[tr].mean(0), x[tr].std(0)
        self.x_train, self.y_train = (x[tr] - mu) / sd, y[tr]
        self.x_val, self.y_val = (x[va] - mu) / sd, y[va]
        self.width, self.batch = width, batch

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        w = self.width
        return nn.Sequential(
            nn.Linear(30, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2)
        )

    def plan(self, seed: int, steps: int) -> Any:
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randint(0, len(self.x_train), (steps, self.batch), generator=gen)

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        idx = plan[step]
        return F.cross_entropy(model(self.x_train[idx]), self.y_train[idx])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(F.cross_entropy(model(self.x_train), self.y_train))

    @torch.no_grad()
    def val_loss(self, model: nn.Module) -> float:
        return float(F.cross_entropy(model(self.x_val), self.y_val))

    @torch.no_grad()
    def extra(self, model: nn.Module) -> dict[str, float]:
        acc = (model(self.x_val).argmax(1) == self.y_val).float().mean()
        return {"val_acc": float(acc)}

    def constant_loss(self) -> float:
        return _entropy(self.y_train, 2)


class TableProblem(Problem):
    """A bundled scikit-learn table, standardised on the training split (80/20, fixed
    permutation), through an MLP d-w-w-k with ReLU: cross-entropy for a classification table,
    squared error on a standardised target for a regression one; ``batch=0`` means full batch."""

    def __init__(self, name: str, width: int, batch: int) -> None:
        from sklearn import datasets

        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        self.regression = name == "diabetes"
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(x))
        tr, va = perm[:cut], perm[cut:]
        mu, sd = x[tr].mean(0), x[tr].std(0)
        self.x_train, self.x_val = (x[tr] - mu) / sd, (x[va] - mu) / sd
        if self.regression:
            t = torch.tensor(y, dtype=torch.float32)
            t = (t - t[tr].mean()) / t[tr].std()
            self.y_train, self.y_val = t[tr], t[va]
            self.classes = 1
        else:
            labels = torch.tensor(y, dtype=torch.long)
            self.y_train, self.y_val = labels[tr], labels[va]
            self.classes = int(labels.max()) + 1
        self.width, self.batch = width, batch

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        w, d = self.width, self.x_train.shape[1]
        return nn.Sequential(
            nn.Linear(d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, self.classes)
        )

    def plan(self, seed: int, steps: int) -> Any:
        if not self.batch:
            return None
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randint(0, len(self.x_train), (steps, self.batch), generator=gen)

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(model(x).squeeze(1), y)
        return F.cross_entropy(model(x), y)

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        if plan is None:
            return self._loss(model, self.x_train, self.y_train)
        idx = plan[step]
        return self._loss(model, self.x_train[idx], self.y_train[idx])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(self._loss(model, self.x_train, self.y_train))

    @torch.no_grad()
    def val_loss(self, model: nn.Module) -> float:
        return float(self._loss(model, self.x_val, self.y_val))

    @torch.no_grad()
    def extra(self, model: nn.Module) -> dict[str, float]:
        if self.regression:
            return {}
        acc = (model(self.x_val).argmax(1) == self.y_val).float().mean()
        return {"val_acc": float(acc)}

    def constant_loss(self) -> float:
        if self.regression:  # the training mean predicts a standardised target with MSE 1
            return float(self.y_train.var(unbiased=False))
        return _entropy(self.y_train, self.classes)


class AutoencoderProblem(Problem):
    """Digits images (the demo's split) through 64-w-code-w-64 with ReLU and a sigmoid output;
    squared reconstruction error summed over the 64 pixels, averaged over images."""

    def __init__(self, width: int, code: int, batch: int) -> None:
        from .demo import load_data

        data = load_data()
        self.x_train, self.x_val = data.x_train, data.x_val
        self.width, self.code, self.batch = width, code, batch

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        w, c = self.width, self.code
        return nn.Sequential(
            nn.Linear(64, w), nn.ReLU(), nn.Linear(w, c), nn.ReLU(),
            nn.Linear(c, w), nn.ReLU(), nn.Linear(w, 64), nn.Sigmoid(),
        )  # fmt: skip

    @staticmethod
    def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (model(x) - x).square().sum(1).mean()

    def plan(self, seed: int, steps: int) -> Any:
        gen = torch.Generator().manual_seed(1000 + seed)
        return torch.randint(0, len(self.x_train), (steps, self.batch), generator=gen)

    def loss(self, model: nn.Module, plan: Any, step: int) -> torch.Tensor:
        return self._loss(model, self.x_train[plan[step]])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(self._loss(model, self.x_train))

    @torch.no_grad()
    def val_loss(self, model: nn.Module) -> float:
        return float(self._loss(model, self.x_val))

    def constant_loss(self) -> float:
        # the best constant reconstruction is the mean training image
        return float((self.x_train - self.x_train.mean(0)).square().sum(1).mean())


def load_code() -> tuple[str, str]:
    """Two corpora of Python source code from this interpreter's standard library (no download):
    one for the held-out Transformers, a disjoint one for the held-out LSTM."""
    import dataclasses
    import difflib
    import inspect
    import pprint
    import textwrap
    import typing

    def read(*mods: Any) -> str:
        parts = []
        for m in mods:
            with open(m.__file__, encoding="utf-8") as f:
                parts.append(f.read())
        return "\n".join(parts)

    return read(difflib, dataclasses, textwrap, pprint), read(typing, inspect)


def load_fresh_code() -> str:
    """Standard-library source used by no other task (for ``code_tf_const``)."""
    import argparse
    import calendar
    import csv

    parts = []
    for m in (argparse, calendar, csv):
        with open(m.__file__, encoding="utf-8") as f:  # type: ignore[arg-type]
            parts.append(f.read())
    return "\n".join(parts)


class CharLSTM(nn.Module):
    """Embedding, one LSTM layer, a linear head."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.tok(idx))
        return self.head(out)


_CACHE: dict[tuple[Any, ...], Problem] = {}


def get_problem(spec: TaskSpec) -> Problem:
    """The task's problem, built once per process (data loading is the slow part)."""
    key = spec.problem_key
    if key not in _CACHE:
        s = spec.size
        if spec.name in ("digits_ce", "digits_mse"):
            prob: Problem = DigitsProblem(
                "ce" if spec.name == "digits_ce" else "mse", s["width"], s["batch"]
            )
        elif spec.name in ("lm_post_ln", "lm_pre_ln"):
            # arch: 0 = post-LN, 1 = pre-LN + final LN, 2 = pre-LN without the final LN.
            pre, final = s["arch"] >= 1, s["arch"] == 1

            def factory(
                vocab: int, s: dict[str, int] = s, pre: bool = pre, final: bool = final
            ) -> nn.Module:
                return CharTransformer(
                    vocab,
                    s["d_model"],
                    s["layers"],
                    s["heads"],
                    s["ff"],
                    s["ctx"],
                    pre_ln=pre,
                    final_norm=final,
                )

            prob = CharProblem(factory, s["ctx"], s["batch"])
        elif spec.name == "gru_rmsprop":

            def factory(vocab: int, s: dict[str, int] = s) -> nn.Module:
                return CharGRU(vocab, s["embed"], s["hidden"])

            prob = CharProblem(factory, s["ctx"], s["batch"])
        elif spec.name == "digits_cnn":
            prob = DigitsCNNProblem(s["channels"], s["batch"])
        elif spec.name == "cancer_mlp":
            prob = CancerProblem(s["width"], s["batch"])
        elif spec.name == "digits_ae":
            prob = AutoencoderProblem(s["width"], s["code"], s["batch"])
        elif spec.name.startswith("code_tf_"):

            def factory(vocab: int, s: dict[str, int] = s) -> nn.Module:
                return CharTransformer(
                    vocab, s["d_model"], s["layers"], s["heads"], s["ff"], s["ctx"],
                    pre_ln=True, final_norm=True,
                )  # fmt: skip

            # the fresh task's own corpus; the held-out ones share the other
            text = load_fresh_code() if spec.name == "code_tf_const" else load_code()[0]
            prob = CharProblem(factory, s["ctx"], s["batch"], text=text)
        elif spec.name == "wine_mlp_const":
            prob = TableProblem("wine", s["width"], 0)
        elif spec.name == "diabetes_mlp":
            prob = TableProblem("diabetes", s["width"], s["batch"])
        elif spec.name == "code_lstm_rmsprop":

            def factory(vocab: int, s: dict[str, int] = s) -> nn.Module:
                return CharLSTM(vocab, s["embed"], s["hidden"])

            prob = CharProblem(factory, s["ctx"], s["batch"], text=load_code()[1])
        else:
            raise ValueError(f"unknown task {spec.name!r}")
        _CACHE[key] = prob
    return _CACHE[key]


def param_kinds(model: nn.Module) -> dict[str, str]:
    """``embedding`` (token embeddings: sparse row gradients), ``position`` (position
    embeddings: dense), ``matrix`` (other weights, >= 2-D) or ``vector`` (biases, norms)."""
    kinds: dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            kind = "position" if mod_name.endswith("pos") else "embedding"
            kinds[f"{mod_name}.weight" if mod_name else "weight"] = kind
    for name, p in model.named_parameters():
        if name not in kinds:
            kinds[name] = "matrix" if p.dim() >= 2 else "vector"
    return kinds
