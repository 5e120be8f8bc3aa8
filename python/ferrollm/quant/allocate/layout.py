"""What an allocation chooses and what it costs: the tensors that get a type of their own, the
types each may take, and the exact size of the file a choice of types gives.

Sizes are exact, not estimates: a GGUF file is its header (metadata and one record per tensor,
whose length does not depend on the tensor's type), padded to the alignment, then every
tensor's blocks, each padded to the alignment. So the file size of any choice is a constant
(header, and the tensors that stay F32) plus one padded size per allocated tensor.

Bits per weight (``bpw``) counts what llama.cpp's "BPW" counts for the quantized part of a
model: 8 x the bytes of the allocated weight matrices / their number of weights. Norms and MoE
routers (kept F32 whatever the target, as llama.cpp keeps them) and the header are outside it;
``--target-size`` bounds the whole file instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrollm.gguf import GGUFFile
from ferrollm.gguf.stream import encoded_string, encoded_value
from ferrollm.quant import block_types
from ferrollm.quant.mixes import NEEDS_IMATRIX
from ferrollm.quant.writer import WRITABLE_TYPES, keeps_f32

# The types an allocation chooses from by default, for rows of whole 256-element super-blocks:
# every K and IQ type and Q8_0. The legacy 32-element types are dominated there (larger for the
# same error), and measuring them would only cost time.
DEFAULT_CANDIDATES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K", "IQ3_XXS", "IQ3_S", "Q3_K",
                      "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")  # fmt: skip
# Rows that are not whole super-blocks take the 32-element types (llama.cpp's fallbacks).
SMALL_ROW_CANDIDATES = ("IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


@dataclass(frozen=True)
class Slot:
    """One tensor whose type the allocation chooses (MoE experts of a layer: one stacked tensor,
    so they share a type)."""

    name: str
    shape: tuple[int, ...]  # numpy order: rows of shape[-1] values
    options: tuple[str, ...]  # candidate types, smallest first

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def nbytes(self, type_name: str) -> int:
        q = block_types.quant_type(type_name)
        return self.n_elements // q.block_elems * q.block_bytes


@dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...]
    fixed_bytes: int  # header (padded) + the tensors that are not allocated (padded)
    alignment: int

    def padded(self, slot: Slot, type_name: str) -> int:
        n = slot.nbytes(type_name)
        return n + (-n % self.alignment)

    @property
    def n_weights(self) -> int:
        return sum(s.n_elements for s in self.slots)

    def weight_bytes(self, types: dict[str, str]) -> int:
        return sum(s.nbytes(types[s.name]) for s in self.slots)

    def file_bytes(self, types: dict[str, str]) -> int:
        return self.fixed_bytes + sum(self.padded(s, types[s.name]) for s in self.slots)

    def bpw(self, types: dict[str, str]) -> float:
        return 8 * self.weight_bytes(types) / self.n_weights

    def extreme(self, largest: bool) -> dict[str, str]:
        """Every tensor at its smallest (or largest) candidate."""
        return {s.name: s.options[-1 if largest else 0] for s in self.slots}


def candidates_for(name: str, cols: int, types: tuple[str, ...] | None, has_imatrix: bool) -> tuple[str, ...]:
    """The candidate types of a tensor with rows of ``cols`` values, smallest first: ``types``
    (default: DEFAULT_CANDIDATES, or SMALL_ROW_CANDIDATES for rows that are not whole
    super-blocks) less those whose blocks do not divide a row, and without an importance matrix
    the 1-2 bit codebooks llama.cpp refuses to write without one."""
    pool = types or (DEFAULT_CANDIDATES if cols % 256 == 0 else SMALL_ROW_CANDIDATES)
    out = []
    for t in pool:
        q = block_types.quant_type(t)
        if q.name not in WRITABLE_TYPES:
            raise ValueError(f"cannot quantize to {q.name}; writable types: {', '.join(WRITABLE_TYPES)}")
        if cols % q.block_elems:
            continue
        if not has_imatrix and q.name in NEEDS_IMATRIX and name not in ("token_embd.weight", "output.weight"):
            continue
        out.append(q.name)
    if not out and types:  # none of the given types fits these rows: llama.cpp's fallbacks
        return candidates_for(name, cols, None, has_imatrix)
    return tuple(sorted(set(out), key=lambda t: (block_types.quant_type(t).bits_per_weight, t)))


def header_bytes(
    metadata: list[tuple[str, str, object]], tensors: list[tuple[str, int]], alignment: int
) -> int:
    """Bytes of a GGUF v3 header (padded) with this metadata and these (name, n_dims) tensors:
    the layout ``gguf_stream.write_gguf_stream`` and ``GGUFWriter`` write."""
    n = 24  # magic, version, tensor count, metadata count
    for key, type_name, value in metadata:
        n += len(encoded_string(key)) + 4 + len(encoded_value(type_name, value))
    for name, n_dims in tensors:
        n += len(encoded_string(name)) + 4 + 8 * max(n_dims, 1) + 4 + 8
    return n + (-n % alignment)


def layout(f: GGUFFile, metadata: list[tuple[str, str, object]], types: tuple[str, ...] | None = None,
           has_imatrix: bool = True) -> Layout:  # fmt: skip
    """The allocation layout of source file ``f`` written with ``metadata``."""
    align = int(next((v for k, _, v in metadata if k == "general.alignment"), 32))
    slots, fixed = [], 0
    for info in f.tensors:
        shape = info.numpy_shape
        if keeps_f32(info.name, shape):
            n = 4 * info.n_elements
            fixed += n + (-n % align)
            continue
        slots.append(Slot(info.name, shape, candidates_for(info.name, shape[-1], types, has_imatrix)))
    fixed += header_bytes(metadata, [(t.name, len(t.shape)) for t in f.tensors], align)
    return Layout(tuple(slots), fixed, align)
