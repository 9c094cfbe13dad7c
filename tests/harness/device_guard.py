"""A wrong-device check that needs no GPU: the model on PyTorch's ``meta`` device, watched.

``meta`` tensors have shapes and no data, and PyTorch refuses to mix them with CPU tensors
exactly as it refuses to mix CUDA and CPU ones, so a serving pass run with the model on
``meta`` goes wrong wherever it would go wrong on a GPU. ``DeviceGuard`` (a
``TorchFunctionMode``) sees every tensor operation of the threads it is entered on, and
records:

- ``mixed``: an operation whose tensors live on more than one device (0-dim CPU scalars
  aside, which PyTorch allows everywhere). Indexing a device tensor with host indices is
  legal on CUDA, but it is a hidden copy; it is recorded too.
- ``copies``: every copy between host and ``meta`` (``.to``, ``.cpu``, ``.tolist``,
  ``.item``, ``.numpy``, ``torch.tensor(..., device=...)``), with the function that made
  it. A copy out of ``meta`` has no data to give: the guard returns zeros of the right
  shape instead, so the pass runs to its end and every violation gets recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["META", "Copy", "DeviceGuard"]

META = torch.device("meta")
_HOST_READS = {Tensor.tolist, Tensor.item, Tensor.numpy, Tensor.cpu}
_SCALAR_READS = {Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__}


@dataclass(frozen=True)
class Copy:
    """One copy between host and device: which way, and the function that asked for it."""

    direction: str  # "to device" or "to host"
    where: str  # the qualified name of the calling function


@dataclass
class DeviceGuard(TorchFunctionMode):
    """Records cross-device operations and host/device copies of the threads it is on."""

    mixed: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        devices = {t.device.type for t in tensors if t.dim() > 0}
        if len(devices) > 1:
            self.mixed.append(f"{_name(func)} mixes {sorted(devices)} in {_caller()}")
        source = args[0] if args and isinstance(args[0], Tensor) else None
        if source is not None and source.device == META:
            if func in _SCALAR_READS:
                self.copies.append(Copy("to host", _caller()))
                return func(torch.zeros((), dtype=source.dtype))
            if func in _HOST_READS or (func is Tensor.to and _target(args, kwargs) == "cpu"):
                self.copies.append(Copy("to host", _caller()))
                return func(_zeros_like(source), *args[1:], **kwargs)
        elif _moves_to_meta(func, source, args, kwargs):
            self.copies.append(Copy("to device", _caller()))
        return func(*args, **kwargs)

    def copies_outside(self, allowed: set[str]) -> list[Copy]:
        """The copies not made by one of the ``allowed`` functions."""
        return [c for c in self.copies if c.where not in allowed]


def _moves_to_meta(
    func: Callable[..., Any], source: Tensor | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool:
    """A host tensor moved to meta, or one made there from host data (torch.tensor)."""
    if source is not None and func is Tensor.to:
        return _target(args, kwargs) == "meta"
    return func is torch.tensor and str(kwargs.get("device", "")).startswith("meta")


def _zeros_like(t: Tensor) -> Tensor:
    return torch.zeros(t.shape, dtype=t.dtype)


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The device type a ``Tensor.to`` call moves to, or None when it keeps the device."""
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, torch.device):
            return value.type
        if isinstance(value, str):
            return torch.device(value).type
        if isinstance(value, Tensor):
            return value.device.type
    return None


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


def _caller() -> str:
    # Frame 0 is this function, 1 the guard's __torch_function__, 2 the code that called
    # torch (PyTorch's dispatch in between is C, not Python frames).
    return sys._getframe(2).f_code.co_qualname
