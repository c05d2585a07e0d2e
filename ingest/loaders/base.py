"""What every loader shares: the one error type, safe file reading, byte decoding and text normalisation.

Loaders raise `LoadError` and nothing else; `reason` is a short machine-readable word and `str(error)` a
sentence naming the file and what to do about it.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctxqa.rag.types import LoadedDocument

# A loader: `loader(path, password=None) -> LoadedDocument`, raising only LoadError.
Loader = Callable[..., LoadedDocument]

REASONS = ("missing", "unreadable", "empty", "binary", "encrypted", "corrupt", "unsupported")

_HINTS = {
    "missing": "check the path (it does not exist)",
    "unreadable": "check that it is a regular file and that its permissions let this user read it",
    "empty": "there is nothing to index in it; remove it or add content",
    "binary": "it looks like a binary file despite its extension; rename it or exclude it",
    "encrypted": "pass --password or add a password in {name}.meta.json",
    "corrupt": "the file seems damaged or truncated; re-export or re-download it",
    "unsupported": "convert it to PDF, Markdown, HTML or plain text",
}


class LoadError(Exception):
    """A file could not be turned into a LoadedDocument.

    `path`: the file; `reason`: one of REASONS (short, machine-readable); `detail`: what went wrong;
    `hint`: how to fix it. `str(err)` is the full human message.
    """

    def __init__(self, path: Path | str, reason: str, detail: str | None = None, hint: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail or reason
        name = self.path.name
        self.hint = hint if hint is not None else _HINTS.get(reason, "").format(name=name)
        message = f"{name}: {self.detail}"
        if self.hint:
            message += f" ({self.hint})"
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return (type(self), (self.path, self.reason, self.detail, self.hint))


@contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """Map OS errors while touching `path` to LoadError (missing / unreadable)."""
    try:
        yield
    except FileNotFoundError:
        raise LoadError(path, "missing", f"no such file: {path}") from None
    except IsADirectoryError:
        raise LoadError(path, "unreadable", f"{path} is a directory, not a file") from None
    except PermissionError:
        raise LoadError(path, "unreadable", f"permission denied reading {path}") from None
    except OSError as e:
        raise LoadError(path, "unreadable", f"cannot read {path}: {e.strerror or e}") from None


def read_bytes(path: Path) -> bytes:
    """Read a whole file, mapping OS errors to LoadError (missing / unreadable)."""
    with _os_errors(path):
        return path.read_bytes()


def check_readable(path: Path) -> None:
    """Same errors as read_bytes without reading the file (for loaders that open it themselves)."""
    with _os_errors(path), open(path, "rb") as f:
        f.read(1)


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Single-byte encodings for Latin scripts: charset-normalizer cannot tell them apart on short texts (it says
# cp1250 for German cp1252), so when it lands on one of these and cp1252 decodes cleanly we use cp1252.
_LATIN_SINGLE_BYTE = {
    "cp1250", "cp1252", "cp1254", "cp1257", "cp1258", "latin_1", "iso8859_1", "iso8859_2", "iso8859_3",
    "iso8859_4", "iso8859_9", "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16",
    "mac_latin2", "mac_roman", "mac_iceland", "mac_turkish", "cp850", "cp437", "cp858", "ascii",
}


def sniff_bom(data: bytes) -> tuple[str, int] | None:
    """(encoding, BOM length) when `data` starts with a Unicode byte-order mark."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return enc, len(bom)
    return None


def sniff_utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without a BOM shows NULs in every other byte (for mostly-ASCII content)."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nul = even.count(0) / max(len(even), 1)
    odd_nul = odd.count(0) / max(len(odd), 1)
    if odd_nul > 0.4 and even_nul < 0.05:
        return "utf-16-le"
    if even_nul > 0.4 and odd_nul < 0.05:
        return "utf-16-be"
    return None


def _try(data: bytes, enc: str) -> str | None:
    try:
        return data.decode(enc)
    except (UnicodeDecodeError, LookupError):
        return None


def looks_binary(data: bytes) -> bool:
    """NUL bytes or many C0 control characters (other than whitespace) in the first 8 KiB."""
    sample = data[:8192]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(sample) > 0.05


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode bytes of a text file: BOM, `declared`, UTF-16 without BOM, UTF-8, charset-normalizer, cp1252.

    Returns (text, encoding). Never raises (cp1252/latin-1 decode everything).
    """
    bom = sniff_bom(data)
    if bom:
        bom_enc, n = bom
        return data[n:].decode(bom_enc, errors="replace"), bom_enc
    if declared:
        text = _try(data, declared)
        if text is not None:
            return text, declared
    u16 = sniff_utf16_without_bom(data)  # before UTF-8: ASCII-range UTF-16 is also valid UTF-8 (with NULs)
    if u16:
        text = _try(data, u16)
        if text is not None:
            return text, u16
    text = _try(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    enc: str | None = None
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:200_000]).best()
        enc = best.encoding if best is not None else None
    except Exception:  # noqa: BLE001 - detection is best effort
        enc = None
    if enc and enc not in _LATIN_SINGLE_BYTE:
        text = _try(data, enc)
        if text is not None:
            return text, enc
    text = _try(data, "cp1252")
    if text is not None:
        return text, "cp1252"
    if enc:
        text = _try(data, enc)
        if text is not None:
            return text, enc
    return data.decode("latin-1"), "latin-1"


# ----------------------------------------------------------------------------------------------------------------
# Text normalisation (applied before offsets are computed: the normalised text IS the document text)
# ----------------------------------------------------------------------------------------------------------------

# C0/C1 controls except TAB, LF, FF; plus non-characters and the BOM / zero-width no-break space.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
_HSPACE_RUN_RE = re.compile(r"[ \t]{2,}")
_TRAILING_SPACE_RE = re.compile(r"[ \t]+\n")


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalize_text(text: str, *, collapse_spaces: bool = False, max_blank_lines: int = 2) -> str:
    """CRLF/CR -> LF, strip NULs and control characters; optionally collapse runs of spaces/tabs.

    Trailing spaces at line ends are dropped and runs of more than `max_blank_lines` blank lines are shortened.
    """
    text = normalize_newlines(text)
    text = _CONTROL_RE.sub("", text)
    if collapse_spaces:
        text = _HSPACE_RUN_RE.sub(" ", text)
    text = _TRAILING_SPACE_RE.sub("\n", text)
    if max_blank_lines >= 0:
        text = re.sub(rf"\n{{{max_blank_lines + 2},}}", "\n" * (max_blank_lines + 1), text)
    return text


# ----------------------------------------------------------------------------------------------------------------
# Metadata helpers
# ----------------------------------------------------------------------------------------------------------------

_ISO_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_COMPACT_DATE_RE = re.compile(r"(?:D:)?(\d{4})(\d{2})?(\d{2})?")


def iso_date(value: Any) -> str | None:
    """yyyy-mm-dd from a date/datetime, an ISO-ish string, or a PDF date (D:YYYYMMDD...); None if not parseable."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    s = str(value).strip()
    if not s:
        return None
    m = _ISO_DATE_RE.search(s)
    if m:
        try:
            return _dt.date(int(m[1]), int(m[2]), int(m[3])).isoformat()
        except ValueError:
            return None
    m = _COMPACT_DATE_RE.match(s)
    if m and m[2] and m[3]:
        try:
            return _dt.date(int(m[1]), int(m[2]), int(m[3])).isoformat()
        except ValueError:
            return None
    for fmt in ("%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%d %b %Y", "%a, %d %b %Y %H:%M:%S %z", "%Y/%m/%d",
                "%m/%d/%Y"):
        try:
            return _dt.datetime.strptime(s, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def jsonable(value: Any) -> Any:
    """Make YAML/PDF metadata JSON-serialisable (dates to ISO strings, unknown objects to str)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def clean_inline(text: str) -> str:
    """Collapse whitespace of a one-line value (titles, headings, meta content)."""
    return " ".join(_CONTROL_RE.sub("", text).split())
