"""The Bloom filter each segment keeps over its keys, so a lookup skips segments that surely lack a key.

Format: ``bits`` is a power of two, at least 64, about 10 bits per key; a key's two 64-bit hashes
``h1, h2`` are the first two little-endian words of its 16-byte digest (the key is that digest in
hex, already uniformly random), with ``h2 | 1``; its 4 probe bits are ``(h1 + i * h2) mod bits`` for
i = 0..3; the filter is stored as ``np.packbits(flags, bitorder="little")``, (bits / 8,) uint8.
About 1% false positives.
"""

from __future__ import annotations

import numpy as np

from featx.cache.layout import KEY_DTYPE

BLOOM_BITS_PER_KEY = 10  # about 1% false positives with 4 probes
_NIBBLE = np.zeros(256, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _NIBBLE[ord(chr(_c).upper())] = _i


def bloom_bits(rows: int) -> int:
    """Size in bits of a segment's Bloom filter: a power of two, ~10 bits per key."""
    return 1 << max(6, int(np.ceil(np.log2(max(1, rows) * BLOOM_BITS_PER_KEY))))


def key_hashes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit words of each key's digest (keys are hex hashes: their bits are already random)."""
    nib = _NIBBLE[np.ascontiguousarray(keys, dtype=KEY_DTYPE).view(np.uint8).reshape(-1, 32)]
    words = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view("<u8")
    return words[:, 0], words[:, 1] | np.uint64(1)


def _probes(h1, h2, bits: int):
    mask = np.uint64(bits - 1)
    return [(h1 + np.uint64(i) * h2) & mask for i in range(4)]


def bloom_set(flags: np.ndarray, keys: np.ndarray) -> None:
    """Set the probe bits of ``keys`` in ``flags`` ((bits,) bool, unpacked), in place."""
    for pos in _probes(*key_hashes(keys), flags.size):
        flags[pos] = True


def bloom(keys: np.ndarray) -> np.ndarray:
    """The packed filter of ``keys``: (bloom_bits(n) / 8,) uint8."""
    flags = np.zeros(bloom_bits(keys.size), bool)
    bloom_set(flags, keys)
    return np.packbits(flags, bitorder="little")


def bloom_test(packed: np.ndarray, h1, h2) -> np.ndarray:
    """(n,) bool: False where the key is surely not in the segment."""
    ok = np.ones(h1.size, bool)
    for pos in _probes(h1, h2, packed.size * 8):
        ok &= ((packed[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)
    return ok
