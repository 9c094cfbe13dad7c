"""The one place the serving pass moves tensors between the host and the model's device.

A batch crosses twice: its inputs go over in one copy per dtype (the integer inputs of every
row, then the cached hidden states of the cache hits), staged in a pinned buffer so that the
copy is asynchronous; its results (every row's top-n, predictions and freshly computed
hidden states) come back in one blocking copy. Everything between runs on the device with
no synchronisation. On the CPU both directions are free: the tensors are already there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DeviceLink"]

_HOST = torch.device("cpu")
_CARRIED = (torch.float32, torch.int32)  # results cross as 4-byte words, in one buffer


class DeviceLink:
    """Moves a batch's tensors to ``device`` and back, each way in as few copies as it can."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._staging: dict[torch.dtype, Tensor] = {}
        # The last asynchronous copy out of a staging buffer: a buffer is refilled only
        # after it, even when the batch that started it failed before its results came back.
        self._copied: torch.cuda.Event | None = None

    @property
    def on_host(self) -> bool:
        """True when the device is the host itself (nothing is ever copied)."""
        return self.device == _HOST

    def send(self, parts: Sequence[Tensor]) -> list[Tensor]:
        """Host tensors of one dtype on the device, in one copy; same shapes, same order."""
        if self.on_host or not parts:
            return list(parts)
        sizes = [p.numel() for p in parts]
        flat = self._stage(parts, sum(sizes), parts[0].dtype)
        return [v.view(p.shape) for v, p in zip(torch.split(flat, sizes), parts, strict=True)]

    def stack(self, rows: Sequence[Tensor]) -> Tensor:
        """Host rows of one shape stacked on the device: (R, *shape), in one copy."""
        if not rows:
            raise ValueError("nothing to stack")
        if self.on_host:
            return torch.stack(list(rows))
        flat = self._stage(list(rows), len(rows) * rows[0].numel(), rows[0].dtype)
        return flat.view(len(rows), *rows[0].shape)

    def _stage(self, parts: Sequence[Tensor], total: int, dtype: torch.dtype) -> Tensor:
        buffer = self._staging.get(dtype)
        if buffer is None or buffer.numel() < total:
            buffer = torch.empty(max(total, 1024), dtype=dtype, pin_memory=self._pinned)
            self._staging[dtype] = buffer
        elif self._copied is not None:
            self._copied.synchronize()  # done already, unless the last batch failed midway
        staged = buffer[:total]
        torch.cat([p.reshape(-1) for p in parts], out=staged)
        on_device = staged.to(self.device, non_blocking=self._pinned)
        if self._pinned:
            self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._copied.record()
        return on_device

    def receive(self, parts: Sequence[Tensor]) -> list[Tensor]:
        """Device tensors (float32 or int32) on the host, in one blocking copy."""
        for p in parts:
            if p.dtype not in _CARRIED:
                raise TypeError(f"results cross as float32 or int32, got {p.dtype}")
        if self.on_host:
            return list(parts)
        # int32 words are carried bit for bit in the float32 buffer (a view, not a cast).
        words = [p.reshape(-1).view(torch.float32) for p in parts]
        host = torch.split(torch.cat(words).to(_HOST), [p.numel() for p in parts])
        return [
            (h if p.dtype == torch.float32 else h.view(torch.int32)).view(p.shape)
            for h, p in zip(host, parts, strict=True)
        ]
