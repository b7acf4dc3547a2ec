"""Devices named by users (flags, config files), checked before anything is moved there.

Examples:
    >>> resolve("cpu")
    device(type='cpu')
    >>> resolve("nosuch")
    Traceback (most recent call last):
    ...
    ValueError: device 'nosuch' is not a torch device; expected cpu, cuda, cuda:N, mps or auto
"""

from __future__ import annotations

import torch

EXPECTED = "cpu, cuda, cuda:N, mps or auto"


def resolve(device: str | torch.device | None, default: str = "cpu") -> torch.device:
    """The ``torch.device`` that ``device`` names, checked to exist on this machine.

    ``"auto"`` is CUDA's first device where one is visible, else the CPU; ``None`` is
    ``default``. Raises a one-line ``ValueError`` for a name torch does not know or a device
    this machine does not have.
    """
    if device is None:
        device = default
    if isinstance(device, str):
        text = device.strip()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            message = f"device {text!r} is not a torch device; expected {EXPECTED}"
            raise ValueError(message) from None
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for, but this torch ({torch.__version__}) "
                "sees no CUDA GPU; use --device cpu (or auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA "
                f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for, but this machine has no MPS device")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"device {str(device)!r} is not supported; expected {EXPECTED}")
    return device


__all__ = ["resolve"]
