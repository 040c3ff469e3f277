"""``CharLMDataModule``: the bytes of Python's own documentation (``pydoc_data.topics``) as windows of tokens.

The text is the help of the interpreter's statements, operators and special methods that ``help("assert")``
shows: ``pydoc_data.topics.topics`` maps about 80 topic names to plain text and ships with every CPython
(no download). Its content follows the Python version: 466,273 bytes under 3.11.7, a few more or less under
another version, so the split and the numbers are reproducible for one Python version.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_opt.recipes.loaders import TrainValDataModule
from lightning_opt.validation import check_float, check_positive_int

VOCAB_SIZE = 256
"""Byte-level tokens: every byte value is a token, so no vocabulary is built and nothing is out of vocabulary."""

TOPIC_SEPARATOR = "\n\n"
"""What separates two topics in the joined text."""


def load_text() -> str:
    """Every topic of ``pydoc_data.topics``, in sorted order of the topic names, joined by a blank line.

    Example:
        >>> text = load_text()
        >>> text.startswith('The "assert" statement') and len(text) > 100_000
        True
    """
    from pydoc_data.topics import topics

    return TOPIC_SEPARATOR.join(topics[name] for name in sorted(topics))


def encode(text: str) -> torch.Tensor:
    """The UTF-8 bytes of ``text`` as an int64 tensor of token ids in ``[0, 256)``.

    Args:
        text: any string; the empty one gives an empty tensor.

    Example:
        >>> encode("Hé")
        tensor([ 72, 195, 169])
    """
    if not isinstance(text, str):
        raise ValueError(f"Invalid text: {type(text).__name__} (expected a str)")
    data = bytearray(text.encode("utf-8"))
    if not data:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(data, dtype=torch.uint8).long()


def decode(tokens: torch.Tensor) -> str:
    """The text of byte tokens (``encode``'s inverse); bytes that are no valid UTF-8 become U+FFFD.

    Args:
        tokens: an integer tensor of any shape (read in row-major order) of ids in ``[0, 256)``.

    Raises:
        ValueError: for a floating-point tensor or an id outside ``[0, 256)`` (no silent wrap-around).

    Example:
        >>> decode(encode("naïve"))
        'naïve'
    """
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"Invalid tokens: dtype {tokens.dtype} (expected integer byte ids)")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= VOCAB_SIZE):
        raise ValueError(
            f"Invalid tokens: values in [{int(tokens.min())}, {int(tokens.max())}] (expected ids in [0, {VOCAB_SIZE}))"
        )
    return bytes(tokens.flatten().tolist()).decode("utf-8", errors="replace")


def split_blocks(
    num_tokens: int, block_size: int, val_fraction: float, split_seed: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Cut ``range(num_tokens)`` into contiguous blocks and hold out a seeded random share of them for validation.

    Blocks are ``[k * block_size, (k + 1) * block_size)`` (the last one shorter). ``round(val_fraction *
    blocks)`` of them, at least one and never all, chosen by a permutation drawn from a generator seeded
    with ``split_seed`` (not the global seed), are validation blocks. Each block is held out whole, so a
    validation window never shares a token with a training window, and whole paragraphs are unseen.

    Args:
        num_tokens: length of the token stream.
        block_size: tokens per block; at least 2, so that a block holds an input and its target.
        val_fraction: share of the blocks held out, in (0, 1).
        split_seed: seed of the choice of blocks.

    Returns:
        ``(train_blocks, val_blocks)``: sorted lists of ``(start, stop)`` half-open ranges.

    Raises:
        ValueError: with fewer than two blocks (nothing to split).

    Example:
        >>> train, val = split_blocks(1000, 100, val_fraction=0.2, split_seed=0)
        >>> len(train), len(val), sorted(train + val)[:2]
        (8, 2, [(0, 100), (100, 200)])
    """
    starts = list(range(0, num_tokens, block_size))
    if len(starts) < 2:
        raise ValueError(f"Invalid block_size: {block_size!r} (the text of {num_tokens} tokens must give >= 2 blocks)")
    blocks = [(start, min(start + block_size, num_tokens)) for start in starts]
    num_val = min(len(blocks) - 1, max(1, round(val_fraction * len(blocks))))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(split_seed)).tolist()
    held_out = set(order[:num_val])
    train = [block for index, block in enumerate(blocks) if index not in held_out]
    val = [block for index, block in enumerate(blocks) if index in held_out]
    return train, val


def window_starts(blocks: list[tuple[int, int]], context: int) -> torch.Tensor:
    """The first position of every window of ``context + 1`` tokens tiled over each block with stride ``context``.

    Consecutive windows of a block overlap by one token, the last target of one being the first input of
    the next, so every token of a block but its first is a target exactly once. The block's tail that
    cannot fill a whole window is dropped; no window crosses a block boundary.

    Args:
        blocks: ``(start, stop)`` ranges, as :func:`split_blocks` returns them.
        context: tokens each window feeds the model.

    Returns:
        An int64 tensor of start positions, block by block.

    Example:
        >>> window_starts([(0, 10), (20, 25)], context=4)
        tensor([ 0,  4, 20])
    """
    starts = [position for start, stop in blocks for position in range(start, stop - context, context)]
    return torch.tensor(starts, dtype=torch.int64)


class TokenWindows(Dataset):
    """Windows of a token stream: item ``i`` is ``(inputs, targets)``, two int64 tensors of ``context`` tokens.

    ``inputs = tokens[s : s + context]`` and ``targets = tokens[s + 1 : s + context + 1]`` for the ``i``-th
    start position ``s``.

    Args:
        tokens: the whole token stream, 1-D int64.
        starts: the start position of each window.
        context: tokens per window.

    Example:
        >>> windows = TokenWindows(torch.arange(10), torch.tensor([0, 4]), context=4)
        >>> windows[1]
        (tensor([4, 5, 6, 7]), tensor([5, 6, 7, 8]))
    """

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, context: int) -> None:
        self.tokens = tokens
        self.starts = starts
        self.context = context

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self.tokens[start : start + self.context + 1]
        return window[:-1], window[1:]


def unigram_cross_entropy(train_tokens: torch.Tensor, val_tokens: torch.Tensor) -> float:
    """Validation loss, in nats per token, of the best context-free model: the training bytes' frequencies.

    Add-one (Laplace) smoothing over the 256 byte values keeps a byte unseen in training finite. A language
    model that does not beat this has learnt nothing about order.

    Args:
        train_tokens: the training tokens (any shape), ids in ``[0, 256)``.
        val_tokens: the validation tokens.

    Example:
        >>> round(unigram_cross_entropy(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])), 4)  # p = 3/260
        4.4621
    """
    counts = torch.bincount(train_tokens.flatten(), minlength=VOCAB_SIZE).double() + 1.0
    log_probabilities = counts.log() - math.log(float(counts.sum()))
    return float(-log_probabilities[val_tokens.flatten()].mean())


class CharLMDataModule(TrainValDataModule):
    """Byte-level language modelling on Python's documentation (:func:`load_text`): windows of ``context`` bytes.

    The text's UTF-8 bytes are cut into blocks of ``block_size``; a share ``val_fraction`` of the blocks,
    chosen by ``split_seed`` (independently of the run's ``seed_everything``), is held out for validation
    (:func:`split_blocks`). Each side is tiled into windows of ``context`` inputs and their next-byte targets
    (:func:`window_starts`), so an epoch is one pass over the training bytes, each one a target once. The
    training windows are shuffled with the global (seeded) generator; validation keeps its order. Loading
    happens in the main process (``num_workers=0``): the data is half a megabyte.

    Args:
        context: tokens per window (the model's context length).
        batch_size: windows per training and validation batch.
        block_size: tokens per block of the train/validation split; at least ``context + 1``.
        val_fraction: share of the blocks held out for validation, in (0, 1).
        split_seed: seed of the train/validation split.

    Example:
        >>> data = CharLMDataModule(context=64, batch_size=32)
        >>> data.setup("fit")
        >>> inputs, targets = next(iter(data.val_dataloader()))
        >>> inputs.shape, targets.shape, bool((inputs[:, 1:] == targets[:, :-1]).all())
        (torch.Size([32, 64]), torch.Size([32, 64]), True)
    """

    def __init__(
        self,
        context: int = 64,
        batch_size: int = 32,
        block_size: int = 4096,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int("context", context)
        check_positive_int("batch_size", batch_size)
        check_positive_int("block_size", block_size)
        if block_size < context + 1:
            raise ValueError(f"Invalid block_size: {block_size!r} (expected >= context + 1 = {context + 1})")
        check_float("val_fraction", val_fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ValueError(f"Invalid split_seed: {split_seed!r} (expected an integer)")
        self.save_hyperparameters()
        self.context = context
        self.batch_size = batch_size
        self.block_size = block_size
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.tokens: torch.Tensor | None = None
        self.train_blocks: list[tuple[int, int]] = []
        self.val_blocks: list[tuple[int, int]] = []
        self.train_dataset: TokenWindows | None = None
        self.val_dataset: TokenWindows | None = None

    @override
    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        self.tokens = encode(load_text())
        self.train_blocks, self.val_blocks = split_blocks(
            len(self.tokens), self.block_size, self.val_fraction, self.split_seed
        )
        self.train_dataset = TokenWindows(self.tokens, window_starts(self.train_blocks, self.context), self.context)
        self.val_dataset = TokenWindows(self.tokens, window_starts(self.val_blocks, self.context), self.context)

    def split_tokens(self, stage: str) -> torch.Tensor:
        """All tokens of the ``"train"`` or ``"val"`` blocks, concatenated (after :meth:`setup`).

        Example:
            >>> data = CharLMDataModule()
            >>> data.setup("fit")
            >>> len(data.split_tokens("train")) + len(data.split_tokens("val")) == len(data.tokens)
            True
        """
        if self.tokens is None:
            raise RuntimeError("CharLMDataModule.tokens are not loaded yet: call setup() first")
        blocks = {"train": self.train_blocks, "val": self.val_blocks}[stage]
        return torch.cat([self.tokens[start:stop] for start, stop in blocks])

    def unigram_loss(self) -> float:
        """The validation loss of the training bytes' smoothed frequencies (:func:`unigram_cross_entropy`)."""
        return unigram_cross_entropy(self.split_tokens("train"), self.split_tokens("val"))
