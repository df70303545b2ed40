"""Training recipes for the small models: the guides of weak-to-strong search and the aligners."""

from ..validation import check_range


def check_schedule(config, integers: tuple[str, ...] = ()) -> None:
    """Checks shared by the recipes' configs: the optimizer schedule, plus positive integer fields."""
    check_range("epochs", config.epochs, low=0, low_open=True)
    check_range("learning_rate", config.learning_rate, low=0, low_open=True)
    check_range("warmup_ratio", config.warmup_ratio, low=0, high=1)
    for name in ("batch_size", "save_steps", *integers):
        check_range(name, getattr(config, name), low=1, integer=True)
