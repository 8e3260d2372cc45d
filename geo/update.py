# geo/update: download a GeoIP database and install it atomically (`linkedge geo update`).
#
# Rules of this module:
# - Blocking and synchronous (urllib only, no asyncio, no new dependency): it runs from
#   the CLI or a worker thread, never on the event loop.
# - The installed file is replaced only by a file that opened with maxminddb and passed
#   the checks in _verify(); on any failure the existing destination is untouched and
#   GeoUpdateError says why in words a person can act on. A running server picks the
#   new file up through GeoDatabase.maybe_reload() (it watches inode, mtime and size).
# - Steps: stream the download into a temporary file in the destination's directory
#   (same filesystem, so os.replace is atomic), capped at max_bytes; unpack by content,
#   not by name: gzip magic -> gunzip, then a tar (MaxMind's .tar.gz) -> the single
#   regular *.mmdb member, read through extractfile() so no member name is ever used as
#   a path; the unpacked size is capped too. Then verify, fsync, chmod 0644, os.replace,
#   fsync the directory.
# - DB-IP publishes the month's Lite database on the 1st; a 404 for a monthly DB-IP URL
#   ("...-YYYY-MM.mmdb.gz") falls back once to the previous month's file.
# - A MaxMind licence key travels in the URL; it is redacted from every message.
# - A local file works like a download (`./x.mmdb`, `/path/x.mmdb.gz`, `file:///path`),
#   for machines without internet access: copied, unpacked and verified the same way.
from __future__ import annotations

import contextlib
import datetime
import gzip
import http.client
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

import maxminddb

from geo.geoip import DBIP_ATTRIBUTION, GeoDatabaseError, database_info

ATTRIBUTION: Final = DBIP_ATTRIBUTION

DBIP_CITY_LITE_URL: Final = (
    "https://download.db-ip.com/free/dbip-city-lite-{year:04d}-{month:02d}.mmdb.gz"
)
MAXMIND_GEOLITE2_CITY_URL: Final = (
    "https://download.maxmind.com/app/geoip_download?edition_id=GeoLite2-City"
    "&license_key={key}&suffix=tar.gz"
)

# GeoLite2-City is ~60 MB unpacked and DB-IP City Lite ~130 MB; 512 MiB leaves room for
# growth while stopping a runaway or malicious download (or a gzip bomb) well before
# the disk fills.
DEFAULT_MAX_BYTES: Final = 512 * 2**20
DEFAULT_TIMEOUT_S: Final = 60.0
# Read and write in 1 MiB pieces: few syscalls, little memory.
CHUNK_BYTES: Final = 2**20
USER_AGENT: Final = "linkedge-geo-update (+https://github.com/linkedge)"

# A database built before this is not a current GeoIP database (GeoLite2 started in 2013).
MIN_BUILD_EPOCH: Final = 1_356_998_400  # 2013-01-01
# A clock skew allowance for build times in the future.
MAX_FUTURE_BUILD_S: Final = 2 * 86_400

_GZIP_MAGIC: Final = b"\x1f\x8b"
_MONTHLY = re.compile(r"-(?P<year>\d{4})-(?P<month>\d{2})(?P<suffix>\.mmdb(?:\.gz)?)(?=$|\?)")
_SECRET_QUERY = re.compile(r"(?i)(license_key=)[^&#]*")


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class GeoUpdateError(Exception):
    """The update failed; the message says why. status is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def redact(url: str) -> str:
    """url without the secret in its query (a MaxMind licence key)."""
    return _SECRET_QUERY.sub(r"\1<redacted>", url)


def default_url(
    today: datetime.date,
    licence_key: str | None = None,
    *,
    dbip_template: str = DBIP_CITY_LITE_URL,
    maxmind_template: str = MAXMIND_GEOLITE2_CITY_URL,
) -> str:
    """MaxMind GeoLite2-City when a licence key is given, else this month's DB-IP Lite."""
    if licence_key:
        return maxmind_template.format(key=urllib.parse.quote(licence_key, safe=""))
    return dbip_template.format(year=today.year, month=today.month)


def previous_month_url(url: str) -> str | None:
    """The same monthly URL one month earlier, or None when url is not a monthly one."""
    match = _MONTHLY.search(url)
    if match is None:
        return None
    year, month = int(match["year"]), int(match["month"])
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{url[: match.start()]}-{year:04d}-{month:02d}{match['suffix']}{url[match.end() :]}"


def download_database(
    url: str,
    dest: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Download url (.mmdb, .mmdb.gz or MaxMind's .tar.gz) and install it at dest.
    `on_bytes(n)` is told of every chunk read (for a progress line).

    Returns database_info() of the installed file plus "url" (redacted) and
    "downloaded_bytes". Raises GeoUpdateError; dest is untouched when it does.
    """
    dest_path = Path(dest)
    try:
        dest_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoUpdateError(f"cannot create {dest_path.parent}: {exc.strerror}") from None
    fallback = previous_month_url(url)
    try:
        return _install(url, dest_path, timeout_s, max_bytes, on_bytes)
    except GeoUpdateError as exc:
        if exc.status != 404 or fallback is None:
            raise
        try:
            return _install(fallback, dest_path, timeout_s, max_bytes, on_bytes)
        except GeoUpdateError as again:
            raise GeoUpdateError(
                f"{exc} (and for the previous month: {again})", again.status
            ) from None


def _install(
    url: str,
    dest: Path,
    timeout_s: float,
    max_bytes: int,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, object]:
    with contextlib.ExitStack() as cleanup:
        download = _temp_file(dest, ".download", cleanup)
        downloaded = _fetch(url, download, timeout_s, max_bytes, on_bytes)
        candidate = _unpack(download, dest, max_bytes, cleanup)
        _verify(candidate)
        with candidate.open("rb") as f:
            os.fsync(f.fileno())
        os.chmod(candidate, 0o644)  # mkstemp makes 0600; the server may run as another user
        os.replace(candidate, dest)
        _fsync_directory(dest.parent)
    info = database_info(str(dest))
    info["url"] = redact(url)
    info["downloaded_bytes"] = downloaded
    return info


def _temp_file(dest: Path, suffix: str, cleanup: contextlib.ExitStack) -> Path:
    """A new empty file next to dest, removed when cleanup closes unless replaced."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise GeoUpdateError(f"cannot write in {dest.parent}: {exc.strerror}") from None
    os.close(fd)
    path = Path(name)
    cleanup.callback(path.unlink, missing_ok=True)
    return path


def _local_file(url: str) -> Path | None:
    """The file a `file:` URL or a plain path names; None for anything else."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise GeoUpdateError(f"a file: URL names a file on this machine (file:///path): {url}")
        return Path(urllib.request.url2pathname(parts.path))
    return Path(url) if not scheme else None


def _fetch(
    url: str,
    into: Path,
    timeout_s: float,
    max_bytes: int,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Stream url (or the local file it names) into the file; returns the byte count."""
    local = _local_file(url)
    if local is not None:
        try:
            with local.open("rb") as source:
                return _copy_limited(source, into, max_bytes, str(local), on_bytes)
        except OSError as exc:
            raise GeoUpdateError(f"cannot read {local}: {exc.strerror or exc}") from None
    shown = redact(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise GeoUpdateError(f"not an http(s) URL or a local file: {shown}")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise GeoUpdateError(
                    f"download too big: {shown} is {int(length)} bytes, the limit is {max_bytes}"
                )
            return _copy_limited(response, into, max_bytes, f"download of {shown}", on_bytes)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response body open
        raise GeoUpdateError(
            f"HTTP {exc.code} {exc.reason} from {shown}", status=exc.code
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise GeoUpdateError(f"timed out after {timeout_s:g} s: {shown}") from None
        detail = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise GeoUpdateError(f"cannot reach {shown}: {detail}") from None
    except TimeoutError:
        raise GeoUpdateError(f"timed out after {timeout_s:g} s: {shown}") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise GeoUpdateError(f"download of {shown} failed: {exc!r}") from None
    except OSError as exc:
        raise GeoUpdateError(f"download of {shown} failed: {exc.strerror or exc}") from None


def _copy_limited(
    source: _Readable,
    into: Path,
    max_bytes: int,
    what: str,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    total = 0
    with into.open("wb") as out:
        while chunk := source.read(CHUNK_BYTES):
            total += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            if total > max_bytes:
                raise GeoUpdateError(f"{what} is bigger than the limit of {max_bytes} bytes")
            out.write(chunk)
    return total


def _unpack(download: Path, dest: Path, max_bytes: int, cleanup: contextlib.ExitStack) -> Path:
    """The plain .mmdb to install: the download itself, or what it unpacks to."""
    with download.open("rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC
    if not compressed:
        return download
    unpacked = _temp_file(dest, ".mmdb", cleanup)
    try:
        with gzip.open(download, "rb") as source:
            _copy_limited(source, unpacked, max_bytes, "the unpacked database")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise GeoUpdateError(f"download is not a valid gzip file: {exc}") from None
    if not tarfile.is_tarfile(unpacked):
        return unpacked
    member_file = _temp_file(dest, ".mmdb", cleanup)
    try:
        with tarfile.open(unpacked, "r:") as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".mmdb")]
            if len(members) != 1:
                names = ", ".join(m.name for m in members) or "none"
                raise GeoUpdateError(f"expected one .mmdb file in the archive, found: {names}")
            if members[0].size > max_bytes:
                raise GeoUpdateError(
                    f"{members[0].name} in the archive is bigger than the limit of"
                    f" {max_bytes} bytes"
                )
            member = archive.extractfile(members[0])
            if member is None:
                raise GeoUpdateError(f"cannot read {members[0].name} in the archive")
            with member:
                _copy_limited(member, member_file, max_bytes, members[0].name)
    except tarfile.TarError as exc:
        raise GeoUpdateError(f"download is not a valid tar archive: {exc}") from None
    return member_file


def _verify(path: Path) -> None:
    """Raise GeoUpdateError unless path is a MaxMind DB we would serve."""
    try:
        info = database_info(str(path))
    except GeoDatabaseError as exc:
        raise GeoUpdateError(f"download is not a MaxMind DB: {exc}") from None
    epoch = info["build_epoch"]
    now = datetime.datetime.now(datetime.UTC).timestamp()
    if not isinstance(epoch, int) or not MIN_BUILD_EPOCH <= epoch <= now + MAX_FUTURE_BUILD_S:
        raise GeoUpdateError(f"download has an implausible build time: {epoch!r}")
    # a few lookups walk the tree and decode records, which catches broken files the
    # header alone does not (the C reader maps the file; this reads a few pages)
    probes = ["1.1.1.1", "8.8.8.8", "81.2.69.142"]
    if info["ip_version"] == 6:
        probes += ["2001:4860:4860::8888", "::ffff:1.1.1.1"]
    try:
        with maxminddb.open_database(str(path), maxminddb.MODE_AUTO) as reader:
            for probe in probes:
                reader.get(probe)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise GeoUpdateError(f"download is a corrupt MaxMind DB: {exc}") from None


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; not every platform lets a directory be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
