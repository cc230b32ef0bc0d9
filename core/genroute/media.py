"""Media inputs: a path, bytes, a ``data:`` URI or an http(s) URL, identified by content hash.

A ``file://`` URL is taken as the local path it names (``file:///tmp/cat.png``, percent-escapes decoded; a relative
``file:fox.png`` names a file of the working directory). Any other URI (``ftp://…``, ``s3://…``, ``mailto:…``,
``javascript:…``) is refused as an unsupported scheme rather than read as a path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit
from urllib.request import url2pathname

import httpx
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from .errors import InvalidRequest

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"ID3", "audio/mpeg"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),  # EBML: WebM (audio or video) and Matroska
)


ACCEPTED_INPUTS = "a file path, bytes, an http(s) URL, a data: URI or a file:// URL"
"""Every form a media field takes, for the messages that tell what to give instead."""

INPUT_TOO_LARGE_HINT = "use a smaller file, or raise [routing] max_input_bytes in plugins.toml"

# Major brands of an ISO BMFF (``ftyp``) file that make it a HEIF still image (iPhone photos), not a movie.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff_media_type(data: bytes) -> str:
    """Best-effort media type from the first bytes; ``application/octet-stream`` when unknown."""
    if data[:4] == b"RIFF":  # a container: WAVE is audio, WEBP an image, anything else (AVI…) unknown here
        return {b"WAVE": "audio/wav", b"WEBP": "image/webp"}.get(data[8:12], "application/octet-stream")
    if data[4:8] == b"ftyp":
        major = data[8:12]
        if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and any(b in data[16:64] for b in _AVIF_BRANDS)):
            return "image/avif"
        if major in _HEIF_BRANDS:
            return "image/heic"
        return "video/mp4"  # MP4, M4A, MOV…: the brand does not reliably tell audio-only from video
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if _starts_with_mpeg_audio_frames(data):
        return "audio/mpeg"
    return "application/octet-stream"


# MPEG audio frame headers (ISO 11172-3, ISO 13818-3 and the unofficial MPEG 2.5), for MP3 without an ID3 tag.
_MPEG_VERSIONS = {0b11: 1, 0b10: 2, 0b00: 25}  # 0b01 is reserved
_MPEG_LAYERS = {0b11: 1, 0b10: 2, 0b01: 3}  # 0b00 is reserved (and is what AAC's ADTS headers carry)
_MPEG_SAMPLE_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
_MPEG_KBPS = {  # by (MPEG-1 or not, layer); index 0 is "free format", 15 is invalid
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _mpeg_frame(data: bytes, at: int) -> tuple[tuple[int, int, int], int] | None:
    """The MPEG audio frame header at ``at``: its (version, layer, sample-rate index) and the frame's length.

    None unless the four bytes are a valid header: 11 sync bits, a version and layer that are not reserved,
    a bitrate index neither free format (0, whose length cannot be computed) nor invalid (15), a sample-rate
    index that is not reserved (3), and an emphasis that is not reserved (2).
    """
    if len(data) < at + 4:
        return None
    b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
    if data[at] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = _MPEG_VERSIONS.get((b1 >> 3) & 0b11)
    layer = _MPEG_LAYERS.get((b1 >> 1) & 0b11)
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 0b11, (b2 >> 1) & 1
    if version is None or layer is None or bitrate_index in (0, 15) or rate_index == 3 or b3 & 0b11 == 0b10:
        return None
    bitrate = _MPEG_KBPS[(version == 1, layer)][bitrate_index] * 1000
    rate = _MPEG_SAMPLE_RATES[version][rate_index]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (72 if layer == 3 and version != 1 else 144) * bitrate // rate + padding
    return (version, layer, rate_index), length


def _starts_with_mpeg_audio_frames(data: bytes) -> bool:
    """Whether ``data`` starts with two MPEG audio frames in a row (MP3, or MP2/MP1) of one version, layer and rate.

    One header is not enough: four bytes of other data pass for one often enough (UTF-16 LE text, which starts
    ``FF FE``, reads as MPEG-1 layer I). So the next frame's header must follow where the first frame ends.
    """
    first = _mpeg_frame(data, 0)
    if first is None:
        return False
    kind, length = first
    second = _mpeg_frame(data, length)
    return second is not None and second[0] == kind


# A RIFF size, or a WAV data chunk's size, that streaming encoders write when they cannot seek back to fill it in.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
# How far the RIFF size may overstate the file: a final pad byte left out, or the whole file's size written
# instead of its size less the 8-byte RIFF header (both seen from real encoders).
_RIFF_SIZE_SLACK = 8
_MAX_WAV_CHUNKS = 256  # chunks walked before giving up on finding ``data`` (header parsing, never a long scan)


def audio_cut_short(data: bytes) -> str | None:
    """Why audio ``data`` is cut short, read from its headers alone, or None when nothing says so.

    A WAV file's ``data`` chunk must hold the bytes its header declares (a chunk before it must fit too), and
    the file must be as long as its RIFF header says, give or take :data:`_RIFF_SIZE_SLACK`. Sizes of 0 or
    0xFFFFFFFF, which streaming encoders write, are an unknown length and accepted; so are chunks after ``data``
    (``LIST`` metadata…) and bytes after the RIFF form. Other formats (MP3, FLAC, Ogg) carry no length a header
    check could hold them to, so only WAV is checked. Cheap: a handful of 8-byte chunk headers are read.

    The answer reads after a noun: ``f"{model} answered {problem}"`` (``"WAV audio cut short: declared 16000
    bytes of sound data, got 7990"``).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    riff_size = int.from_bytes(data[4:8], "little")
    if riff_size not in _UNKNOWN_SIZES and riff_size + 8 > len(data) + _RIFF_SIZE_SLACK:
        problem = f"declared {riff_size + 8} bytes in its RIFF header, got {len(data)}"
    else:
        problem = None
    offset = 12
    for _ in range(_MAX_WAV_CHUNKS):
        if offset + 8 > len(data):
            break
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        present = len(data) - offset - 8
        if chunk_id == b"data":
            if size not in _UNKNOWN_SIZES and size > present:
                problem = f"declared {size} bytes of sound data, got {present}"
            break  # chunks after the samples are metadata: the RIFF size covers them
        if size > present:
            problem = f"its {chunk_id.decode('latin-1')!r} chunk declares {size} bytes, got {present}"
            break
        offset += 8 + size + (size & 1)
    return f"WAV audio cut short: {problem}" if problem else None


MediaKind = Literal["image", "audio"]

MEDIA_KINDS: dict[MediaKind, tuple[frozenset[str], str, str]] = {
    "image": (frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}), "an image", "PNG, JPEG, WEBP or GIF"),
    "audio": (
        frozenset({"audio/wav", "audio/mpeg", "audio/flac", "audio/ogg", "video/mp4", "video/webm"}),
        "audio",
        "WAV, MP3, FLAC, OGG, M4A/MP4 or WEBM",
    ),
}
"""Per kind of media field: the sniffed types it accepts, what to call it, and the formats to name."""


def media_kind_problem(media: MediaInput, kind: MediaKind) -> str | None:
    """Why ``media``'s bytes cannot fill a field of ``kind``, or None when they can (or are not fetched yet)."""
    if not media.resolved:
        return None  # a URL: checked once the router has fetched it
    accepted, noun, formats = MEDIA_KINDS[kind]
    found = media.media_type
    if found in accepted:
        return None
    if found == "application/octet-stream":
        return f"{media.describe()} is not {noun} genroute recognises; give a {formats} file"
    if found.startswith(f"{kind}/"):  # the right kind, in a format genroute does not take (HEIC, AVIF)
        return f"{media.describe()} is {found}, a format genroute does not take here; give a {formats} file"
    return f"{media.describe()} is {found}, not {noun}; give a {formats} file"


class MediaCheck:
    """Pydantic metadata for a media field: its bytes must be of ``kind`` (``Annotated[MediaInput, MediaCheck(...)]``).

    Paths, bytes and ``data:`` URIs are checked when the request is validated; URL inputs when the router has
    fetched them (see :meth:`genroute.types._Request.check_media`).
    """

    __slots__ = ("kind",)

    def __init__(self, kind: MediaKind) -> None:
        self.kind: MediaKind = kind

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, media: MediaInput) -> MediaInput:
        problem = media_kind_problem(media, self.kind)
        if problem:
            raise ValueError(problem)
        return media

    def __repr__(self) -> str:
        return f"MediaCheck({self.kind!r})"


class MediaInput:
    """An input file given as a path, raw bytes, a ``data:`` URI or an http(s) URL (a ``file://`` URL is a path).

    Paths and data URIs are read when the request is validated, so a missing file fails before any
    money moves. URLs are fetched by the router (:meth:`aresolve`) before the cache key is computed:
    the key holds the content hash, never the URL, because the same URL can serve new bytes.
    """

    __slots__ = ("_data", "_sha256", "path", "url")

    def __init__(self, *, data: bytes | None = None, path: Path | None = None, url: str | None = None):
        self._data = data
        self._sha256: str | None = None
        self.path = path
        self.url = url

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: Any) -> MediaInput:
        """Accept a path, bytes, ``data:`` URI, http(s) URL, another MediaInput, or a result's
        :class:`~genroute.types.Artifact` (so one request's output feeds the next).

        A ``file://`` URL (or ``file:`` with a relative path) is read as the local file it names; another
        ``scheme://`` (``ftp://``, ``s3://``…) is refused as not supported, never looked up as a path, and so is a
        ``scheme:`` URI without ``//`` (``mailto:``, ``javascript:``) unless a file of that very name exists."""
        if isinstance(value, MediaInput):
            return value
        if isinstance(getattr(value, "path", None), Path) and isinstance(getattr(value, "sha256", None), str):
            return cls._from_artifact(value.path, value.sha256)
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            if not data:
                raise ValueError("media bytes are empty")
            return cls(data=data)
        if isinstance(value, Path):
            return cls._from_path(value)
        if isinstance(value, str):
            scheme = _url_scheme(value)
            if scheme is None and (bare := _bare_scheme(value)) is not None:
                return cls._from_bare_scheme(value, bare)
            if scheme in ("http", "https"):
                value = scheme + value[len(scheme) :]  # HTTP://… is http://…
                try:
                    httpx.URL(value)
                except (httpx.InvalidURL, ValueError) as exc:
                    raise ValueError(f"not a valid URL: {exc}") from exc
                return cls(url=value)
            if scheme == "file":
                return cls._from_path(_file_url_path(value))
            if scheme is not None:
                raise ValueError(
                    f"{scheme}:// URLs are not supported; give a file path, bytes, an http(s) URL or a data: URI "
                    "(a file:// URL is read as the local file it names)"
                )
            if not value.strip():
                raise ValueError(f"media path is empty; give {ACCEPTED_INPUTS}")
            try:
                path = Path(value).expanduser()
            except RuntimeError as exc:  # "~unknown-user/…"
                raise ValueError(f"cannot expand {value!r}: {exc}") from exc
            return cls._from_path(path)
        raise ValueError(f"expected {ACCEPTED_INPUTS.replace(' or ', ', ')} or an Artifact, got {type(value).__name__}")

    @classmethod
    def _from_bare_scheme(cls, value: str, scheme: str) -> MediaInput:
        """A string starting ``scheme:`` without ``//``: a ``data:`` URI, a ``file:`` URL (``file:/tmp/x.png``, or
        relative, ``file:my%20fox.png``), or a URI of a scheme genroute cannot read (``mailto:``, ``javascript:``).

        A file of that very name (``notes:v2.png`` in the working directory) is still read: a path is never
        refused for looking like a URI."""
        if scheme == "data":
            return cls(data=_decode_data_uri(value))
        if scheme == "file":
            return cls._from_path(_file_url_path(value))
        if scheme in ("http", "https"):
            raise ValueError(f"not a valid URL: {scheme}: needs //host, as in {scheme}://example.com/picture.png")
        try:
            if Path(value).is_file():
                return cls._from_path(Path(value))
        except (OSError, ValueError):  # a name the file system refuses: not a file
            pass
        raise ValueError(
            f"{scheme}: URIs are not supported, and no file is named {value[:80]!r}; give {ACCEPTED_INPUTS}"
        )

    @classmethod
    def _from_artifact(cls, path: Path, sha256: str) -> MediaInput:
        if not path.is_file():
            raise ValueError(
                f"the artifact's file {path} is gone (evicted from the result store, or deleted); copy outputs "
                "you chain with Artifact.save, or run the request that made it again"
            )
        media = cls._from_path(path)
        if media.sha256 != sha256:
            raise ValueError(f"the artifact's file {path} no longer holds the bytes it was stored with")
        return media

    @classmethod
    def _from_path(cls, path: Path) -> MediaInput:
        try:
            mode = path.stat().st_mode  # follows a symlink to what it names
        except (FileNotFoundError, NotADirectoryError):
            raise ValueError(
                f"file not found: {path} (give an existing {ACCEPTED_INPUTS.removeprefix('a ')})"
            ) from None
        except OSError as exc:  # a name the file system refuses (too long, …), a symlink loop
            raise ValueError(f"cannot use path {str(path)[:80]!r}: {exc.strerror}") from exc
        if stat.S_ISDIR(mode):
            raise ValueError(
                f"{path} is a directory, not a file (give the path of a file in it, bytes, or an http(s) URL)"
            )
        if not stat.S_ISREG(mode):  # reading a FIFO would wait for a writer; a device never ends
            raise ValueError(
                f"{path} is not a regular file but a pipe, device or socket (give a file, bytes, or an http(s) URL)"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
        if not data:
            raise ValueError(f"file is empty: {path}")
        return cls(data=data, path=path)

    # -- content ------------------------------------------------------------------------------
    @property
    def resolved(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> bytes:
        """The bytes; raises if a URL input has not been fetched yet."""
        if self._data is None:
            raise InvalidRequest(f"URL input {self.url} was not fetched", hint="call Router.arun, which fetches it")
        return self._data

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256

    @property
    def media_type(self) -> str:
        return sniff_media_type(self.data)

    async def aresolve(self, client: httpx.AsyncClient, *, max_bytes: int, field: str) -> None:
        """Fetch a URL input once, refusing bodies over ``max_bytes``."""
        if self._data is not None or self.url is None:
            return
        try:
            async with client.stream("GET", self.url, follow_redirects=True) as response:
                if response.status_code >= 400:
                    raise InvalidRequest(
                        f"fetching {self.url} answered HTTP {response.status_code}",
                        field=field,
                        hint="check the URL is reachable and public",
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidRequest(
                            f"{self.url} is larger than {max_bytes} bytes (routing.max_input_bytes)",
                            field=field,
                            hint=INPUT_TOO_LARGE_HINT,
                        )
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise InvalidRequest(
                f"cannot fetch {self.url}: {type(exc).__name__}", field=field, hint="check the URL"
            ) from exc
        if not chunks:
            raise InvalidRequest(f"{self.url} returned no bytes", field=field)
        self._data = b"".join(chunks)

    # -- identity and serialisation -----------------------------------------------------------
    def describe(self) -> str:
        """What the user gave: the path, the URL, or ``bytes:<sha256 prefix>``."""
        if self.path is not None:
            return str(self.path)
        if self.url is not None:
            return self.url
        return f"bytes:{self.sha256[:16]}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MediaInput):
            return NotImplemented
        if self.resolved and other.resolved:
            return self.sha256 == other.sha256
        return self.url == other.url and self.url is not None

    def __hash__(self) -> int:
        return hash(self.sha256 if self.resolved else self.url)

    def __repr__(self) -> str:
        return f"MediaInput({self.describe()!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda m: m.describe()),
            json_schema_input_schema=core_schema.str_schema(),
        )


# ``scheme://`` at the start of a string: a URL, not a path. Two characters at least, so a Windows drive (``C:/``)
# is never taken for a scheme.
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


def _url_scheme(value: str) -> str | None:
    """The scheme (lower case) when ``value`` is a URL (``scheme://…``, or ``file:/path``), else None."""
    match = _URL_SCHEME.match(value)
    if match:
        return match.group(1).lower()
    return "file" if value[:6].lower() == "file:/" else None  # RFC 8089 also allows file:/path


# ``scheme:`` at the start of a string, without ``//``: a URI (``mailto:a@b``, ``data:…``, ``file:x.png``), unless a
# file of that name exists. Two characters at least (a Windows drive, ``C:\x`` or ``C:x``, is a path), and no path
# separator before the colon (``pictures/a:b.png`` is a path).
_BARE_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _bare_scheme(value: str) -> str | None:
    """The scheme (lower case) of a URI written without ``//`` (``mailto:a@b``, ``file:x.png``), else None."""
    match = _BARE_SCHEME.match(value)
    return match.group(1).lower() if match else None


def _file_url_path(url: str) -> Path:
    """The local path a ``file:`` URL names (``file:///tmp/a%20b.png`` is ``/tmp/a b.png``; ``file:a%20b.png`` is
    ``a b.png`` of the working directory, as a relative path is)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"file:// URL names host {parts.netloc!r}; only files on this machine can be read "
            "(file:///path/to/file, or give the path itself)"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "a file:// URL cannot have a query (?) or fragment (#); percent-encode those characters in the "
            "file name (%3F, %23), or give the path itself"
        )
    path = url2pathname(parts.path)
    if not path.strip("/"):
        raise ValueError("file:// URL names no file; give file:///path/to/file, or the path itself")
    return Path(path)


def _decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ValueError("malformed data: URI (no comma)")
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("malformed base64 in data: URI") from exc
    if not data:
        raise ValueError("data: URI holds no bytes")
    return data
