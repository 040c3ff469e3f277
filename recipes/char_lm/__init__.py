"""A byte-level transformer language model trained on Python's own documentation (``pydoc_data``, no download).

A decoder-only transformer of four blocks, width 128, predicts the next byte of the standard library's topic
help from the 64 before it, with pre-norm LayerNorm, RMSNorm, or no normalisation layer at all.

Example::

    lightning-opt fit --config configs/char_lm.yaml                       # AdamW, lr 1e-3
    lightning-opt fit --config configs/char_lm_nonorm.yaml                # the same without any norm layer
    lightning-opt fit --config configs/char_lm.yaml --optimizer AdaLo     # any optimizer of the package
"""

from lightning_opt.recipes.char_lm.data import CharLMDataModule, decode, encode, load_text, unigram_cross_entropy
from lightning_opt.recipes.char_lm.model import CharTransformer

__all__ = ["CharLMDataModule", "CharTransformer", "decode", "encode", "load_text", "unigram_cross_entropy"]
