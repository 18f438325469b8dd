"""Preallocated key/value cache for the decode loop (torch-free).

The exported graphs compute `present = concat(past, new)`, so a step reads P positions and writes
P+1. Each layer keeps two flat buffers sized for `max_len` positions and ping-pongs between them:
step s reads a contiguous (B, n_kv, P, hd) view of one buffer and the backend writes the
(B, n_kv, P+1, hd) present straight into a view of the other (I/O binding), so nothing is
allocated or copied per token.

    step s:   past  = A[:B*n_kv*P*hd]      -> graph ->  present = B[:B*n_kv*(P+1)*hd]
    step s+1: past  = B[:B*n_kv*(P+1)*hd]  -> graph ->  present = A[:B*n_kv*(P+2)*hd]

A sliding-window layer (Gemma 3's local layers) sees itself and W - 1 slots before it, so its
graphs take and return only the last W - 1 slots (`local_kv`): its buffers hold W - 1
positions whatever the context, and its past and present are min(P, W - 1) and
min(P + 1, W - 1) slots long (the graph drops the oldest slot itself).

Shared mode (`shared=True`, for decode graphs whose presents are ONNX Runtime
GroupQueryAttention outputs): one buffer per layer of (B, n_kv, max_len, hd), bound as both the
past and the present of every step. The node then writes only the new slots in place and
attends over the first P + 1 (what onnxruntime-genai does), instead of copying P slots into a
new present per token per layer (measured: 2,048-token context, SmolLM2, 2 threads: about 20 %
of a decode step). Half the memory of ping-pong. The prefill graph writes contiguous
(B, n_kv, L, hd) presents, so `present()` of an empty cache hands out a scratch block that
`advance()` copies into the strided buffer (once per prompt).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from semedge.constants import PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE
from semedge.errors import InputError, UsageError

__all__ = ["Buffer", "HostPool", "KVCache", "kv_layer", "local_kv"]


def kv_layer(name: str) -> int:
    """The layer index in a KV tensor's name (`past_key_values.{i}.key`, `present.{i}.value`)."""
    return int(name.split(".")[1])


def local_kv(config: dict[str, Any]) -> tuple[frozenset[int], int]:
    """(sliding-window layers, slots their cache holds) from an export manifest's config.

    slots 0: every layer's cache holds every position (no local layers, or an export written
    before local caches, whose graphs return every slot)."""
    slots = int(config.get("local_kv_slots") or 0)
    if not slots:
        return frozenset(), 0
    return frozenset(int(i) for i in config.get("local_layers") or ()), slots


@dataclass(frozen=True)
class Buffer:
    """A typed view into device or host memory that a backend can bind by pointer."""

    ptr: int  # address of the first element
    shape: tuple[int, ...]
    dtype: Any  # numpy dtype
    device: str = "cpu"  # "cpu" | "cuda"
    host: np.ndarray | None = None  # the numpy view when device == "cpu"


class KVCache:
    """Ping-pong past/present buffers for every layer of one request (not thread-safe).

    Args:
        allocate: `allocate(n_elements, dtype) -> (ptr, host_array_or_None, keepalive)` from the backend.
        num_layers, batch, n_kv_heads, head_dim: the model's cache geometry.
        max_len: positions to reserve (compressed prompt + new tokens).
        dtype: numpy dtype of the cache tensors.
        device: "cpu" or "cuda".
        local_layers, local_slots: layers whose cache holds only its last `local_slots`
            positions (local_kv); none by default.
        shared: one in-place buffer per layer bound as past and present (see the module
            docstring); host caches without local layers only.
        give_back: called with [block] when the prefill scratch of a shared cache is done
            (`HostPool.give`), so the next cache reuses it; None drops it.
    """

    def __init__(
        self,
        allocate: Any,
        num_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: Any = np.float32,
        device: str = "cpu",
        local_layers: frozenset[int] = frozenset(),
        local_slots: int = 0,
        shared: bool = False,
        give_back: Any = None,
    ) -> None:
        if max_len < 1:
            raise InputError(f"KV cache needs at least one position, got max_len={max_len}")
        if shared and (device != "cpu" or (local_slots and local_layers)):
            raise UsageError("a shared KV cache needs host memory and no sliding-window layers")
        self.shared = shared
        self._allocate, self._give_back = allocate, give_back
        self._scratch: tuple | None = None  # shared mode: the prefill's contiguous presents
        self.num_layers, self.batch = num_layers, batch
        self.n_kv_heads, self.head_dim, self.max_len = n_kv_heads, head_dim, max_len
        self.dtype, self.device = np.dtype(dtype), device
        # positions each layer's buffers hold; a local layer never more than local_slots
        self._cap = [min(max_len, local_slots) if local_slots and i in local_layers else max_len
                     for i in range(num_layers)]  # fmt: skip
        self._row = batch * n_kv_heads * head_dim  # elements per position of one key or value
        self._offset = [0]  # where each layer's key starts; its value follows cap * row later
        for cap in self._cap:
            self._offset.append(self._offset[-1] + 2 * cap * self._row)
        # one allocation per side, [layer][0=key, 1=value] slices of it: (ptr, host or None,
        # keepalive). One large block goes back to the OS when freed; 4 x num_layers smaller
        # ones fragment the heap of a server that allocates a cache per batch.
        self._sides = [allocate(self._offset[-1], self.dtype) for _ in range(1 if shared else 2)]
        self.length = 0  # positions held (P)
        self._side = 0  # which side holds the current past

    @property
    def nbytes(self) -> int:
        """Bytes reserved for the cache (both ping-pong sides, or the shared buffer)."""
        return len(self._sides) * self._offset[-1] * self.dtype.itemsize

    def _view(self, side: int, layer: int, kv: int, length: int, row: int | None = None) -> Buffer:
        """A contiguous (B, n_kv, length, hd) tensor: a ping-pong side's, a shared cache's
        whole buffer (length = max_len) or the prefill scratch (side -1)."""
        ptr, host, _ = self._scratch if side < 0 else self._sides[side]
        length = min(length, self._cap[layer])  # a local layer keeps its window's last slots
        shape = (self.batch, self.n_kv_heads, length, self.head_dim)
        n = int(np.prod(shape))
        if side < 0:  # scratch: layer after layer, key then value, each `length` slots
            offset = (2 * layer + kv) * n
        else:
            offset = self._offset[layer] + kv * self._cap[layer] * self._row
        if row is not None:  # one row of the (B, n_kv, length, hd) tensor: contiguous too
            n //= self.batch
            offset += row * n
            shape = (1, *shape[1:])
        view = host[offset : offset + n].reshape(shape) if host is not None else None
        return Buffer(ptr + offset * self.dtype.itemsize, shape, self.dtype, self.device, view)

    def past(self, row: int | None = None) -> dict[str, Buffer]:
        """What a step binds as `past_key_values.{i}.key/value`: views of shape (B, n_kv, P, hd)
        (a local layer's: min(P, its slots)); with `row`, that row's (1, n_kv, P, hd). A shared
        cache binds its whole (B, n_kv, max_len, hd) buffers (the first P slots are the past)."""
        length = self.max_len if self.shared else self.length
        out = {}
        for i in range(self.num_layers):
            out[PAST_KEY.format(i=i)] = self._view(self._side, i, 0, length, row)
            out[PAST_VALUE.format(i=i)] = self._view(self._side, i, 1, length, row)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The P positions held, as numpy views (B, n_kv, P, hd) by `past_key_values.{i}.*`
        name (a local layer's: min(P, its slots)); strided in a shared cache. Host caches."""
        out = {}
        for i in range(self.num_layers):
            for kv, fmt in ((0, PAST_KEY), (1, PAST_VALUE)):
                view = self._view(self._side, i, kv, self.max_len if self.shared else self.length)
                if view.host is None:
                    raise UsageError("arrays() needs a host (CPU) cache")
                out[fmt.format(i=i)] = view.host[:, :, : min(self.length, self._cap[i])]
        return out

    def present(self, new_tokens: int = 1, row: int | None = None) -> dict[str, Buffer]:
        """Where the next call writes `present.{i}.key/value`: (B, n_kv, P + new_tokens, hd)
        (a local layer's: min(P + new_tokens, its slots)); with `row`, that row's slice, so
        rows can be run one at a time into one step (advance once after all of them).

        For the prefill (P == 0) this is the current side; for decode the other side. A
        shared cache returns its whole buffers (the same as `past()`: written in place), or for
        the prefill a contiguous scratch that `advance()` copies in.

        Raises:
            InputError: the cache would exceed `max_len`.
        """
        total = self.check_room(new_tokens)
        side = self._side if self.length == 0 else 1 - self._side
        if self.shared:  # in place; an empty cache's prefill writes contiguous scratch first
            side, total = (-1, total) if self.length == 0 else (self._side, self.max_len)
            n = 2 * self.num_layers * self.batch * self.n_kv_heads * total * self.head_dim
            if side < 0 and (self._scratch is None or self._scratch[1].size < n):
                self._scratch = self._allocate(n, self.dtype)
        out = {}
        for i in range(self.num_layers):
            out[PRESENT_KEY.format(i=i)] = self._view(side, i, 0, total, row)
            out[PRESENT_VALUE.format(i=i)] = self._view(side, i, 1, total, row)
        return out

    def check_room(self, new_tokens: int) -> int:
        """Positions held after a step of `new_tokens`.

        Raises:
            InputError: the cache would exceed `max_len`.
        """
        total = self.length + new_tokens
        if total > self.max_len:
            raise InputError(
                f"KV cache holds {self.max_len} positions, a step needs {total}; "
                "lower max_new_tokens or raise the cache size"
            )
        return total

    def advance(self, new_tokens: int = 1) -> None:
        """Commit the step whose presents were written into `present(new_tokens)`."""
        if self.shared:
            if self.length == 0 and self._scratch is not None:  # the prefill's presents
                for i in range(self.num_layers):
                    for kv in (0, 1):
                        src = self._view(-1, i, kv, new_tokens).host
                        self._view(0, i, kv, self.max_len).host[:, :, :new_tokens] = src
                if self._give_back is not None:
                    self._give_back([self._scratch[2]])
                self._scratch = None
        elif self.length > 0:
            self._side = 1 - self._side
        self.length += new_tokens

    def host_arrays(self) -> dict[str, np.ndarray]:
        """A copy of the current past as numpy arrays, by `past_key_values.{i}.key/value` name.

        Raises:
            UsageError: the cache lives on a GPU (no host view).
        """
        return {name: view.copy() for name, view in self.arrays().items()}


class HostPool:
    """Host blocks handed back by finished caches, lent to new ones (thread-safe).

    A server that builds a cache each time a request joins a decode batch would otherwise map
    and page-fault hundreds of MB per join (measured on this project's 2-core VM: a fresh 383 MB
    batch cache took 0.2-0.8 s to fill, a reused one 24 ms). `release` only what no graph still
    reads.

    Args:
        allocate: the backend's allocator, used when no free block is large enough.
        keep: free blocks kept at most (the largest; 2 = one cache's two sides, what the next
            join needs). A server raises it with `reserve`.
        keep_bytes: free bytes kept at most (None: no limit but `keep`).
    """

    def __init__(self, allocate: Any, keep: int = 2, keep_bytes: int | None = None) -> None:
        self._allocate, self.keep, self.keep_bytes = allocate, keep, keep_bytes
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def reserve(self, keep: int, keep_bytes: int) -> None:
        """Keep up to `keep` free blocks and `keep_bytes` bytes (at least what is kept now):
        a batching server's joins, prefills and merged caches then reuse mapped memory."""
        with self._lock:
            self.keep = max(self.keep, keep)
            self.keep_bytes = max(self.keep_bytes or 0, keep_bytes)

    def allocate(self, n: int, dtype: Any) -> tuple[int, np.ndarray | None, Any]:
        """`n` elements: the smallest free block that fits, else a new one."""
        dtype = np.dtype(dtype)
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.dtype == dtype and b.size >= n]
            if fits:
                block = self._free.pop(min(fits, key=lambda i: self._free[i].size))
                return block.ctypes.data, block[:n], block
        return self._allocate(n, dtype)  # host backends keep the whole ndarray alive

    def clear(self) -> None:
        """Drop the free blocks (an idle server gives their memory back)."""
        with self._lock:
            self._free = []

    def release(self, cache: KVCache) -> None:
        """Take back `cache`'s host blocks (the cache must not be used afterwards)."""
        if cache.device != "cpu":
            return
        self.give([keep for _, _, keep in cache._sides])
        cache._sides = []

    def give(self, blocks: list[Any]) -> None:
        """Take back host blocks no graph reads any more (a shared cache's prefill scratch)."""
        with self._lock:
            free = sorted(self._free + [b for b in blocks if isinstance(b, np.ndarray)],
                          key=lambda b: b.nbytes)[-self.keep :]  # fmt: skip
            while self.keep_bytes is not None and sum(b.nbytes for b in free) > self.keep_bytes:
                free.pop(0)  # the smallest goes first: the largest are the hardest to map anew
            self._free = free
