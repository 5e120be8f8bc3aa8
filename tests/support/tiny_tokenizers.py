"""Tokenizer files for tiny test checkpoints; imports nothing of ferrollm, so that the oracle
virtualenv's scripts (tests/arch_checkpoint.py) can use them too."""

from __future__ import annotations


def bpe_tokenizer(path: str, vocab_size: int) -> None:
    """A byte-level BPE tokenizer.json: the 256 byte symbols, a few merges, <s> and </s> added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    alphabet.sort()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    merges = []
    for a, b in [("t", "h"), ("th", "e"), ("Ġ", "t"), ("i", "n"), ("e", "r"), ("a", "n")]:
        if len(vocab) < vocab_size:
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(path)
