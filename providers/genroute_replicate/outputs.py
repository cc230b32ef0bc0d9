"""A finished prediction's output as genroute output: downloaded bytes, text, or timed segments.

Output URLs expire (about an hour on Replicate), so files are downloaded at once and kept as bytes. A
download must come from an allowed host (``replicate.delivery`` and its subdomains by default, plus
the configured ``base_url``'s host) over https, stay under ``max_output_bytes``, and be, by its first
bytes, the kind of file the task makes: an HTML error page or a JSON document where an image was
expected is refused (:class:`genroute.errors.OutputRejected`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from genroute import errors
from genroute.media import sniff_media_type
from genroute.secrets import redact
from genroute.types import OutputFile, Segment, Task

from .options import ReplicateOptions

NAME = "replicate"
Kind = Literal["image", "video", "audio", "text", "transcript"]
TASK_KINDS: dict[Task, Kind] = {
    "text-to-image": "image",
    "image-to-image": "image",
    "inpaint": "image",
    "upscale": "image",
    "remove-background": "image",
    "text-to-video": "video",
    "image-to-video": "video",
    "text-to-speech": "audio",
    "speech-to-text": "transcript",
    "text-generation": "text",
}
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Parsed:
    files: list[OutputFile]
    text: str | None = None
    segments: list[Segment] | None = None


# -- sniffing --------------------------------------------------------------------------------------
def sniff(data: bytes) -> str:
    """The media type by content (never by header or URL suffix)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    found = sniff_media_type(data)
    if found == "audio/wav":  # RIFF that is not WAVE, WEBP or AVI
        return "application/octet-stream"
    if found != "application/octet-stream":
        return found
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return "text/html"
    if head.startswith((b"{", b"[")):
        return "application/json"
    return found


def acceptable(kind: Kind, media_type: str) -> bool:
    if kind == "image":
        return media_type.startswith("image/")
    if kind == "video":
        return media_type.startswith("video/") or media_type == "image/gif"
    if kind == "audio":
        return media_type.startswith("audio/")
    return True


# -- hosts and downloads ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _api_origin(base_url: str) -> tuple[str, str]:
    """(scheme, lower-case host) of the configured API root, parsed once."""
    api = urlsplit(base_url)
    return api.scheme, (api.hostname or "").lower()


@functools.lru_cache(maxsize=32)
def _api_port(base_url: str) -> int | None:
    return urlsplit(base_url).port  # raises ValueError for a bad port (not cached: raises every time)


def host_allowed(url: str, options: ReplicateOptions) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if options.base_url is not None:
        scheme, api_host = _api_origin(options.base_url)
        if parts.scheme == scheme and host == api_host and parts.port == _api_port(options.base_url):
            return True
    if parts.scheme != "https" or not host:
        return False
    return any(host == allowed or host.endswith("." + allowed) for allowed in options.allowed_output_hosts)


def _rejected(message: str) -> errors.OutputRejected:
    return errors.OutputRejected(redact(message), provider=NAME)


def decode_data_uri(uri: str, limit: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise _rejected("output is a malformed data: URI")
    if len(payload) * 3 // 4 > limit:
        raise _rejected(f"output is over max_output_bytes ({limit} bytes)")
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise _rejected("output is a data: URI with malformed base64") from exc
    return data


async def download(url: str, http: httpx.AsyncClient, options: ReplicateOptions) -> bytes:
    """The bytes at ``url`` (a ``data:`` URI or an allowed https URL), refused when over the size cap."""
    limit = options.max_output_bytes
    if url.startswith("data:"):
        return decode_data_uri(url, limit)
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        if not host_allowed(current, options):
            host = urlsplit(current).hostname or "?"
            raise _rejected(
                f"output URL host {host!r} is not allowed (allowed_output_hosts: "
                f"{', '.join(options.allowed_output_hosts)}; https only)"
            )
        try:
            async with http.stream("GET", current) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code in (404, 410):
                    raise errors.ProviderError(
                        f"output {current} is no longer available (HTTP {response.status_code}; Replicate removes "
                        "outputs after about an hour)",
                        provider=NAME,
                    )
                if response.status_code >= 400:
                    raise errors.ProviderUnavailable(
                        f"downloading an output answered HTTP {response.status_code}", provider=NAME
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise _rejected(f"output is {declared} bytes, over max_output_bytes ({limit})")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise _rejected(f"output is over max_output_bytes ({limit} bytes)")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException as exc:
            raise errors.ProviderTimeout(
                f"downloading an output timed out: {type(exc).__name__}", provider=NAME
            ) from exc
        except httpx.TransportError as exc:
            raise errors.ProviderUnavailable(
                f"downloading an output failed: {type(exc).__name__}", provider=NAME
            ) from exc
    raise _rejected(f"output URL redirected more than {_MAX_REDIRECTS} times")


# -- output shapes ---------------------------------------------------------------------------------
def file_urls(output: Any) -> list[str]:
    """Every output file reference (https URL or data: URI) in an output, in order."""
    return list(_walk(output))


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith(("data:", "https://", "http://")):
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)


def text_of(output: Any) -> str:
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, list | tuple):
        return "".join(str(piece) for piece in output if piece is not None)
    if isinstance(output, Mapping):
        for key in ("text", "output", "response", "completion"):
            if isinstance(output.get(key), str):
                return str(output[key])
    return str(output)


def transcript_of(output: Any) -> tuple[str, list[Segment]]:
    """Text and timed segments from whisper-shaped (``segments``) or HF-shaped (``chunks``) output."""
    if isinstance(output, str):
        return output.strip(), []
    if not isinstance(output, Mapping):
        raise errors.ProviderError("speech-to-text output is neither text nor a transcript object", provider=NAME)
    segments: list[Segment] = []
    for item in output.get("segments") or output.get("chunks") or []:
        if not isinstance(item, Mapping):
            continue
        start, end = item.get("start"), item.get("end")
        stamp = item.get("timestamp")
        if (start is None or end is None) and isinstance(stamp, list | tuple) and len(stamp) == 2:
            start, end = stamp
        try:
            begin, finish = max(0.0, float(start)), float(end)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        segments.append(Segment(start=begin, end=max(begin, finish), text=str(item.get("text", "")).strip()))
    text = output.get("transcription") or output.get("text")
    if not isinstance(text, str) or "-->" in text:  # srt/vtt styled: rebuild plain text from the segments
        text = " ".join(s.text for s in segments)
    return text.strip(), segments


async def parse(
    task: Task, prediction: Mapping[str, Any], http: httpx.AsyncClient, options: ReplicateOptions
) -> Parsed:
    """Files (downloaded, checked), text or segments from a succeeded prediction's JSON."""
    kind = TASK_KINDS[task]
    output = prediction.get("output")
    if prediction.get("data_removed"):
        raise errors.ProviderError(
            f"prediction {prediction.get('id')}'s output was removed by Replicate before it was read", provider=NAME
        )
    if kind == "text":
        return Parsed(files=[], text=text_of(output))
    if kind == "transcript":
        text, segments = transcript_of(output)
        return Parsed(files=[], text=text, segments=segments)
    urls = file_urls(output)
    if not urls:
        raise errors.ProviderError(f"prediction {prediction.get('id')} succeeded without an output file", provider=NAME)
    files: list[OutputFile] = []
    for url in urls:
        data = await download(url, http, options)
        media_type = sniff(data)
        if not acceptable(kind, media_type):
            raise _rejected(
                f"output of prediction {prediction.get('id')} is {media_type} ({len(data)} bytes), "
                f"not the {kind} this task makes"
            )
        source = None if url.startswith("data:") else url
        files.append(OutputFile(data=data, media_type=media_type, source_url=source))
    return Parsed(files=files)


def gif_seconds(data: bytes) -> float | None:
    """Playing time of an animated GIF (the sum of its frame durations), or None."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            total = 0
            for index in range(getattr(img, "n_frames", 1)):
                img.seek(index)
                total += int(img.info.get("duration", 0) or 0)
    except Exception:
        return None
    return total / 1000 if total else None
