"""Text from outside (file names, uploads' names, decoder messages) shown safely: one line of
printable characters, so that a name cannot move the cursor, retitle or recolour a terminal,
start a new output line, reorder text (bidi controls), or break a UTF-8 encoder.

File names are kept losslessly everywhere else (a POSIX name that is not UTF-8 lives on as a
``str`` with surrogate escapes, which :func:`os.fsencode` turns back into its bytes); only
what is *shown* goes through :func:`printable`. What a web client is told names files,
never the server's folders: :func:`without_folders`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

#: The folders below a known one (up to the file name).
_BELOW = r"/(?:[^/\s'\"`()\[\]{},;]+/)*"
#: The folders of an absolute POSIX path (``/a/b/`` of ``/a/b/c.npz``), not inside a URL or a
#: relative path.
_FOLDERS = re.compile(r"(?<![\w.~:/-])(?:/[^/\s'\"`()\[\]{},;]+)+/(?=[^/\s])")


def printable(text: str | os.PathLike[str]) -> str:
    """``text`` with every non-printable character escaped: a byte that was not UTF-8 (a
    surrogate escape) as ``\\xNN``, control characters as ``\\xNN``, other invisible ones
    (bidi controls, lone surrogates, line separators) as ``\\uNNNN``. Printable text, any
    script, is unchanged."""
    text = os.fspath(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def without_folders(text: str, folders: Iterable[str | os.PathLike[str]] = ()) -> str:
    """``text`` with every absolute path cut to its last part: ``could not read
    /srv/runs/a/index.npz`` becomes ``could not read index.npz``. ``folders``: known folders
    removed first, with the folders below them (a name with spaces in it too)."""
    for folder in sorted((os.fspath(f).rstrip("/") for f in folders), key=len, reverse=True):
        if folder:
            text = re.sub(re.escape(folder) + _BELOW, "", text)
    return _FOLDERS.sub("", text)
