"""Check that a TensorBoard event file is intact before reading it: TFRecord framing and checksums.

An event file is a sequence of TFRecords, each ``length`` (8 bytes, little-endian), ``masked_crc32c(length)``
(4 bytes), ``data`` (``length`` bytes: one serialized ``Event``) and ``masked_crc32c(data)`` (4 bytes).
TensorBoard's reader is built to follow files that are still being written: at a record that is cut short
or fails its checksum it stops without an error, so a damaged file reads as a shorter run.
:func:`check_event_file` walks the framing, verifies every checksum, and says where the intact part ends
and how many records it holds (exactly the records TensorBoard's reader returns before it stops).

A file cut exactly between two records is framed correctly and cannot be told from a shorter run.

Example:
    >>> crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    True

References:
    The TFRecord format: https://www.tensorflow.org/tutorials/load_data/tfrecord#tfrecords_format_details.
    CRC-32C (Castagnoli): RFC 3720, appendix B.4.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["DamagedEventFileError", "EventFileCheck", "check_event_file", "crc32c", "masked_crc32c"]

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
_FOOTER = struct.Struct("<I")  # masked crc32c of the data
_POLYNOMIAL = 0x82F63B78  # CRC-32C, reflected
_MASK_DELTA = 0xA282EAD8
_MIN_LANE, _MAX_LANE = 64, 1 << 16  # bytes per lane of the vectorised CRC
_BATCH_BYTES = 1 << 24  # the vectorised CRC handles blocks in batches of about this many bytes


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """The byte-wise CRC-32C table: ``table[b]`` is the register after feeding byte ``b`` to a zero register."""
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(_POLYNOMIAL), crc >> 1).astype(np.uint32)
    return crc


@lru_cache(maxsize=None)
def _zero_feed_tables(lane: int) -> np.ndarray:
    """``tables[k][b]``: the register ``b << 8k`` after ``lane`` zero bytes (a power of two). Feeding zeros is a
    linear map of the register, so the register ``r`` becomes the XOR of ``tables[k][byte k of r]``; the
    tables for ``2m`` bytes apply those for ``m`` twice."""
    table = _table()
    basis = np.arange(256, dtype=np.uint32) << (np.arange(4, dtype=np.uint32)[:, None] * np.uint32(8))
    if lane == 1:
        return table[basis & 0xFF] ^ (basis >> np.uint32(8))
    half = _zero_feed_tables(lane // 2)
    return _apply(half, _apply(half, basis))


def _apply(tables: np.ndarray, register: np.ndarray) -> np.ndarray:
    """The linear map given by ``tables`` (see :func:`_zero_feed_tables`) applied to every register."""
    eight = np.uint32(8)
    return (
        tables[0][register & 0xFF]
        ^ tables[1][(register >> eight) & 0xFF]
        ^ tables[2][(register >> np.uint32(16)) & 0xFF]
        ^ tables[3][register >> np.uint32(24)]
    )


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32C (Castagnoli) checksum of ``data``, as TFRecord framing uses it.

    Vectorised with numpy: ``data`` is cut into lanes that are checksummed side by side, then combined
    (the CRC is linear), about 50 times faster than a byte-by-byte loop in Python.

    Args:
        data: the bytes to checksum.

    Example:
        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
    """
    array = np.frombuffer(bytes(data), dtype=np.uint8)
    return int(_crc32c_blocks(array, np.zeros(1, dtype=np.int64), np.array([array.size], dtype=np.int64))[0])


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC-32C that TFRecord stores: the checksum rotated right by 15 bits plus ``0xa282ead8``.

    Example:
        >>> hex(masked_crc32c(b""))
        '0xa282ead8'
    """
    return int(_mask(np.array([crc32c(data)], dtype=np.uint32))[0])


def _mask(crc: np.ndarray) -> np.ndarray:
    rotated = (crc >> np.uint32(15)) | (crc << np.uint32(17))
    return rotated + np.uint32(_MASK_DELTA)  # uint32 arithmetic wraps modulo 2**32


def _crc32c_blocks(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of the blocks ``buffer[start : start + length]``, as a uint32 array.

    Blocks go shortest first, in batches of about :data:`_BATCH_BYTES` (bounded memory); each batch uses lanes
    of about the square root of its longest block, which balances the two loops of :func:`_crc32c_batch`.
    """
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    result = np.empty(len(starts), dtype=np.uint32)
    order = np.argsort(lengths, kind="stable")
    ends = np.cumsum(lengths[order])
    begin = 0
    while begin < len(order):
        already = int(ends[begin - 1]) if begin else 0
        end = max(begin + 1, int(np.searchsorted(ends, already + _BATCH_BYTES, side="right")))
        batch = order[begin:end]
        longest = int(lengths[batch[-1]])
        lane = min(_MAX_LANE, max(_MIN_LANE, 1 << (max(longest, 1).bit_length() + 1) // 2))
        result[batch] = _crc32c_batch(buffer, starts[batch], lengths[batch], lane)
        begin = end
    return result


def _crc32c_batch(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, lane: int) -> np.ndarray:
    """CRC-32C of several blocks at once, with lanes of ``lane`` bytes (a power of two).

    Each block is split into lanes of ``lane`` bytes aligned to its end (the first lane padded with
    leading zeros, which leave a zero register unchanged), and the initial register ``0xffffffff`` is folded
    into the block's first four bytes (for a reflected CRC, starting from ``r`` equals starting from 0 with the
    first four bytes XORed with ``r``). All lanes are checksummed side by side from a zero register, one numpy
    step per byte position; then each block's lane checksums are combined in order, ``r = Z(r) ^ c`` (``c``
    the next lane's checksum, ``Z`` the linear map "feed ``lane`` zero bytes"). Blocks of fewer than four bytes
    take a plain loop.
    """
    table = _table()
    crc = np.empty(len(starts), dtype=np.uint32)
    short = lengths < 4
    for i in np.flatnonzero(short):
        register = 0xFFFFFFFF
        for byte in buffer[starts[i] : starts[i] + lengths[i]].tolist():
            register = int(table[(register ^ byte) & 0xFF]) ^ (register >> 8)
        crc[i] = register ^ 0xFFFFFFFF
    blocks = np.flatnonzero(~short)
    if not blocks.size:
        return crc
    starts, lengths = starts[blocks].astype(np.int64), lengths[blocks].astype(np.int64)
    lanes = -(-lengths // lane)
    first_lane = np.cumsum(lanes) - lanes
    # Copy every block's bytes into its lanes, aligned to the end of the last lane.
    destinations = (first_lane + lanes) * lane - lengths
    total = int(lengths.sum())
    block_of_byte = np.repeat(np.arange(blocks.size), lengths)
    offset_in_block = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.zeros(int(lanes.sum()) * lane, dtype=np.uint8)
    padded[destinations[block_of_byte] + offset_in_block] = buffer[starts[block_of_byte] + offset_in_block]
    for k in range(4):
        padded[destinations + k] ^= 0xFF
    columns = np.ascontiguousarray(padded.reshape(-1, lane).T)  # row j: byte j of every lane
    lane_crc = np.zeros(columns.shape[1], dtype=np.uint32)
    eight = np.uint32(8)
    for column in columns:
        lane_crc = table[(lane_crc ^ column) & 0xFF] ^ (lane_crc >> eight)
    # Combine the lanes of each block; blocks sorted by lane count, so the ones still going are a prefix.
    zero_feed = _zero_feed_tables(lane)
    order = np.argsort(-lanes, kind="stable")
    sorted_lanes, sorted_first = lanes[order], first_lane[order]
    register = np.zeros(blocks.size, dtype=np.uint32)
    most = int(sorted_lanes[0])
    for step in range(most):
        active = int(np.searchsorted(-sorted_lanes, -(most - step), side="right"))  # blocks with >= most-step lanes
        shifted = _apply(zero_feed, register[:active])
        lane_index = sorted_first[:active] + (step - (most - sorted_lanes[:active]))
        register[:active] = shifted ^ lane_crc[lane_index]
    combined = np.empty(blocks.size, dtype=np.uint32)
    combined[order] = register
    crc[blocks] = combined ^ np.uint32(0xFFFFFFFF)
    return crc


@dataclass(frozen=True)
class EventFileCheck:
    """What :func:`check_event_file` found in one event file.

    Attributes:
        path: the file.
        size: its size in bytes.
        records: how many records, from the start, are intact (framing and both checksums); TensorBoard's
            reader returns these and stops at the next one.
        intact_bytes: the bytes those records span; ``size`` for an intact file.
        problem: what is wrong with the record that follows them, or ``None`` if the file is intact.
    """

    path: Path
    size: int
    records: int
    intact_bytes: int
    problem: str | None = None

    @property
    def damaged(self) -> bool:
        """Whether the file has a record that is cut short or fails a checksum."""
        return self.problem is not None

    def describe(self) -> str:
        """One line: the file, where it is damaged and how, and how many records were read before that."""
        if not self.damaged:
            return f"{self.path}: intact, {self.records} records"
        unread = self.size - self.intact_bytes
        return (
            f"{self.path}: {self.problem} at byte {self.intact_bytes} of {self.size}; {self.records} records read "
            f"before it, the remaining {unread} bytes unread"
        )


class DamagedEventFileError(ValueError):
    """Event files that are cut short or fail a checksum, with the :class:`EventFileCheck` of each."""

    def __init__(self, checks: list[EventFileCheck]) -> None:
        self.checks = checks
        more = len(checks) - 1
        suffix = f" (and {more} more damaged event file{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"damaged event file {checks[0].describe()}{suffix}")


def check_event_file(path: str | os.PathLike[str]) -> EventFileCheck:
    """Walk the TFRecord framing of an event file and verify every checksum.

    The file is memory-mapped; the checksums of all records are computed together (vectorised), so checking
    costs a fraction of reading the events.

    Args:
        path: the event file.

    Returns:
        An :class:`EventFileCheck`: intact, or where the first damaged record starts, what is wrong with it
        (its length cut short or failing its checksum, its data cut short or failing its checksum), and how
        many records precede it.

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     with SummaryWriter(directory) as writer:
        ...         writer.add_scalar("loss", 0.5, 0)
        ...     event_file = next(Path(directory).glob("events.out.tfevents.*"))
        ...     print(check_event_file(event_file).records)
        ...     with open(event_file, "r+b") as handle:
        ...         _ = handle.truncate(event_file.stat().st_size - 1)
        ...     print(check_event_file(event_file).problem)
        2
        record 2 cut short in its data checksum
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return EventFileCheck(path, 0, 0, 0)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buffer = np.frombuffer(mapped, dtype=np.uint8)
        try:
            return _check(path, mapped, buffer, size)
        finally:
            del buffer  # the mapping cannot close while an array still points into it


def _check(path: Path, mapped: mmap.mmap, buffer: np.ndarray, size: int) -> EventFileCheck:
    # The framing, read sequentially: where each record's length, data and data checksum are.
    offsets: list[int] = []
    lengths: list[int] = []
    header_crcs: list[int] = []
    offset, truncation = 0, None
    while offset < size:
        if offset + _HEADER.size > size:
            truncation = "cut short in its length" if offset + 8 > size else "cut short in its length checksum"
            break
        length, header_crc = _HEADER.unpack_from(mapped, offset)
        if offset + _HEADER.size + length + _FOOTER.size > size:
            remaining = size - offset - _HEADER.size
            truncation = "cut short in its data checksum" if remaining >= length else "cut short in its data"
            offsets.append(offset)  # its length may be damaged rather than the file cut: checked below
            lengths.append(-1)
            header_crcs.append(header_crc)
            break
        offsets.append(offset)
        lengths.append(length)
        header_crcs.append(header_crc)
        offset += _HEADER.size + length + _FOOTER.size
    count = len(offsets)
    starts = np.array(offsets, dtype=np.int64)
    # Lengths: the masked checksum of the 8 length bytes of every record.
    header_ok = _mask(_crc32c_blocks(buffer, starts, np.full(count, 8, dtype=np.int64))) == np.array(
        header_crcs, dtype=np.uint32
    )
    framed = [i for i in range(count) if lengths[i] >= 0]
    data_ok = np.ones(count, dtype=bool)
    if framed:
        data_starts = starts[framed] + _HEADER.size
        data_lengths = np.array([lengths[i] for i in framed], dtype=np.int64)
        stored = np.array([_FOOTER.unpack_from(mapped, int(s + n))[0] for s, n in zip(data_starts, data_lengths)])
        data_ok[framed] = _mask(_crc32c_blocks(buffer, data_starts, data_lengths)) == stored.astype(np.uint32)
    for i in range(count):
        if not header_ok[i]:
            return EventFileCheck(path, size, i, offsets[i], f"record {i + 1} has a length that fails its checksum")
        if lengths[i] < 0:
            return EventFileCheck(path, size, i, offsets[i], f"record {i + 1} {truncation}")
        if not data_ok[i]:
            return EventFileCheck(path, size, i, offsets[i], f"record {i + 1} has data that fail their checksum")
    if truncation is not None:
        return EventFileCheck(path, size, count, offset, f"record {count + 1} {truncation}")
    return EventFileCheck(path, size, count, size)
