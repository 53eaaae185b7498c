"""``multipart/form-data`` bodies (RFC 7578): read into text fields and files, written back.

OpenAI's image edits, audio transcriptions and file uploads are sent as forms. The gateway
reads them (within the body bounds it already enforces) into the text fields, which go on
the request path like a JSON body's (policies may read and rewrite them, routing may rename
the model), and the files, which are forwarded as they came. The form is then written anew
from both, with a boundary of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenstile.errors import bad_request

# Text fields bigger than this are not text a form would carry.
MAX_FIELD_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FilePart:
    """One file of a form: its field name, file name, media type and bytes."""

    name: str
    filename: str
    content_type: str
    data: bytes

    def __repr__(self) -> str:  # never the bytes
        return (f"FilePart(name={self.name!r}, filename={self.filename!r}, "
                f"content_type={self.content_type!r}, size={len(self.data)})")


def is_form(content_type: str | None) -> bool:
    return (content_type or "").partition(";")[0].strip().lower() == "multipart/form-data"


def _params(header: str) -> tuple[str, dict[str, str]]:
    """A header value and its ``; name="value"`` parameters (quotes and escapes undone)."""
    value, _, rest = header.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return value.strip().lower(), params


def boundary_of(content_type: str | None) -> str:
    kind, params = _params(content_type or "")
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 1 <= len(boundary) <= 70:
        raise bad_request("the request body must be multipart/form-data with a boundary",
                          code="invalid_form")
    return boundary


def parse_form(raw: bytes, content_type: str | None,
               max_parts: int = 256) -> tuple[dict[str, Any], tuple[FilePart, ...]]:
    """Text fields (a list for a name given more than once or ending in ``[]``) and files.
    Raises a 400 for anything that is not a complete form."""
    delimiter = b"\r\n--" + boundary_of(content_type).encode("latin-1")
    pieces = (b"\r\n" + raw).split(delimiter)
    fields: dict[str, Any] = {}
    files: list[FilePart] = []
    closed = False
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            closed = True
            break
        if len(fields) + len(files) >= max_parts:
            raise bad_request(f"the form has more than {max_parts} parts", code="invalid_form")
        head, sep, body = piece.partition(b"\r\n\r\n")
        if not sep:
            raise bad_request("a part of the form has no blank line after its headers",
                              code="invalid_form")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n")[1:]:
            header, colon, value = line.partition(":")
            if colon:
                headers[header.strip().lower()] = value.strip()
        disposition, params = _params(headers.get("content-disposition", ""))
        name = params.get("name", "")
        if disposition != "form-data" or "name" not in params:
            raise bad_request("a part of the form has no Content-Disposition: form-data name",
                              code="invalid_form")
        if "filename" in params or "filename*" in params:
            filename = params.get("filename") or params.get("filename*", "").rpartition("'")[2]
            files.append(FilePart(name, filename, headers.get(
                "content-type", "application/octet-stream"), body))
            continue
        if len(body) > MAX_FIELD_BYTES:
            raise bad_request(f"the form field {name!r} is larger than "
                              f"{MAX_FIELD_BYTES:,} bytes", param=name, code="invalid_form")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"the form field {name!r} is not UTF-8 text", param=name,
                              code="invalid_form") from None
        seen = fields.get(name)
        if seen is None:
            fields[name] = [text] if name.endswith("[]") else text
        elif isinstance(seen, list):
            seen.append(text)
        else:
            fields[name] = [seen, text]
    if not closed:
        raise bad_request("the form ends before its closing boundary", code="invalid_form")
    return fields, tuple(files)


def _quoted(name: str) -> str:
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _text(value: Any) -> bytes:
    if value is True or value is False:
        return b"true" if value else b"false"
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return str(value).encode()
    return orjson.dumps(value)


def encode_form(fields: Mapping[str, Any],
                files: Sequence[FilePart]) -> tuple[bytes, str]:
    """A form of ``fields`` (lists repeat their name) and ``files``: (body, content type)."""
    boundary = "tokenstile-" + secrets.token_hex(12)
    mark = f"--{boundary}\r\n".encode()
    out: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            out += [mark, f'Content-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
                    .encode(), _text(item), b"\r\n"]
    for part in files:
        out += [mark, (f'Content-Disposition: form-data; name="{_quoted(part.name)}"; '
                       f'filename="{_quoted(part.filename)}"\r\n'
                       f"Content-Type: {part.content_type}\r\n\r\n").encode(),
                part.data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"
