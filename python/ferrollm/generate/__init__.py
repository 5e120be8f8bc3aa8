"""From logits to tokens: sampling, logits processors, grammars, log-probabilities, tool calls
and their syntaxes, speculative decoding, batched evaluation, embeddings and saved states.
"""
