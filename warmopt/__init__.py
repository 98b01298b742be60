"""warmopt: Adam, AdamW and RMSprop that warm up from their own second-moment statistics."""

from .monitor import log_warmup, warmup_summary
from .optimizer import GRANULARITIES, WarmupOptimizer
from .optimizers import Adam, AdamW, RMSprop
from .policies import (
    POLICIES,
    Constant,
    Linear,
    Measured,
    RAdamRectification,
    UntunedExponential,
    UntunedLinear,
    WarmupPolicy,
)

__version__ = "0.1.0"

__all__ = [
    "WarmupOptimizer",
    "Adam",
    "AdamW",
    "RMSprop",
    "WarmupPolicy",
    "Measured",
    "RAdamRectification",
    "UntunedLinear",
    "UntunedExponential",
    "Linear",
    "Constant",
    "POLICIES",
    "GRANULARITIES",
    "warmup_summary",
    "log_warmup",
    "__version__",
]
