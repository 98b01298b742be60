"""Runnable examples: ``python examples/<name>.py`` or ``python -m examples.<name>``."""
