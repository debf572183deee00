"""Start a model from pretrained weights in a local file, mapping keys and fixing shapes.

Files: ``.safetensors`` (read with safetensors), or a PyTorch state dict (``.pt``, ``.pth``,
``.bin``, ``.ckpt``) read with ``torch.load(path, weights_only=True, map_location="cpu")``:
the restricted loader that only rebuilds tensors and plain containers and never runs code
from the file. Unrestricted pickle is never used. A state dict nested under ``state_dict``,
``model`` or ``network`` (MONAI bundles, Lightning checkpoints) is unwrapped.

Layouts (``model.pretrained_layout``; ``auto`` guesses from the keys):

===========  =================================================================================
medsight     our own names (a bundle's or ``medsight pretrain``'s ``weights.safetensors``)
torchvision  ResNet keys are MONAI's already (``conv1``, ``bn1``, ``layer1.0.conv1``, ``fc``);
             DenseNet ``denselayerN.norm1`` -> ``denselayerN.layers.norm1``, ``classifier`` ->
             ``class_layers.out``
monai        a MONAI network's state dict, possibly ``module.``-prefixed (DataParallel)
medicalnet   MedicalNet 3D ResNets: ``module.`` stripped, the segmentation head ``conv_seg`` dropped
===========  =================================================================================

Shapes: equal shapes load. The head (the model's last ``nn.Linear``) with another shape
(another number of classes) keeps its fresh initialisation. The first convolution with
another number of input channels is adapted (``model.adapt_channels``), ``k_src`` -> ``k``:

* ``average``: every new channel gets ``sum(w_src over input channels) / k``, i.e. the mean
  kernel scaled by ``k_src / k``;
* ``repeat``: new channel ``j`` gets ``w_src[:, j % k_src] * k_src / k`` (tiled).

Both keep the response to an image whose channels are all equal, the usual case when a grey
model meets RGB data or the other way round. Any other shape difference is an error.

Example:
    >>> model = create_model("resnet18", in_channels=1, num_outputs=3, spatial_dims=2)
    >>> report = load_pretrained(model, "resnet18_imagenet.pth", layout="torchvision")
    >>> report.reinitialised, report.adapted
    (['fc.bias', 'fc.weight'], ['conv1.weight'])
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from medsight.atomic_write import atomic_write_text
from medsight.errors import ConfigError, UnreadableFileError

LAYOUTS = ("auto", "medsight", "torchvision", "monai", "medicalnet")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_NESTED = ("state_dict", "model", "network", "net")


@dataclass
class LoadReport:
    """Which tensors came from the file (all lists hold model state-dict keys, except ``unused``).

    Attributes:
        path: the weights file.
        layout: the layout used (``auto`` resolved).
        loaded: copied unchanged.
        reinitialised: head tensors kept at their fresh initialisation (other shape, or absent).
        adapted: the first convolution, adapted to another number of input channels.
        missing: non-head tensors absent from the file, left at their initialisation.
        unused: file keys (after mapping) that the model does not have.
    """

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (the run folder keeps it as ``pretrained.json``), whole or not at all."""
        path = Path(path)
        atomic_write_text(path, json.dumps(asdict(self), indent=2))
        return path

    def summary(self) -> str:
        return (f"{self.path} ({self.layout}): {len(self.loaded)} loaded, {len(self.adapted)} adapted, "
                f"{len(self.reinitialised)} re-initialised, {len(self.missing)} missing, {len(self.unused)} unused")


def load_pretrained(
    model: nn.Module, path: str | Path, *, layout: str = "auto", adapt_channels: str = "average"
) -> LoadReport:
    """Copy the weights in ``path`` into ``model`` (in place) and say what went where.

    Args:
        model: the freshly built model.
        path: ``.safetensors`` or a state-dict file (see the module docstring).
        layout: one of :data:`LAYOUTS`.
        adapt_channels: ``average`` or ``repeat`` for a first convolution with other input channels.

    Raises:
        UnreadableFileError: the file is missing or cannot be read as weights.
        ConfigError: unknown layout; a shape mismatch other than the head or the first
            convolution's input channels (naming the key and both shapes); nothing matched.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ConfigError(f"model.pretrained_layout={layout}", "unknown layout", f"use one of {', '.join(LAYOUTS)}")
    if adapt_channels not in ("average", "repeat"):
        raise ConfigError(f"model.adapt_channels={adapt_channels}", "unknown mode", "use average or repeat")
    source = read_weights(path)
    if layout == "auto":
        layout = guess_layout(source)
    source = map_keys(source, layout)
    target = model.state_dict()
    head_keys = set(_module_keys(model, head_name(model)))
    first_conv = _first(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    first_conv_key = f"{first_conv}.weight" if first_conv is not None else None
    report = LoadReport(path=str(path), layout=layout, unused=sorted(set(source) - set(target)))
    new_state: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        if key not in source:
            (report.reinitialised if key in head_keys else report.missing).append(key)
            continue
        given = source[key]
        if given.shape == value.shape:
            new_state[key] = given.to(value.dtype)
            report.loaded.append(key)
        elif key in head_keys:
            report.reinitialised.append(key)
        elif key == first_conv_key and given.ndim == value.ndim and given.shape[0] == value.shape[0] \
                and given.shape[2:] == value.shape[2:]:
            new_state[key] = adapt_first_conv(given, value.shape[1], adapt_channels).to(value.dtype)
            report.adapted.append(key)
        else:
            raise ConfigError(
                f"{path}: {key}",
                f"the file's tensor has shape {tuple(given.shape)}, the model's {tuple(value.shape)}",
                "use weights of the same architecture and model.kwargs (only the head and the first "
                "convolution's input channels may differ)",
            )
    if not report.loaded and not report.adapted:
        raise ConfigError(
            path, f"no tensor matches the model (layout {layout}; file keys like {sorted(source)[:3]}, "
            f"model keys like {sorted(target)[:3]})",
            "choose the right model.name and model.pretrained_layout",
        )
    model.load_state_dict(new_state, strict=False)
    return report


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a ``state_dict``/``model`` nesting."""
    if not path.is_file():
        raise UnreadableFileError(path, "no such weights file", "check model.pretrained")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        elif suffix in STATE_DICT_SUFFIXES:
            data = torch.load(path, weights_only=True, map_location="cpu")
        else:
            raise UnreadableFileError(
                path, f"unknown weights suffix '{suffix}'",
                f"use .safetensors or a state dict saved as {', '.join(STATE_DICT_SUFFIXES)}",
            )
    except UnreadableFileError:
        raise
    except Exception as exc:  # safetensors and the restricted unpickler raise their own types
        raise UnreadableFileError(
            path, f"cannot be read as weights ({type(exc).__name__}: {str(exc)[:200]})",
            "save a plain state dict (torch.save(model.state_dict(), ...)) or convert it to safetensors",
        ) from exc
    while isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        nested = next((data[k] for k in _NESTED if isinstance(data.get(k), dict)), None)
        if nested is None:
            break
        data = nested
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise UnreadableFileError(path, "holds no tensors", "save the model's state_dict()")
    return tensors


def guess_layout(state: dict[str, torch.Tensor]) -> str:
    """``medicalnet`` (``module.`` + ``conv_seg``), ``monai`` (``module.`` or ``class_layers``),
    ``torchvision`` (DenseNet ``classifier`` / unwrapped ``denselayer`` keys), else ``medsight``."""
    keys = list(state)
    if any(k.startswith("module.conv_seg") for k in keys):
        return "medicalnet"
    if all(k.startswith("module.") for k in keys):
        return "monai"
    if any(k.startswith("classifier.") for k in keys) and any(".denselayer" in k for k in keys):
        return "torchvision"
    return "medsight"


def map_keys(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys from ``layout`` to medsight's (MONAI) names."""
    if layout in ("monai", "medicalnet"):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if layout == "medicalnet":
        state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
    if layout == "torchvision":
        state = {_torchvision_key(k): v for k, v in state.items()}
    return state


def _torchvision_key(key: str) -> str:
    key = re.sub(r"(denselayer\d+)\.(?!layers\.)", r"\1.layers.", key)
    return re.sub(r"^classifier\.", "class_layers.out.", key)


def adapt_first_conv(weight: torch.Tensor, channels: int, mode: str) -> torch.Tensor:
    """A first-convolution kernel ``(out, k_src, ...)`` for ``channels`` inputs (see the module docstring)."""
    k_src = weight.shape[1]
    scale = k_src / channels
    if mode == "average":
        mean = weight.mean(dim=1, keepdim=True)
        return (mean * scale).expand(-1, channels, *weight.shape[2:]).clone()
    index = torch.arange(channels) % k_src
    return weight[:, index] * scale


def _modules_of(model: nn.Module, kinds) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def _last(model: nn.Module, kinds) -> str | None:
    names = _modules_of(model, kinds)
    return names[-1] if names else None


def _first(model: nn.Module, kinds) -> str | None:
    names = _modules_of(model, kinds)
    return names[0] if names else None


def _module_keys(model: nn.Module, name: str | None) -> list[str]:
    """State-dict keys of the module ``name`` (its parameters and buffers)."""
    if name is None:
        return []
    return [f"{name}.{key}" for key in model.get_submodule(name).state_dict()]


def head_name(model: nn.Module) -> str | None:
    """The classification head: the last ``nn.Linear`` of the model (None when it has none)."""
    return _last(model, nn.Linear)
