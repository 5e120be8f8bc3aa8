"""Prompt caches (``Llama.set_cache``), llama-cpp-python's ``llama_cache`` classes: saved states
keyed by the tokens they hold. Before a completion evaluates its prompt, the state sharing the
longest prefix with it is loaded (when that beats what the model already holds), so only the
rest is evaluated; after the completion its own state is saved.

``LlamaRAMCache`` keeps states in memory, least recently used dropped first beyond
``capacity_bytes`` (of KV cache and logits). ``LlamaDiskCache`` keeps one ``.npz`` file per state in
``cache_dir`` (plain arrays, no pickle, written atomically; least recently used deleted first
beyond ``capacity_bytes`` of files), where llama-cpp-python uses the ``diskcache`` package;
unlike llama-cpp-python's it keeps an entry it hands out.
"""

from __future__ import annotations

import hashlib
import os
import sys
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ferrollm.atomic import AtomicFile
from ferrollm.generate.saved_state import LlamaState

if TYPE_CHECKING:
    from ferrollm.llama import Llama

Key = tuple[int, ...]


def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class BaseLlamaCache(ABC):
    def __init__(self, capacity_bytes: int = 2 << 30):
        self.capacity_bytes = capacity_bytes

    @property
    @abstractmethod
    def cache_size(self) -> int: ...

    @abstractmethod
    def _keys(self) -> list[Key]: ...

    def _find_longest_prefix_key(self, key: Key) -> Key | None:
        best, best_len = None, 0
        for k in self._keys():
            n = longest_token_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    @abstractmethod
    def __getitem__(self, key: Sequence[int]) -> LlamaState: ...

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(key)) is not None

    @abstractmethod
    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None: ...


class LlamaRAMCache(BaseLlamaCache):
    def __init__(self, capacity_bytes: int = 2 << 30):
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[Key, LlamaState] = OrderedDict()

    @property
    def cache_size(self) -> int:
        return sum(s.llama_state_size + s.scores.nbytes for s in self.cache_state.values())

    def _keys(self) -> list[Key]:
        return list(self.cache_state)

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_longest_prefix_key(tuple(key))
        if found is None:
            raise KeyError("Key not found")
        self.cache_state.move_to_end(found)
        return self.cache_state[found]

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        key = tuple(int(t) for t in key)
        self.cache_state.pop(key, None)
        self.cache_state[key] = value
        while self.cache_size > self.capacity_bytes and self.cache_state:
            self.cache_state.popitem(last=False)


LlamaCache = LlamaRAMCache  # llama-cpp-python's older name


class LlamaDiskCache(BaseLlamaCache):
    SUFFIX = ".llamastate.npz"

    def __init__(self, cache_dir: str = ".cache/llama_cache", capacity_bytes: int = 2 << 30):
        super().__init__(capacity_bytes)
        self.cache_dir = os.fspath(cache_dir)
        os.makedirs(self.cache_dir, exist_ok=True)
        self._index: dict[Key, str] = {}  # tokens -> file, read lazily from the files

    def _files(self) -> list[str]:
        names = [n for n in os.listdir(self.cache_dir) if n.endswith(self.SUFFIX)]
        return [os.path.join(self.cache_dir, n) for n in names]

    def _path(self, key: Key) -> str:
        digest = hashlib.sha256(np.asarray(key, dtype=np.int64).tobytes()).hexdigest()[:32]
        return os.path.join(self.cache_dir, digest + self.SUFFIX)

    @property
    def cache_size(self) -> int:
        return sum(os.path.getsize(p) for p in self._files())

    def _keys(self) -> list[Key]:
        files = set(self._files())  # another process may have added or evicted some
        self._index = {k: p for k, p in self._index.items() if p in files}
        known = set(self._index.values())
        for p in files - known:
            try:
                with np.load(p, allow_pickle=False) as z:
                    self._index[tuple(int(t) for t in z["input_ids"])] = p
            except (OSError, ValueError, KeyError):
                continue  # unreadable: not ours, or cut short; ignored
        return list(self._index)

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_longest_prefix_key(tuple(key))
        if found is None:
            raise KeyError("Key not found")
        path = self._index[found]
        state = LlamaState.read(path)
        os.utime(path)  # most recently used
        return state

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        key = tuple(int(t) for t in key)
        path = self._path(key)
        with AtomicFile(path) as f:
            f.write(value.to_bytes())
        self._index[key] = path
        files = sorted(self._files(), key=os.path.getmtime)
        total = sum(os.path.getsize(p) for p in files)
        while total > self.capacity_bytes and files:
            oldest = files.pop(0)
            total -= os.path.getsize(oldest)
            os.unlink(oldest)


def restore_longest_prefix(llm: Llama, prompt: Sequence[int]) -> None:
    """Loads the cached state sharing the longest prefix with ``prompt``, when that prefix is
    longer than what ``llm`` already holds (llama-cpp-python's rule)."""
    cache = getattr(llm, "cache", None)
    if not cache:
        return
    try:
        state = cache[prompt]
    except KeyError:
        if llm.verbose:
            print("Llama._create_completion: cache miss", file=sys.stderr)
        return
    if longest_token_prefix(state.input_ids.tolist(), prompt) > longest_token_prefix(llm.input_ids, prompt):
        llm.load_state(state)
        if llm.verbose:
            print("Llama._create_completion: cache hit", file=sys.stderr)


def save(llm: Llama) -> None:
    """Saves what ``llm`` holds, keyed by its tokens."""
    cache = getattr(llm, "cache", None)
    if cache is not None and llm.input_ids:
        cache[llm.input_ids] = llm.save_state()
