"""How long an audio file is, read from its bytes before it is sent (no audio library).

- WAV: the ``fmt `` chunk's byte rate and everything after the ``data`` chunk's header (a
  header that understates its data cannot make the file look shorter than it is).
- MP3: every MPEG audio frame is walked (its header gives its length and 384, 576 or 1152
  samples), so constant and variable bit rates are both exact; a file whose frames do not
  cover nearly all of it is not trusted.
- Anything else (FLAC, Ogg, M4A, WebM…), or a file that is not what it says: the longest
  the file could play, its size at ``LOWEST_BITRATE_BPS``, the lowest bit rate in use for
  speech (Opus at 6 kbit/s). That bound is what is reserved; the provider's answer says how
  long it really was.
"""

from __future__ import annotations

import struct

LOWEST_BITRATE_BPS = 6_000
# Share of an MP3 file (tags aside) its frames must cover to be trusted.
MIN_MP3_COVERAGE = 0.9

_BITRATES = {  # kbit/s by (version 1 or 2, layer), index 1..14
    (1, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_UNSEEN: tuple[int, int, int] = (0, 0, 0)


def audio_ms(data: bytes) -> tuple[int, bool]:
    """(milliseconds, exact): read from the header when the format allows, else the most
    the file could last."""
    for reader in (_wav_ms, _mp3_ms):
        found = reader(data)
        if found is not None:
            return found, True
    return worst_case_ms(len(data)), False


def worst_case_ms(size: int) -> int:
    return -(-size * 8 * 1000 // LOWEST_BITRATE_BPS)


def _wav_ms(data: bytes) -> int | None:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    at, byte_rate = 12, 0
    while at + 8 <= len(data):
        kind, size = data[at:at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if kind == b"fmt " and at + 16 <= len(data):
            byte_rate = struct.unpack_from("<I", data, at + 16)[0]
        elif kind == b"data":
            if byte_rate <= 0:
                return None
            return -(-(len(data) - at - 8) * 1000 // byte_rate)
        at += 8 + size + (size & 1)
    return None


def _mp3_ms(data: bytes) -> int | None:
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2 tag: a synchsafe size
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        start = 10 + size
    end = len(data) - 128 if data[-128:-125] == b"TAG" else len(data)
    at, samples, rate, covered = start, 0, 0, 0
    seen: dict[int, tuple[int, int, int] | None] = {}  # by header bits: most frames repeat
    while at + 4 <= end:
        if data[at] != 0xFF:
            break
        bits = (data[at + 1] << 8) | data[at + 2]
        frame = seen.get(bits, _UNSEEN)
        if frame is _UNSEEN:
            frame = seen[bits] = _frame(data[at:at + 4])
        if frame is None:
            break
        length, frame_samples, frame_rate = frame
        if rate and frame_rate != rate:
            break
        rate = frame_rate
        samples += frame_samples
        covered += length
        at += length
    if not rate or covered < MIN_MP3_COVERAGE * max(end - start, 1):
        return None
    return -(-samples * 1000 // rate)


def _frame(head: bytes) -> tuple[int, int, int] | None:
    """(bytes, samples, sample rate) of the MPEG audio frame whose header is ``head``."""
    b1, b2 = head[1], head[2]
    if head[0] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version_bits == 1 or layer_bits == 0 or index in (0, 15) or rate_index == 3:
        return None
    layer = 4 - layer_bits
    version = 1 if version_bits == 3 else 2
    bitrate = _BITRATES[(version, layer)][index - 1] * 1000
    rate = _RATES[version_bits][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate
    samples = 576 if layer == 3 and version == 2 else 1152
    return samples // 8 * bitrate // rate + padding, samples, rate
