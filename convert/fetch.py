"""Downloading the items' images from the URLs of Amazon's metadata into the image folder.

Resumable: a file already in the folder is not fetched again, and each download is written to a temporary name
and renamed, so the folder only ever holds whole images. Polite: at most `rate` requests a second over all the
threads, a response over `max_bytes` is refused (by its Content-Length, else as it is read), and a timeout, a
dropped connection, 429 or a 5xx is retried `retries` times with exponential back-off; other HTTP errors and
content PIL cannot identify as an image are failures at once. Only http and https URLs are fetched.
"""
import io
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image
from tqdm import tqdm

from common.images import UNDECODABLE

USER_AGENT = "visually-aware-fashion-converter (+research; one image per item)"
RETRIED_STATUS = {429, 500, 502, 503, 504}


@dataclass
class FetchSettings:
    rate: float = 5.0          # requests per second, all threads together
    workers: int = 4
    retries: int = 3
    timeout: float = 30.0
    max_bytes: int = 10_000_000
    backoff: float = 1.0       # seconds before the first retry, doubled after each


class RateLimit:
    """Spaces the calls to wait() at least 1/rate seconds apart, over all threads."""

    def __init__(self, rate: float):
        self.interval, self.next, self.lock = 1.0 / rate, time.monotonic(), threading.Lock()

    def wait(self):
        with self.lock:
            start = max(self.next, time.monotonic())
            self.next = start + self.interval
        time.sleep(max(0.0, start - time.monotonic()))


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


def _download(url: str, settings: FetchSettings) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > settings.max_bytes:
                raise _Failure(f"{int(length):,} bytes, over --max-image-bytes {settings.max_bytes:,}", False)
            data = response.read(settings.max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise _Failure(f"HTTP {e.code}", e.code in RETRIED_STATUS) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise _Failure(str(getattr(e, "reason", e)), True) from None
    if len(data) > settings.max_bytes:
        raise _Failure(f"over --max-image-bytes {settings.max_bytes:,}", False)
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except (*UNDECODABLE, Image.DecompressionBombError):
        raise _Failure("not an image", False) from None
    return data


def fetch_one(url: str, path: Path, settings: FetchSettings, limit: RateLimit) -> str | None:
    """Download `url` into `path` unless it is there; None, or why it failed."""
    if path.is_file():
        return None
    if urlparse(url).scheme not in ("http", "https"):
        return f"not an http(s) URL: {url[:80]}"
    for attempt in range(settings.retries + 1):
        limit.wait()
        try:
            data = _download(url, settings)
        except _Failure as failure:
            if not failure.retry or attempt == settings.retries:
                return str(failure)
            time.sleep(settings.backoff * 2**attempt)
            continue
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return None


def fetch_images(jobs: list[tuple[str, Path]], settings: FetchSettings) -> list[str | None]:
    """fetch_one for each (url, path); the failures in the same order (None where the file is there)."""
    limit = RateLimit(settings.rate)
    for folder in {path.parent for _, path in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    failures = [None] * len(jobs)
    todo = [k for k, (_, path) in enumerate(jobs) if not path.is_file()]
    with ThreadPoolExecutor(settings.workers) as pool, \
            tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="fetching images", unit="img") as bar:
        def run(k):
            failures[k] = fetch_one(*jobs[k], settings, limit)
            bar.update(1)
        list(pool.map(run, todo))
    return failures


def fetched_image_folder(cfg) -> Path:
    """Where a source whose images are fetched keeps them (--images)."""
    return Path(cfg.images)
