"""Run ExLlamaV2's own EXL2 packing and reconstruction on the CPU (the oracle virtualenv, which
has torch and the ``exllamav2`` package; its extension needs CUDA, so it is not built):

- the CUDA kernels ``pack_rows_4_kernel``, ``pack_columns_kernel`` (pack_tensor.cu),
  ``shuffle_kernel`` and ``reconstruct_kernel`` (q_matrix.cu) with the ``qdq_*.cuh``
  dequantizers and ``matrix_view.cuh``, cut verbatim from the installed package's
  ``exllamav2_ext`` sources and compiled with g++ against ``cuda_shim.h``;
- the package's Python as it is: ``AdaptiveGPTQ.configure`` and ``AdaptiveGPTQ.pack``
  (adaptivegptq.py, with ``exllamav2_ext`` standing in as the kernels above), ``QParams``,
  ``make_group_map_py`` (ext.py), and ``make_q_matrix``'s ``q_scale_max *= 1 / 256``.

    python exllamav2_cpu.py IN.npz OUT.npz

IN holds, per case ``c``: ``c.q`` (in x out, activation order), ``c.qscale``, ``c.qscale_max``,
``c.invperm``, ``c.bits``, ``c.rows`` (per group) and ``c.group_size`` (bits -> size pairs).
OUT holds ``c.<tensor>`` as ``pack`` wrote it, ``c.bits_groups`` from ``configure`` when
``c.props`` is given, and ``c.reconstructed``: the (in x out) float16 matrix of
``reconstruct_kernel``, unpermuted as ``get_weight_tensor_dq`` returns it.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _cut(source: str, start: str) -> str:
    """The definition beginning at ``start`` (a regex) up to its matching closing brace."""
    m = re.search(start, source)
    if not m:
        raise RuntimeError(f"{start!r} not found in the ExLlamaV2 source")
    i = source.index("{", m.end())
    depth = 0
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[m.start() : j + 1]
    raise RuntimeError(f"unbalanced braces after {start!r}")


HARNESS = r"""
#include "cuda_shim.h"
#define DIVIDE(x, size) (((x) + (size) - 1) / (size))
#include "quant/qdq_2.cuh"
#include "quant/qdq_3.cuh"
#include "quant/qdq_4.cuh"
#include "quant/qdq_5.cuh"
#include "quant/qdq_6.cuh"
#include "quant/qdq_8.cuh"
#include "matrix_view.cuh"
#define BLOCK_KN_SIZE @BLOCK_KN_SIZE@
#define THREADS_X @THREADS_X@

@KERNELS@

extern "C" {
void pack_rows_4(const uint16_t* input, uint32_t* output, int rows, int columns) {
    int out_columns = columns * 4 / 32;
    launch(dim3(DIVIDE(out_columns, 32), DIVIDE(rows, 16)), dim3(32, 16), false,
           [&] { pack_rows_4_kernel(input, output, rows, out_columns); });
}

void pack_columns(const uint16_t* input, uint32_t* output, int out_rows, int columns, int bits) {
    dim3 g(DIVIDE(columns, 32), DIVIDE(out_rows, 16)), b(32, 16);
    if (bits == 2) launch(g, b, false, [&] { pack_columns_kernel<2>(input, output, out_rows, columns); });
    if (bits == 3) launch(g, b, false, [&] { pack_columns_kernel<3>(input, output, out_rows, columns); });
    if (bits == 4) launch(g, b, false, [&] { pack_columns_kernel<4>(input, output, out_rows, columns); });
    if (bits == 5) launch(g, b, false, [&] { pack_columns_kernel<5>(input, output, out_rows, columns); });
    if (bits == 6) launch(g, b, false, [&] { pack_columns_kernel<6>(input, output, out_rows, columns); });
    if (bits == 8) launch(g, b, false, [&] { pack_columns_kernel<8>(input, output, out_rows, columns); });
}

// QMatrix's constructor (rows per width from q_groups, then the shuffle) and reconstruct().
void reconstruct(uint32_t* q_weight, const uint16_t* q_perm, const uint32_t* q_scale, const half* q_scale_max,
                 const uint16_t* q_groups, const uint16_t* q_group_map, int height, int width, int groups,
                 half* out) {
    int rows_8 = 0, rows_6 = 0, rows_5 = 0, rows_4 = 0, rows_3 = 0, rows_2 = 0, row = 0;
    for (int i = 0; i < groups; i++) {
        int bits = q_groups[i * 2];
        int rows = i < groups - 1 ? (q_groups[i * 2 + 3] - q_groups[i * 2 + 1]) * 32 / bits : height - row;
        if (bits == 8) rows_8 += rows;
        if (bits == 6) rows_6 += rows;
        if (bits == 5) rows_5 += rows;
        if (bits == 4) rows_4 += rows;
        if (bits == 3) rows_3 += rows;
        if (bits == 2) rows_2 += rows;
        row += rows;
    }
    rows_6 += rows_8; rows_5 += rows_6; rows_4 += rows_5; rows_3 += rows_4; rows_2 += rows_3;
    launch(dim3(DIVIDE(width, THREADS_X)), dim3(THREADS_X), false, [&] {
        shuffle_kernel(q_weight, height, width, rows_8, rows_6, rows_5, rows_4, rows_3, rows_2);
    });
    launch(dim3(DIVIDE(width, BLOCK_KN_SIZE), DIVIDE(height, BLOCK_KN_SIZE)), dim3(BLOCK_KN_SIZE), true, [&] {
        reconstruct_kernel(q_weight, q_perm, q_scale, q_scale_max, q_group_map, height, width, groups, out,
                           rows_8, rows_6, rows_5, rows_4, rows_3, rows_2, 0, height);
    });
}
}
"""


def build_kernels(ext_dir: str, work: str) -> ctypes.CDLL:
    with open(os.path.join(ext_dir, "cuda", "pack_tensor.cu")) as f:
        pack_src = f.read()
    with open(os.path.join(ext_dir, "cuda", "q_matrix.cu")) as f:
        qm_src = f.read()
    kernels = [
        _cut(pack_src, r"__global__ void pack_rows_4_kernel\b"),
        _cut(pack_src, r"__forceinline__ __device__ uint32_t wshift\b"),
        _cut(pack_src, r"template<int bits>\s*__global__ void pack_columns_kernel\b"),
        _cut(qm_src, r"__global__ void shuffle_kernel\b"),
        _cut(qm_src, r"__global__ void reconstruct_kernel\b"),
    ]
    code = HARNESS.replace("@KERNELS@", "\n\n".join(kernels))
    for name in ("BLOCK_KN_SIZE", "THREADS_X"):
        code = code.replace(f"@{name}@", re.search(rf"#define {name} (\d+)", qm_src).group(1))
    for header in ("cuda_runtime.h", "cuda_fp16.h"):
        with open(os.path.join(work, header), "w") as f:
            f.write('#include "cuda_shim.h"\n')
    src, lib = os.path.join(work, "exl2_kernels.cpp"), os.path.join(work, "exl2_kernels.so")
    with open(src, "w") as f:
        f.write(code)
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", f"-I{work}", f"-I{HERE}",
           f"-I{os.path.join(ext_dir, 'cuda')}", src, "-o", lib]  # fmt: skip
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(lib)


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def stub_extension(lib: ctypes.CDLL) -> None:
    """``exllamav2_ext`` with the two packing functions ``AdaptiveGPTQ.pack`` calls, as
    ext_quant.cpp checks and launches them."""

    def pack_rows_4(inp: torch.Tensor, out: torch.Tensor) -> None:
        assert inp.dtype == torch.short and out.dtype == torch.int and inp.shape[1] == out.shape[1] * 8
        a = np.ascontiguousarray(inp.numpy().view(np.uint16))
        o = np.zeros(out.shape, np.uint32)
        lib.pack_rows_4(_ptr(a), _ptr(o), a.shape[0], a.shape[1])
        out.copy_(torch.from_numpy(o.view(np.int32)))

    def pack_columns(inp: torch.Tensor, out: torch.Tensor, bits: int) -> None:
        assert inp.dtype == torch.short and out.dtype == torch.int and inp.shape[1] == out.shape[1]
        assert out.shape[0] == inp.shape[0] * bits // 32, "Wrong output shape for input and bitrate"
        a = np.ascontiguousarray(inp.numpy().view(np.uint16))
        o = np.zeros(out.shape, np.uint32)
        lib.pack_columns(_ptr(a), _ptr(o), o.shape[0], o.shape[1], bits)
        out.copy_(torch.from_numpy(o.view(np.int32)))

    ext = types.ModuleType("exllamav2_ext")
    ext.pack_rows_4, ext.pack_columns = pack_rows_4, pack_columns
    sys.modules["exllamav2_ext"] = ext


def cpu_only() -> None:
    """adaptivegptq.py moves its results to "cuda:0"; here they stay on the CPU."""
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda:0" else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu


def main(inp: str, out: str) -> None:
    import importlib.util

    package = importlib.util.find_spec("exllamav2").submodule_search_locations[0]  # importing it builds
    ext_dir = os.path.join(package, "exllamav2_ext")
    with tempfile.TemporaryDirectory() as work:
        lib = build_kernels(ext_dir, work)
    stub_extension(lib)
    cpu_only()
    from exllamav2.conversion.adaptivegptq import AdaptiveGPTQ
    from exllamav2.conversion.qparams import QParams
    from exllamav2.ext import make_group_map_py

    data = dict(np.load(inp))
    result = {}
    for case in sorted({k.split(".")[0] for k in data}):
        d = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(case + ".")}
        rows, columns = d["q"].shape
        gs = {int(b): int(g) for b, g in d["group_size"]}
        layer = torch.nn.Linear(rows, columns, bias=False)
        lq = AdaptiveGPTQ(layer)
        if "props" in d:
            bits = sorted({int(b) for b in d["bits"]}, reverse=True)
            lq.configure(gs, bits, [float(p) for p in d["props"]], 4)
            result[f"{case}.bits_groups"] = np.array(lq.bits_groups)
            qp = QParams(gs, bits, [float(p) for p in d["props"]], 4)
            result[f"{case}.total_bits"] = np.array(qp.total_bits((rows, columns)))
        lq.group_size = gs
        lq.qweight = torch.from_numpy(d["q"].astype(np.int16))
        lq.qscale = torch.from_numpy(d["qscale"].astype(np.int16))
        lq.qscale_max = torch.from_numpy(d["qscale_max"].astype(np.float16))
        lq.qgroups = torch.tensor([v for b in d["bits"] for v in (int(b), 0)], dtype=torch.short)
        lq.invperm = torch.from_numpy(d["invperm"].astype(np.int64))
        packed = lq.pack("layer", QParams(gs, [int(b) for b in d["bits"]], [1.0] * len(d["bits"]), 4))
        for k, v in packed.items():
            result[f"{case}.{k.split('.', 1)[1]}"] = v.numpy()

        # make_q_matrix and ExLlamaV2Linear.get_weight_tensor_dq
        w = {k.split(".", 1)[1]: v.clone() for k, v in packed.items()}
        w["q_scale_max"] *= 1 / 256
        w["q_perm"] = torch.argsort(w["q_invperm"]).to(torch.int)
        group_map = make_group_map_py(w["q_groups"], w["q_weight"].shape[0]).numpy().view(np.uint16)
        q_weight = np.ascontiguousarray(w["q_weight"].numpy().view(np.uint32))
        recon = np.zeros((rows, q_weight.shape[1]), np.float16)
        args = [q_weight, w["q_perm"].short().numpy().view(np.uint16), w["q_scale"].numpy().view(np.uint32),
                w["q_scale_max"].numpy(), w["q_groups"].numpy().view(np.uint16), group_map]  # fmt: skip
        args = [np.ascontiguousarray(a) for a in args]
        lib.reconstruct(*map(_ptr, args), rows, q_weight.shape[1], len(d["bits"]), _ptr(recon))
        result[f"{case}.reconstructed"] = recon
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
