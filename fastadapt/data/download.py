"""Fetching dataset files from their official homes.

A download lands at its destination only once it is complete and verified (streamed to a temp
file beside it, then renamed), so an interrupted or corrupted download never looks like data.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import FastAdaptError
from ..utils import atomic_write

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def download_file(
    url: str, dest: Path | str, md5: str | None = None, *, min_bytes: int = 0, timeout: float = 60.0
) -> Path:
    """Download `url` to `dest`, checking its MD5 (when known) and that it has at least `min_bytes`.

    Raises FastAdaptError when the network fails, the checksum or size is wrong, or `dest` cannot
    be written; the message says where to put the file by hand.
    """
    dest = Path(dest)
    by_hand = f"download {url} by hand and save it as {dest}"
    digest = hashlib.md5()
    received = 0

    def stream(out) -> None:
        nonlocal received
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise FastAdaptError(
                f"download of {url} is corrupt (md5 {digest.hexdigest()}, expected {md5}); try again or {by_hand}"
            )
        if received < min_bytes:
            raise FastAdaptError(
                f"download of {url} is truncated ({received} bytes, expected at least "
                f"{min_bytes}); try again or {by_hand}"
            )

    log.info("downloading %s -> %s", url, dest)
    try:
        atomic_write(dest, stream)
    except FastAdaptError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FastAdaptError(f"could not download {url} ({reason}); check the network or {by_hand}") from None
    except OSError as exc:
        raise FastAdaptError(
            f"could not save {url} to {dest} ({exc.strerror or exc}); choose a writable data "
            f"root (--data-root / FASTADAPT_DATA) or {by_hand}"
        ) from None
    return dest
