"""The ``ferrollm`` command line.

ferrollm run [-m FILE] -p PROMPT generate, streaming to the terminal (llama.cpp's options;
                                 without -m: the embedded demo model)
ferrollm chat [-m FILE]          interactive chat with the model's template
ferrollm perplexity -f TEXT      perplexity, and KL-divergence against a base (llama-perplexity)
ferrollm quantize IN OUT TYPE    write a model with every weight matrix in TYPE
ferrollm quantize IN OUT --target-bpw B --imatrix F --calibration TEXT
                                 each tensor's type chosen by measurement to fit a size (or --target-size,
                                 --fit-ram SIZE -c CTX)
ferrollm convert DIR OUT.gguf --outtype TYPE|MIX | --target-bpw B
                                 a Hugging Face checkpoint, float or EXL2, to GGUF
ferrollm info FILE               hardware, metadata, tensors and the kernels this CPU will use
ferrollm plan FILE [-c CTX]      the RAM a run needs (weights + KV cache + buffers), and whether it fits
ferrollm synth OUT.gguf          write a small GGUF of random valid blocks of every type
ferrollm synth-model OUT.gguf    write a small random-weight llama/Mixtral model
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections import Counter

from ferrollm import GGUFError, __version__, gguf, hardware
from ferrollm.cli import interactive
from ferrollm.demo import demo_model_path
from ferrollm.gguf import plan
from ferrollm.gguf.synthetic import DEMO_TYPES, write_synthetic_gguf
from ferrollm.gguf.synthetic_model import SHAPES, ModelSpec, shape_spec, write_model
from ferrollm.llama import Llama
from ferrollm.quant import block_types, quality
from ferrollm.quant.imatrix import collect as collect_imatrix
from ferrollm.quant.mixes import MIXES
from ferrollm.quant.writer import ProgressBar, quantize_file
from ferrollm.session import parse_override
from ferrollm.text.chat import BUILTIN_FORMATS


def _short(value, limit: int = 60) -> str:
    if isinstance(value, list):
        head = ", ".join(_short(v, 16) for v in value[:4])
        return f"[{head}{', ...' if len(value) > 4 else ''}] ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def cmd_info(args: argparse.Namespace) -> int:
    f = gguf.open(args.file)
    hw = hardware.detect()
    print(f"cpu       {hw.cpu}: {hw.physical_cores} physical cores ({hw.logical_cpus} logical)")
    print(f"memory    {_size(hw.ram_total)} total, {_size(hw.ram_available)} available")
    print(f"file      {f.path}  ({_size(f.file_size)}, GGUF v{f.version}, alignment {f.alignment})")
    print(
        f"cpu       {block_types.isa_detected()} detected, {block_types.isa_active()} allowed; kernel per tensor type below"
    )
    print(f"\nmetadata  {len(f.metadata)} keys")
    types = f.metadata_types
    for key, value in f.metadata.items():
        print(f"  {key:<40} {types[key]:<12} {_short(value)}")
    n_params = sum(t.n_elements for t in f.tensors)
    n_bytes = sum(t.nbytes for t in f.tensors)
    bpw = 8 * n_bytes / n_params if n_params else 0.0
    print(f"\ntensors   {len(f.tensors)}, {n_params:,} weights, {_size(n_bytes)} ({bpw:.2f} bits/weight)")
    by_type = Counter(t.type for t in f.tensors)
    print("  types: " + ", ".join(f"{t} x{n}" for t, n in sorted(by_type.items())))
    shown = f.tensors if args.all or len(f.tensors) <= 40 else f.tensors[:40]
    for t in shown:
        kernel = block_types.kernel_isa(t.type) or "-"
        print(f"  {t.name:<40} {t.type:<8} {list(t.shape)!s:<24} {_size(t.nbytes):>11}  {kernel}")
    if len(shown) < len(f.tensors):
        print(f"  ... {len(f.tensors) - len(shown)} more (--all shows them)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    types = [t.strip().upper() for t in args.types.split(",")] if args.types else DEMO_TYPES
    write_synthetic_gguf(args.out, types=types, rows=args.rows, row_len=args.row_len, seed=args.seed)
    print(f"wrote {args.out}: {len(types)} tensors of random valid blocks ({', '.join(types)})")
    return 0


def _open_model(args: argparse.Namespace) -> Llama:
    overrides = dict(parse_override(o) for o in args.override_kv or [])
    n_ctx = args.ctx_size
    if n_ctx is None:
        md = gguf.open(args.model).metadata
        arch = md.get("general.architecture", "llama")
        n_ctx = min(4096, int(md.get(f"{arch}.context_length", 4096)))
    return Llama(
        args.model,
        n_ctx=n_ctx,
        n_threads=args.threads,
        n_batch=args.batch_size,
        seed=args.seed if args.seed >= 0 else 0xFFFFFFFF,
        kv_overrides=overrides,
        type_k=args.cache_type_k,
        type_v=args.cache_type_v,
        chat_format=getattr(args, "chat_format", None),
        verbose=True,
        progress=not args.no_progress,
        check_tensors=args.check_tensors,
    )


def _sampling(args: argparse.Namespace) -> dict:
    return {
        "temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty, "max_tokens": args.n_predict if args.n_predict > 0 else None,
    }  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    prompt = (args.prompt or "").replace("\\n", "\n")  # llama.cpp's -e: always on here
    if args.instruct or args.conversation or args.chatml:
        args.chat_format = "chatml" if args.chatml else args.chat_format
        return interactive.chat(_open_model(args), prompt or None, _sampling(args))
    if args.interactive or args.interactive_first:
        return interactive.continuation(_open_model(args), prompt, args.reverse_prompt or [], _sampling(args),
                                        first=args.interactive_first, in_prefix=args.in_prefix,
                                        in_suffix=args.in_suffix)  # fmt: skip
    if args.prompt is None:
        raise ValueError("run needs -p PROMPT, or -i (interactive) or -ins (chat) for a session")
    llm = _open_model(args)
    print(prompt, end="", flush=True)
    engine = llm.session.engine
    engine.take_profile()  # from here on
    t_first, n_out = None, 0
    for chunk in llm.create_completion(
        prompt, stream=True, stop=args.reverse_prompt or None, **_sampling(args)
    ):
        if t_first is None:
            t_first = time.perf_counter()
            engine.take_profile()  # the prompt's share ends with the first piece
        n_out += 1
        choice = chunk["choices"][0]
        # The newline goes out with the last piece, before the engine's timing line on stderr.
        print(choice["text"], end="\n" if choice["finish_reason"] else "", flush=True)
    if args.profile and t_first is not None and n_out > 1:
        _print_profile(engine.take_profile(), time.perf_counter() - t_first, n_out - 1)
    return 0


def _print_profile(prof: dict, wall: float, n_tokens: int) -> None:
    """Per decoded token: the engine's components, and the rest (sampling, detokenizing,
    streaming: the Python side)."""
    parts = ["attention", "router", "experts", "head", "embed_norm"]
    engine_s = sum(prof[k] for k in parts)
    print(f"profile: {n_tokens} decoded tokens, {1e3 * wall / n_tokens:.2f} ms per token", file=sys.stderr)
    for k in parts:
        print(f"  {k:<12} {1e3 * prof[k] / n_tokens:8.3f} ms  {100 * prof[k] / wall:5.1f}%", file=sys.stderr)
    rest = wall - engine_s
    print(f"  {'python':<12} {1e3 * rest / n_tokens:8.3f} ms  {100 * rest / wall:5.1f}%  (sampling, "
          "detokenizing, streaming)", file=sys.stderr)  # fmt: skip


def cmd_plan(args: argparse.Namespace) -> int:
    p = plan.plan(args.file, n_ctx=args.ctx_size, type_k=args.cache_type_k, type_v=args.cache_type_v,
                  n_batch=args.batch_size, n_threads=args.threads or 2)  # fmt: skip
    print(p.report())
    return 0 if p.fits is not False else 1


def cmd_chat(args: argparse.Namespace) -> int:
    return interactive.chat(_open_model(args), args.system, _sampling(args))


def cmd_synth_model(args: argparse.Namespace) -> int:
    if args.shape:
        spec = shape_spec(args.shape, args.type.upper(), seed=args.seed)
        write_model(args.out, spec)
        print(
            f"wrote {args.out}: random-weight {args.shape}, {spec.weight_type} ({_size(os.path.getsize(args.out))})"
        )
        return 0
    spec = ModelSpec(
        n_vocab=args.vocab, n_embd=args.embd, n_layer=args.layers, n_head=args.heads, n_head_kv=args.kv_heads,
        n_ff=args.ff, n_expert=args.experts, n_expert_used=min(2, args.experts), weight_type=args.type.upper(),
        n_ctx_train=args.ctx, seed=args.seed,
    )  # fmt: skip
    write_model(args.out, spec)
    kind = f"MoE {args.experts} experts" if args.experts else "dense"
    print(f"wrote {args.out}: random-weight llama model, {kind}, {args.layers} layers, {spec.weight_type}")
    return 0


class _Progress:
    """One status line on stderr, redrawn in place on a terminal; a single final line in a log."""

    def __init__(self, label: str):
        self.label, self.tty, self.last = label, sys.stderr.isatty(), ""

    def __call__(self, done: int, total: int, value: float) -> None:
        bar = "#" * (30 * done // total)
        self.last = f"{self.label} [{bar:<30}] {done}/{total} chunks, {value:.4f}"
        if self.tty:
            print("\r" + self.last, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.last:
            print(("\r" if self.tty else "") + self.last, file=sys.stderr, flush=True)


def cmd_perplexity(args: argparse.Namespace) -> int:
    text = read_text(args.file)
    common = {"n_threads": args.threads, "n_batch": args.batch_size}
    if args.kl_divergence:
        if not args.kl_divergence_base:
            raise ValueError(
                "--kl-divergence needs --kl-divergence-base FILE (saved by a run on the base model)"
            )
        bar = _Progress("KLD")
        try:
            r = quality.kl_divergence(args.model, args.kl_divergence_base, progress=bar, **common)
        finally:
            bar.close()
        print(f"PPL(Q)           = {r.ppl:.4f} +/- {r.ppl_err:.5f}")
        print(f"PPL(base)        = {r.ppl_base:.4f}")
        print(f"ln(PPL(Q)/PPL(base)) = {r.ln_ppl_ratio:.6f}")
        print(f"Mean KLD         = {r.kld_mean:.6f} +/- {r.kld_err:.6f}")
        print(f"Median KLD       = {r.kld_median:.6f}")
        print(f"99.0% KLD        = {r.kld_p99:.6f}")
        print(f"Maximum KLD      = {r.kld_max:.6f}")
        print(f"Same top p       = {100 * r.top1_agreement:.3f} +/- {100 * r.top1_err:.3f} %")
        print(f"RMS Δp           = {100 * r.rms_delta_p:.3f} %")
        print(f"tokens scored    = {r.n_tokens_scored}")
        return 0
    bar = _Progress("perplexity")
    try:
        r = quality.perplexity(args.model, text, args.ctx_size, args.chunks, save_logprobs=args.kl_divergence_base,
                               progress=bar, **common)  # fmt: skip
    finally:
        bar.close()
    print(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_err:.5f} ({r.n_chunks} chunks of {r.n_ctx}, "
          f"{r.n_tokens_scored} tokens scored)")  # fmt: skip
    if args.kl_divergence_base:
        print(f"base log-probabilities saved to {args.kl_divergence_base}", file=sys.stderr)
    return 0


def _allocation_target(args: argparse.Namespace):
    """The --target-bpw / --target-size / --fit-ram target, or None for a fixed type or mix."""
    from ferrollm.quant.allocate import Target, parse_size

    given = [o for o, v in (("--target-bpw", args.target_bpw), ("--target-size", args.target_size),
                            ("--fit-ram", args.fit_ram)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"give one target, not {' and '.join(given)}")
    if not given:
        if args.type is None:
            raise ValueError("give a TYPE (a mix such as Q4_K_M, or a tensor type with --pure) or a target: "
                             "--target-bpw B, --target-size BYTES or --fit-ram SIZE")  # fmt: skip
        return None
    if args.type is not None:
        raise ValueError(f"give a TYPE or {given[0]}, not both: the allocation chooses every tensor's type")
    if args.target_bpw is not None:
        if not 0 < args.target_bpw < 64:  # also NaN
            raise ValueError(f"--target-bpw {args.target_bpw}: give bits per weight above 0 (e.g. 3.5)")
        return Target(bpw=args.target_bpw)
    if args.target_size is not None:
        return Target(file_bytes=parse_size(args.target_size))
    return Target(ram_bytes=parse_size(args.fit_ram), n_ctx=args.ctx_size, type_k=args.cache_type_k,
                  type_v=args.cache_type_v, n_threads=args.threads or 2)  # fmt: skip


def cmd_quantize_to_target(args: argparse.Namespace, target) -> int:
    from ferrollm.quant.allocate import describe, quantize_to_target

    start = time.perf_counter()
    types = tuple(t.strip().upper() for t in args.types.split(",")) if args.types else None
    calibration = pathlib.Path(args.calibration) if args.calibration else None  # a str would be the text
    result = quantize_to_target(
        args.input, args.output, target, imatrix=args.imatrix, calibration=calibration,
        measurement=args.measurement, types=types, anchors=None if args.anchors == 0 else args.anchors,
        n_tokens=args.measure_tokens, error_rows=args.error_rows, threads=args.threads, progress=None if args.quiet else ProgressBar(sys.stderr),
        log=lambda msg: print(msg, file=sys.stderr), ray_address=args.ray_address,
    )  # fmt: skip
    describe(result)
    seconds = result.measurement.seconds.get("total", 0.0)
    how = f"measured in {seconds:.1f} s" if result.measured else f"measurement reused from {args.measurement}"
    print(f"wrote {args.output}: {result.allocation.file_bytes} bytes ({_size(result.allocation.file_bytes)}) "
          f"for {target.describe()}, {how}, {time.perf_counter() - start:.1f} s in all")  # fmt: skip
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    target = _allocation_target(args)
    if target is not None:
        return cmd_quantize_to_target(args, target)
    start = time.perf_counter()
    bar = None if args.quiet else ProgressBar(sys.stderr)
    written = quantize_file(args.input, args.output, args.type, imatrix=args.imatrix, pure=args.pure,
                            threads=args.threads, progress=bar, token_embedding_type=args.token_embedding_type,
                            output_tensor_type=args.output_tensor_type)  # fmt: skip
    counts = Counter(written.values())
    size = _size(os.path.getsize(args.output))
    print(f"wrote {args.output}: {size} in {time.perf_counter() - start:.1f} s, "
          + ", ".join(f"{n} x {t}" for t, n in counts.most_common()))  # fmt: skip
    return 0


def cmd_imatrix(args: argparse.Namespace) -> int:
    from ferrollm.atomic import check_output

    check_output(args.output, [args.model, args.file])
    with open(args.file, encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = time.perf_counter()

    def progress(done: int, total: int, ppl: float) -> None:
        print(
            f"[{done}/{total}] {ppl:.4f} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True
        )

    im, ppl = collect_imatrix(args.model, text, n_ctx=args.ctx_size, n_chunks=args.chunks, n_threads=args.threads,
                              n_batch=args.batch_size, dataset=os.path.basename(args.file), progress=progress)  # fmt: skip
    im.save(args.output)
    tokens = im.chunk_count * im.chunk_size
    print(f"wrote {args.output}: {len(im.entries)} tensors from {im.chunk_count} chunks ({tokens} tokens), "
          f"PPL {ppl:.4f}, {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ferrollm.serve import ServerConfig, run

    config = ServerConfig(
        model_path=args.model, n_slots=args.parallel, n_ctx=args.ctx_size, n_threads=args.threads,
        type_k=args.cache_type_k, type_v=args.cache_type_v, api_key=args.api_key, chat_format=args.chat_format,
        overrides=dict(parse_override(o) for o in args.override_kv or []), max_queue=args.max_queue,
        timeout=args.timeout, step_tokens=args.batch_size, model_alias=args.alias,
        max_body_bytes=args.max_body_bytes,
    )  # fmt: skip
    if args.ray_address:
        from ferrollm.serve import replicas

        replicas.run(config, args.ray_address, args.replicas, args.threads or 1, args.host, args.port)
        return 0
    run(config, host=args.host, port=args.port)
    return 0


def _report_written(out: str, written: dict | None, start: float) -> None:
    size = _size(os.path.getsize(out)) if os.path.isfile(out) else "directory"
    counts = Counter((written or {}).values())
    print(f"wrote {out}: {size} in {time.perf_counter() - start:.1f} s"
          + "".join(f", {n} x {t}" for t, n in counts.most_common()))  # fmt: skip


def _write_model(tool, source: str, args: argparse.Namespace) -> int:
    """convert, merge and moe: ``tool(source, output, outtype, ...)``, with a progress bar."""
    start = time.perf_counter()
    bar = None if args.quiet else ProgressBar(sys.stderr)
    written = tool(
        source, args.output, args.outtype, imatrix=args.imatrix, threads=args.threads, progress=bar
    )
    _report_written(args.output, written, start)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ferrollm.checkpoints.convert import convert, convert_to_target

    if args.target_bpw is None:
        return _write_model(convert, args.model_dir, args)
    from ferrollm.quant.allocate import describe

    if args.outtype.lower() != "auto":
        raise ValueError(f"give --outtype {args.outtype} or --target-bpw, not both: the allocation chooses every "
                         "tensor's type")  # fmt: skip
    start = time.perf_counter()
    bar = None if args.quiet else ProgressBar(sys.stderr)
    calibration = pathlib.Path(args.calibration) if args.calibration else None  # a str would be the text
    result = convert_to_target(args.model_dir, args.output, args.target_bpw, imatrix=args.imatrix,
                               calibration=calibration, measurement=args.measurement, threads=args.threads,
                               progress=bar, log=lambda msg: print(msg, file=sys.stderr),
                               ray_address=args.ray_address)  # fmt: skip
    describe(result)
    how = "measured" if result.measured else f"measurement reused from {args.measurement}"
    print(f"wrote {args.output}: {result.allocation.file_bytes} bytes ({_size(result.allocation.file_bytes)}) "
          f"at {result.allocation.bpw:.4f} bpw, {how}, {time.perf_counter() - start:.1f} s in all")  # fmt: skip
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ferrollm.merge import merge

    return _write_model(merge, args.config, args)


def cmd_moe(args: argparse.Namespace) -> int:
    from ferrollm.moe import moe

    return _write_model(moe, args.config, args)


def read_text(path: str) -> str:
    """A UTF-8 text file, or an error that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); give a text file") from None


def count_arg(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_arg(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def threads_arg(text: str) -> int | None:
    """An argparse type: a thread count >= 1, or -1 for the default (llama.cpp's convention)."""
    value = int(text)
    if value == -1:
        return None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (or -1: one per physical core), got {value}")
    return value


def _model_path_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None, help="GGUF file (default: the embedded demo model)")


def _model_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's main/llama-cli options, same spellings."""
    _model_path_option(p)
    p.add_argument(
        "-n", "--n-predict", type=int, default=-1, help="tokens to generate (-1: until EOS or full context)"
    )
    p.add_argument(
        "-c", "--ctx-size", type=count_arg, default=None, help="context length (default: min(4096, trained))"
    )
    p.add_argument(
        "-t", "--threads", type=threads_arg, default=None, help="threads (default: physical cores)"
    )
    p.add_argument(
        "-b", "--batch-size", type=positive_arg, default=512, help="prompt tokens per forward pass"
    )
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("-s", "--seed", type=int, default=-1, help="-1: random")
    p.add_argument("--override-kv", action="append", metavar="KEY=TYPE:VALUE",
                   help="e.g. llama.expert_used_count=int:3 (repeatable)")  # fmt: skip
    p.add_argument("-ctk", "--cache-type-k", default="f16", choices=["f16", "q8_0", "q4_0"])
    p.add_argument("-ctv", "--cache-type-v", default="f16", choices=["f16", "q8_0", "q4_0"])
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="accepted and ignored (CPU only)")
    p.add_argument("--color", action="store_true", help="accepted and ignored")
    p.add_argument("--no-progress", action="store_true", help="no loading bar")
    p.add_argument("--check-tensors", action="store_true", help="scan every weight for NaN/Inf at load")


def _stream_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that write a model tensor by tensor (convert, merge, moe)."""
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix for the quantized types")
    p.add_argument(
        "-t", "--threads", type=threads_arg, default=None, help="quantizer threads (default: all cores)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferrollm", description="Quantized LLMs on the CPU.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--version", action="version", version=f"ferrollm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="show a GGUF file's metadata and tensors")
    info.add_argument("file")
    info.add_argument("--all", action="store_true", help="list every tensor")
    info.set_defaults(run=cmd_info)

    synth = sub.add_parser("synth", help="write a small GGUF of random valid blocks")
    synth.add_argument("out")
    synth.add_argument("--types", help=f"comma-separated types (default: {','.join(DEMO_TYPES)})")
    synth.add_argument("--rows", type=int, default=16)
    synth.add_argument("--row-len", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    run = sub.add_parser("run", help="generate text from a prompt (llama.cpp's main)")
    _model_options(run)
    run.add_argument("-p", "--prompt", help="the text to continue (with -ins: the system message)")
    run.add_argument(
        "-e", "--escape", action="store_true", default=True, help="turn \\n in the prompt into newlines"
    )
    run.add_argument("-r", "--reverse-prompt", action="append",
                     help="stop at this string; with -i: hand over to the user there (repeatable)")  # fmt: skip
    run.add_argument("-i", "--interactive", action="store_true",
                     help="take turns with the model: it writes until -r, end of text or -n tokens, then you")  # fmt: skip
    run.add_argument("--interactive-first", action="store_true", help="-i, and the user writes first")
    run.add_argument("--in-prefix", default="", help="with -i: text put before each line the user types")
    run.add_argument("--in-suffix", default="", help="with -i: text put after each line the user types")
    run.add_argument("-ins", "--instruct", action="store_true",
                     help="chat in the model's chat template (llama.cpp's -ins/-cnv); -p is the system message")  # fmt: skip
    run.add_argument("-cnv", "--conversation", action="store_true", help="the same as -ins")
    run.add_argument("-cml", "--chatml", action="store_true", help="-ins in the ChatML format")
    run.add_argument(
        "--chat-format", choices=sorted(BUILTIN_FORMATS), help="with -ins: instead of the file's template"
    )
    run.add_argument("--profile", action="store_true", help="print where each decoded token's time went")
    run.set_defaults(run=cmd_run)

    pl = sub.add_parser("plan", help="the RAM a run needs, and whether it fits this machine")
    pl.add_argument("file")
    pl.add_argument(
        "-c", "--ctx-size", type=count_arg, default=4096, help="context (default 4096; 0: the trained one)"
    )
    pl.add_argument("-ctk", "--cache-type-k", default="f16", help="K cache type: f16, q8_0, q4_0")
    pl.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache type: f16, q8_0, q4_0")
    pl.add_argument("-b", "--batch-size", type=positive_arg, default=512)
    pl.add_argument("-t", "--threads", type=threads_arg, default=None)
    pl.set_defaults(run=cmd_plan)

    chat = sub.add_parser("chat", help="interactive chat using the model's chat template")
    _model_options(chat)
    chat.add_argument("--chat-format", choices=sorted(BUILTIN_FORMATS), help="instead of the file's template")
    chat.add_argument("--system", help="system message")
    chat.set_defaults(run=cmd_chat)

    ppl = sub.add_parser(
        "perplexity", help="perplexity of a text; KL-divergence against a base (llama-perplexity)"
    )
    _model_path_option(ppl)
    ppl.add_argument("-f", "--file", required=True, help="text file to score")
    ppl.add_argument(
        "-c", "--ctx-size", type=count_arg, default=512, help="chunk length in tokens (default 512)"
    )
    ppl.add_argument("-b", "--batch-size", type=positive_arg, default=512)
    ppl.add_argument("-t", "--threads", type=threads_arg, default=None)
    ppl.add_argument("--chunks", type=int, default=-1, help="score at most this many chunks (-1: all)")
    ppl.add_argument(
        "--kl-divergence-base",
        metavar="FILE",
        help="without --kl-divergence: save the model's log-probabilities here; with it: compare",
    )
    ppl.add_argument(
        "--kl-divergence", action="store_true", help="compare the model with --kl-divergence-base"
    )
    ppl.set_defaults(run=cmd_perplexity)

    qz = sub.add_parser("quantize", help="write a model in another type or named mix (llama-quantize)")
    qz.add_argument("input")
    qz.add_argument("output")
    qz.add_argument("type", type=str.upper, metavar="TYPE", nargs="?",
                    help=f"a mix ({', '.join(MIXES)}; Q4_K = Q4_K_M) or, with --pure, a tensor type; "
                    "omitted with a target")  # fmt: skip
    qz.add_argument(
        "--imatrix", metavar="FILE", help="importance matrix (.dat or .gguf, llama.cpp's or ours)"
    )
    qz.add_argument("--pure", action="store_true", help="every weight matrix in TYPE (no mix rules)")
    qz.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight")
    qz.add_argument("--output-tensor-type", metavar="TYPE", help="type of output.weight")
    qz.add_argument("-t", "--threads", type=threads_arg, default=None, help="threads (default: all cores)")
    qz.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    alloc = qz.add_argument_group("allocation by measurement (instead of TYPE)")
    alloc.add_argument("--target-bpw", type=float, metavar="B",
                       help="bits per weight of the quantized matrices (norms and routers excluded)")  # fmt: skip
    alloc.add_argument(
        "--target-size", metavar="BYTES", help="the whole file's size at most (e.g. 5123456, 4.8GiB)"
    )
    alloc.add_argument(
        "--fit-ram", metavar="SIZE", help="file + KV cache + buffers at context -c within SIZE (16GiB)"
    )
    alloc.add_argument(
        "-c", "--ctx-size", type=count_arg, default=4096, help="with --fit-ram: the context (default 4096)"
    )
    alloc.add_argument("-ctk", "--cache-type-k", default="f16", help="with --fit-ram: K cache type")
    alloc.add_argument("-ctv", "--cache-type-v", default="f16", help="with --fit-ram: V cache type")
    alloc.add_argument("--calibration", metavar="TEXT", help="calibration text file for the measurement")
    alloc.add_argument(
        "--measurement", metavar="M.json", help="save the measurement here; reused when it matches"
    )
    alloc.add_argument(
        "--types", help="candidate types, comma-separated (default: the K and IQ types and Q8_0)"
    )
    alloc.add_argument("--anchors", type=int, default=4,
                       help="types measured by KLD per tensor, the rest placed by the proxy (0: all; default 4)")  # fmt: skip
    alloc.add_argument(
        "--measure-tokens", type=int, default=2048, help="calibration tokens scored per measurement"
    )
    alloc.add_argument("--ray-address", default=None, metavar="ADDR|auto",
                       help="measure the tensors as tasks of --threads CPUs (default 1) on this Ray cluster (auto: the local one, started "
                       "if none runs); every node reads the model and --measurement's folder")  # fmt: skip
    alloc.add_argument("--error-rows", type=int, default=None, metavar="N",
                       help="sum the proxy error over N rows per matrix (large models: 1024; default all)")  # fmt: skip
    qz.set_defaults(run=cmd_quantize)

    imx = sub.add_parser("imatrix", help="collect an importance matrix over calibration text (llama-imatrix)")
    _model_path_option(imx)
    imx.add_argument("-f", "--file", required=True, help="calibration text")
    imx.add_argument("-o", "--output", default="imatrix.dat", help="output: .dat (legacy) or .gguf")
    imx.add_argument(
        "-c", "--ctx-size", type=count_arg, default=512, help="chunk length in tokens (default 512)"
    )
    imx.add_argument("--chunks", type=int, default=-1, help="use at most this many chunks (-1: all)")
    imx.add_argument("-b", "--batch-size", type=positive_arg, default=512)
    imx.add_argument("-t", "--threads", type=threads_arg, default=None)
    imx.set_defaults(run=cmd_imatrix)

    srv = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server with continuous batching (llama-server)"
    )
    _model_path_option(srv)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument(
        "-np", "--parallel", type=positive_arg, default=4, help="slots: sequences decoded together"
    )
    srv.add_argument("-c", "--ctx-size", type=count_arg, default=0,
                     help="context of all slots together (default: each slot min(4096, trained))")  # fmt: skip
    srv.add_argument("-t", "--threads", type=threads_arg, default=None)
    srv.add_argument("-b", "--batch-size", type=positive_arg, default=256,
                     help="tokens per forward pass: decoding slots plus prompt chunks")  # fmt: skip
    srv.add_argument("-ctk", "--cache-type-k", default="f16", choices=["f16", "q8_0", "q4_0"])
    srv.add_argument("-ctv", "--cache-type-v", default="f16", choices=["f16", "q8_0", "q4_0"])
    srv.add_argument("--api-key", default=os.environ.get("FERROLLM_API_KEY"), help="require this bearer key")
    srv.add_argument(
        "--chat-format", default=None, help="a built-in chat format instead of the file's template"
    )
    srv.add_argument("--override-kv", action="append", metavar="KEY=TYPE:VALUE")
    srv.add_argument("--alias", default=None, help="the model name the API reports")
    srv.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    srv.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take")
    srv.add_argument("--max-body-bytes", type=int, default=8 * 2**20,
                     help="larger request bodies are refused with 413 (default 8 MiB)")  # fmt: skip
    srv.add_argument("--ray-address", default=None, metavar="ADDR|auto",
                     help="serve as Ray Serve replicas on this cluster (auto: the local one, started if "
                     "none runs); needs ferrollm[ray]")  # fmt: skip
    srv.add_argument("--replicas", type=positive_arg, default=2,
                     help="with --ray-address: copies of the model, each on --threads CPUs (default 1)")  # fmt: skip
    srv.set_defaults(run=cmd_serve)

    cv = sub.add_parser(
        "convert", help="a Hugging Face or EXL2 Llama/Mistral/Mixtral checkpoint to GGUF, any type"
    )
    cv.add_argument(
        "model_dir", metavar="HF_DIR", help="a Hugging Face directory (float or EXL2 safetensors)"
    )
    cv.add_argument("output", metavar="OUT.gguf")
    cv.add_argument(
        "--outtype", default="auto", help="auto, f32, f16, bf16, q8_0, a tensor type or a mix (Q4_K_M, ...)"
    )
    _stream_options(cv)
    cv.add_argument("--target-bpw", type=float, metavar="B",
                    help="instead of --outtype: each tensor's type chosen by measurement to fit B bits per weight")  # fmt: skip
    cv.add_argument(
        "--calibration", metavar="TEXT", help="with --target-bpw: calibration text for the measurement"
    )
    cv.add_argument(
        "--measurement", metavar="M.json", help="with --target-bpw: saved here, reused when it matches"
    )
    cv.add_argument("--ray-address", default=None, metavar="ADDR|auto",
                    help="with --target-bpw: measure on this Ray cluster (see quantize --ray-address)")  # fmt: skip
    cv.set_defaults(run=cmd_convert)

    mg = sub.add_parser(
        "merge", help="merge models with a mergekit YAML (slerp, ties, dare, passthrough, ...)"
    )
    mg.add_argument("config", metavar="CONFIG.yml")
    mg.add_argument("output", metavar="OUT", help="a .gguf file, or else a Hugging Face directory")
    mg.add_argument(
        "--outtype", default=None, help="f32, f16, bf16, q8_0, a tensor type or mix (default: dtype)"
    )
    _stream_options(mg)
    mg.set_defaults(run=cmd_merge)

    mo = sub.add_parser("moe", help="a Mixtral frankenMoE from dense models with a mergekit-moe YAML")
    mo.add_argument("config", metavar="CONFIG.yml")
    mo.add_argument("output", metavar="OUT.gguf")
    mo.add_argument(
        "--outtype", default=None, help="f32, f16, bf16, q8_0, a tensor type or mix (default: dtype)"
    )
    _stream_options(mo)
    mo.set_defaults(run=cmd_moe)

    sm = sub.add_parser("synth-model", help="write a small random-weight llama/Mixtral GGUF")
    sm.add_argument("out")
    sm.add_argument("--type", default="Q8_0", help="weight type (default Q8_0)")
    sm.add_argument(
        "--shape", choices=sorted(SHAPES), help="a benchmark shape (the other sizes are then ignored)"
    )
    sm.add_argument("--experts", type=int, default=0, help="0: dense; else a Mixtral-style MoE")
    sm.add_argument("--layers", type=int, default=2)
    sm.add_argument("--embd", type=int, default=256)
    sm.add_argument("--ff", type=int, default=512)
    sm.add_argument("--heads", type=int, default=8)
    sm.add_argument("--kv-heads", type=int, default=2)
    sm.add_argument("--vocab", type=int, default=512)
    sm.add_argument("--ctx", type=int, default=2048)
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(run=cmd_synth_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "") is None:
        args.model = demo_model_path()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (GGUFError, ValueError, OSError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"ferrollm: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if args.debug:
            raise
        print(f"ferrollm: error: {type(e).__name__}: {e} (an input ferrollm did not expect, or a bug: "
              "--debug shows the traceback)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
