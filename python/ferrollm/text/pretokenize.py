"""Pre-tokenizers of byte-level BPE vocabularies, by ``tokenizer.ggml.pre`` (llama.cpp's names).

A pre-tokenizer is a list of regexes applied in turn: each one splits every piece left by the
previous one into its matches and the text between them (Hugging Face's ``Split`` with the
``isolated`` behaviour, which is how llama.cpp's ``unicode_regex_split`` cascades too). BPE then
merges inside each piece only.

The regexes are the ones llama.cpp lists for each pre-tokenizer type; where llama.cpp rewrote a
Hugging Face regex for C++'s ``std::regex`` (``(?i:'s)`` spelled ``'[sS]``, possessive
quantifiers dropped, ``\\p{Lu}`` emulated by lookaheads), the original ``tokenizer.json`` regex is
used: the ``tokenizers`` library runs it as written, and the expected ids come from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # llama.cpp's pre-tokenizer type this name maps to
    splits: tuple[str, ...]
    # A piece that is a whole vocabulary entry is one token, merges or not (Llama 3's tiktoken rule).
    ignore_merges: bool = False
    # GPT-2's byte-to-character map before BPE; False for SentencePiece-style BPE on raw UTF-8.
    byte_level: bool = True
    # Spaces become U+2581 before splitting (SentencePiece-style BPE: Gemma 4).
    escape_spaces: bool = False
    # BOS added by default when the file has no tokenizer.ggml.add_bos_token.
    add_bos: bool = False

    def hf_pre_tokenizer(self) -> pre_tokenizers.PreTokenizer:
        steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in self.splits]
        if self.byte_level:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        return pre_tokenizers.Sequence(steps)


# The regexes, by llama.cpp's LLAMA_VOCAB_PRE_TYPE_* (lower case).
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CASED_WORDS = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
)
GPT4O = _CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_ASCII_PUNCT_WORD = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
_CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DEEPSEEK_LLM_LETTERS = (  # escaped: some of these characters change under Unicode normalization
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102"
    "\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_FINNISH = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_NEWLINE_RUNS = r"[^\n]+|[\n]+"
_DEEPSEEK3_WORDS = (
    _ASCII_PUNCT_WORD
    + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_KIMI_UPPER, _KIMI_LOWER = (
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]",
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]",
)

SPLITS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "llama3": (LLAMA3,),
    "jais2": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        + "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}",
    ),
    "deepseek-llm": (
        "[\r\n]", _DEEPSEEK_LLM_LETTERS, "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", r"\s+$", _CJK_HANGUL, r"\p{N}+",
    ),
    "deepseek3-llm": (r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_WORDS),
    "spark2_5": (
        r"\p{N}{1,3}", _CJK_KANA,
        _ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}",
    ),
    "youtu": (
        "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|" + _CJK_KANA,
        _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", GPT2),
    "gpt2": (GPT2,),
    "qwen2": (QWEN2,),
    "qwen35": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "poro": (_FINNISH,),
    "viking": (_FINNISH, r"\p{N}"),
    "tekken": (
        (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    ),
    "chameleon": (
        "<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]", GPT2,
    ),
    "gpt4o": (GPT4O,),
    "tiny-aya": (r"\d{1,3}(?=(?:\d{3})*\b)", GPT4O),
    "kimi-k2": (
        (rf"[\p{{Han}}]+|[^\r\n\p{{L}}\p{{N}}]?{_KIMI_UPPER}*{_KIMI_LOWER}+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?{_KIMI_UPPER}+{_KIMI_LOWER}*{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    ),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "bailingmoe": (
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "seed-coder": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "afmoe": (
        # llama.cpp's custom digit rule: a run of digits in groups of three from the right.
        r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
        ("[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
        "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+"),
        _DEEPSEEK3_WORDS,
    ),
    "laguna": (_NEWLINE_RUNS, QWEN2),
    "exaone-moe": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "newline-runs": (_NEWLINE_RUNS,),
    "minicpm5": (
        r"\p{N}{1,3}",
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "whitespace": (r"\S+",),
}  # fmt: skip


def _pre(kind: str, **flags) -> PreTokenizer:
    return PreTokenizer(kind, SPLITS[kind], **flags)


# tokenizer.ggml.pre -> pre-tokenizer, every name llama.cpp (llama-vocab.cpp) accepts.
_NAMES: dict[str, PreTokenizer] = {}
for _names, _p in [
    (("default",), _pre("default")),
    (("minicpm5",), _pre("minicpm5", ignore_merges=True)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     _pre("llama3", ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe", "chatglm-bpe"), _pre("llama3")),
    (("glm4", "glm5"), _pre("llama3", ignore_merges=True)),
    (("deepseek-llm",), _pre("deepseek-llm")),
    (("deepseek-coder",), _pre("deepseek-coder")),
    (("deepseek-v3", "hunyuan-dense", "hy_v4", "joyai-llm"), _pre("deepseek3-llm")),
    (("spark2_5",), _pre("spark2_5")),
    (("youtu",), _pre("youtu", ignore_merges=True)),
    (("falcon",), _pre("falcon")),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
     _pre("starcoder")),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "trillion",
      "granite-docling", "exaone4"), _pre("gpt2")),
    (("jais-2",), _pre("jais2")),
    (("gemma4", "granite-embed-multi-311m", "sarvam-moe"),
     _pre("newline-runs", byte_level=False, escape_spaces=True)),
    (("whitespace",), _pre("whitespace", byte_level=False)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan", "solar-open"),
     _pre("qwen2")),
    (("qwen35",), _pre("qwen35")),
    (("poro-chat", "bloom", "gpt3-finnish"), _pre("poro")),
    (("viking",), _pre("viking")),
    (("tekken",), _pre("tekken", ignore_merges=True, add_bos=True)),
    (("chameleon",), _pre("chameleon", add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _pre("gpt4o")),
    (("granite-embed-multi-97m",), _pre("gpt4o", ignore_merges=True)),
    (("tiny_aya", "cohere2moe"), _pre("tiny-aya")),
    (("superbpe",), _pre("superbpe")),
    (("bailingmoe", "bailingmoe2", "llada-moe"), _pre("bailingmoe")),
    (("seed-coder",), _pre("seed-coder")),
    (("kimi-k2",), _pre("kimi-k2")),
    (("ufakzeka",), _pre("ufakzeka")),
    (("grok-2",), _pre("qwen2")),
    (("afmoe",), _pre("afmoe")),
    (("laguna",), _pre("laguna")),
    (("exaone-moe",), _pre("exaone-moe")),
]:  # fmt: skip
    for _name in _names:
        _NAMES[_name] = _p
PRE_TOKENIZERS: dict[str, PreTokenizer] = dict(sorted(_NAMES.items()))
del _NAMES


def pre_tokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre = name``. A missing or unknown
    name falls back to llama.cpp's ``default`` with a warning (llama.cpp itself refuses an
    unknown name)."""
    if name is None:
        warnings.warn(
            "the file has no tokenizer.ggml.pre; using the 'default' BPE pre-tokenizer "
            "(as llama.cpp does; token ids may differ from the model's own tokenizer)",
            stacklevel=3,
        )
        return PRE_TOKENIZERS["default"]
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        warnings.warn(
            f"unknown BPE pre-tokenizer tokenizer.ggml.pre = {name!r}; using 'default' instead "
            "(token ids may differ from the model's own tokenizer)",
            stacklevel=3,
        )
        return PRE_TOKENIZERS["default"]
