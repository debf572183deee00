"""Fine-tuning in a training run: the run's freezing policy, pretrained weights, gradual unfreezing.

:func:`prepare_model` is the training pipeline's hook after ``create_model``: it loads
``model.pretrained``, applies ``train.freeze`` (:mod:`medsight.models.freezing` says what each
policy freezes) and returns the callbacks the loop runs. ``train.unfreeze_every = N`` unfreezes
one more frozen unit, from the head backwards, after every N epochs (:class:`GradualUnfreeze`).

Example:
    >>> callbacks = setup_finetuning(model, TrainConfig(freeze="backbone", unfreeze_every=2))
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medsight.config import RunConfig, TrainConfig
from medsight.errors import ConfigError
from medsight.models.freezing import frozen_units, set_frozen
from medsight.runtime.distributed import world_size
from medsight.training.callbacks import Callback


def setup_finetuning(model: nn.Module, cfg: TrainConfig, *, epochs_done: int = 0) -> list[Callback]:
    """Apply ``cfg.freeze`` to ``model``; return the callbacks the trainer runs (gradual unfreezing).

    ``epochs_done`` (a resumed run) replays the unfreezing steps of the epochs already trained.

    Raises:
        ConfigError: see :func:`~medsight.models.freezing.frozen_units`; ``unfreeze_every`` with nothing frozen.
    """
    units = frozen_units(model, cfg.freeze)
    for name in units:
        set_frozen(model, name, True)
    if not cfg.unfreeze_every:
        return []
    if not units:
        raise ConfigError("train.unfreeze_every", "gradual unfreezing needs something frozen",
                          "set train.freeze: backbone (or until:BLOCK), or unfreeze_every: 0")
    if world_size() > 1:  # DDP registers the trainable parameters once, at wrapping
        raise ConfigError("train.unfreeze_every", "gradual unfreezing is not available with several processes",
                          "train with one process, or use a fixed train.freeze with unfreeze_every: 0")
    unfreeze = GradualUnfreeze(model, units, every=cfg.unfreeze_every)
    for epoch in range(1, epochs_done + 1):
        unfreeze.on_epoch_end(epoch, {})
    return [unfreeze]


class GradualUnfreeze(Callback):
    """After every ``every`` epochs, unfreeze the frozen unit nearest the head.

    Args:
        model: the model being trained.
        units: the frozen module names in forward order (unfrozen from the last one).
        every: epochs between two unfreezing steps.
    """

    def __init__(self, model: nn.Module, units: list[str], *, every: int) -> None:
        self.model = model
        self.frozen = list(units)
        self.every = every
        self.unfrozen: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch % self.every == 0 and self.frozen:
            name = self.frozen.pop()
            set_frozen(self.model, name, False)
            self.unfrozen.append(name)


def prepare_model(model: nn.Module, cfg: RunConfig, *, out: Path, resume: bool = False) -> list[Callback]:
    """The training pipeline's hook after ``create_model``: pretrained weights, then freezing.

    Loads ``cfg.model.pretrained`` (writing what was loaded to ``out/pretrained.json``; the
    bundle keeps the trained weights, so inference never needs that file again) and applies
    the fine-tuning keys. Returns the callbacks for :func:`~medsight.classification.trainer.fit`.
    """
    if cfg.model.pretrained:
        from medsight.models.pretrained import load_pretrained

        report = load_pretrained(model, cfg.model.pretrained, layout=cfg.model.pretrained_layout,
                                 adapt_channels=cfg.model.adapt_channels)
        report.save(Path(out) / "pretrained.json")
    return setup_finetuning(model, cfg.train, epochs_done=_epochs_done(Path(out)) if resume else 0)


def _epochs_done(out: Path) -> int:
    """Epochs already trained by a run being resumed (rows of its ``metrics.csv``)."""
    csv_path = out / "metrics.csv"
    if not csv_path.is_file():
        return 0
    return max(len(csv_path.read_text().strip().splitlines()) - 1, 0)

