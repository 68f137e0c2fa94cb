"""Opening local text files (CSV, JSONL, token-tag files) so that undecodable bytes are reported by
file, line and column, with a hint, instead of as a bare ``UnicodeDecodeError``.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tags.txt")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"ok\\tO\\ncaf\\xe9\\tO\\n")
    >>> with open_text(path) as lines:
    ...     list(lines)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../tags.txt, line 2: not valid utf-8 text (byte 0xe9 at column 4: invalid continuation byte); ...
"""

from __future__ import annotations

import codecs
import contextlib
import os
from collections.abc import Iterator
from typing import IO

__all__ = ["open_text"]


@contextlib.contextmanager
def open_text(path: str | os.PathLike, encoding: str = "utf-8",
              newline: str | None = None) -> Iterator[Iterator[str]]:
    """Opens a text file for reading line by line (``newline`` as in :func:`open`; ``""`` for csv).

    Iterating the lines raises ``ValueError("<path>, line <n>: not valid <encoding> text ...")`` at
    the first byte sequence that ``encoding`` cannot decode.

    Example:
        >>> with open_text("reviews.csv", newline="") as lines:  # doctest: +SKIP
        ...     rows = list(csv.DictReader(lines))
    """
    with open(path, encoding=encoding, newline=newline) as handle:
        yield _checked_lines(handle, os.fspath(path), encoding)


def _checked_lines(handle: IO[str], path: str, encoding: str) -> Iterator[str]:
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise _decode_error(path, encoding, error) from None


def _decode_error(path: str, encoding: str, error: UnicodeDecodeError) -> ValueError:
    """The error to raise for ``error``, located by re-reading the file's raw lines."""
    line, column, bad = _first_undecodable(path, encoding)
    where = f"{path}, line {line}" if line else path
    place = (f"byte 0x{bad.hex()}" + (f" at column {column}" if column else "") + ": ") if bad else ""
    return ValueError(
        f"{where}: not valid {encoding} text ({place}{error.reason}); pass encoding= with the "
        "file's encoding (encoding='latin-1' reads any bytes), or re-save the file as UTF-8."
    )


def _first_undecodable(path: str, encoding: str) -> tuple[int | None, int | None, bytes]:
    """(line, byte column, offending bytes) of the first decoding error, both 1-based."""
    decoder = codecs.getincrementaldecoder(encoding)()
    number = 0
    with open(path, "rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as error:
                return number, error.start + 1, error.object[error.start:error.end]
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        return number, None, error.object[error.start:error.end]
    return None, None, b""
