"""Find a source's upstream file name in a directory listing (GEO's per-sample ``suppl/`` index),
for deposits whose exact names are not known in advance (e.g. ``*_Merged.tif`` vs ``.tiff.gz``).

A catalogue source with ``discover = "GSM7845914_*Merged.tif*"`` is fetched from the one file of
the listing at its ``url``'s folder whose name matches the glob.
"""
from __future__ import annotations

import fnmatch
import re
import urllib.error
import urllib.parse
import urllib.request

from ...errors import DataError

_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def listing_names(html: str) -> list[str]:
    """File names linked from an HTML directory index (sub-folders and parent links left out)."""
    names = []
    for href in _HREF.findall(html):
        href = re.split(r"[?#]", href, maxsplit=1)[0]
        name = urllib.parse.unquote(href.rstrip("/").rsplit("/", 1)[-1])
        if name and not href.endswith("/") and name not in names:
            names.append(name)
    return names


def pick(names: list[str], pattern: str, where: str) -> str:
    found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"no file matching '{pattern}' in {where}; the deposit changed: fix the catalogue "
                        f"source or use --mirror FOLDER|URL")
    raise DataError(f"{len(found)} files match '{pattern}' in {where} ({', '.join(found[:4])}); make the "
                    f"catalogue's discover pattern more specific")


def discover(folder_url: str, pattern: str, timeout: float = 60.0) -> str:
    """The URL of the one file in ``folder_url``'s listing whose name matches ``pattern``."""
    folder_url = folder_url if folder_url.endswith("/") else folder_url + "/"
    try:
        with urllib.request.urlopen(folder_url, timeout=timeout) as response:  # noqa: S310 - https/http only upstream
            html = response.read(4 << 20).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot list {folder_url} to find '{pattern}': HTTP {e.code}; fix the catalogue "
                        f"source or use --mirror FOLDER|URL") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot list {folder_url} to find '{pattern}' ({reason}); check the network or "
                        f"use --mirror FOLDER|URL") from None
    return folder_url + urllib.parse.quote(pick(listing_names(html), pattern, folder_url))
