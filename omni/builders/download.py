"""Fetching data: resumable HTTP downloads with sha256 checks, pip sdists, apt packages, archives.

Downloads go to `<dest>.part` first and are renamed only once complete and verified, so an
interrupted run resumes (HTTP Range) and never leaves a file that looks finished but is not.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

USER_AGENT = "uomni-download/1.0"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """An HTTP request failed, or the connection broke mid-download."""


class ChecksumError(DownloadError):
    """A finished download does not have the expected sha256."""


class MissingPackageError(RuntimeError):
    """A system package is needed and cannot be installed by this process."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None, url: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256.lower():
        path.unlink()
        raise ChecksumError(
            f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}. The download was "
            f"deleted; check the URL and --sha256, then run again."
        )


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """GET url from byte offset; None when the server says the .part already holds it all."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and e.headers.get("Content-Range", "") == f"bytes */{offset}":
            return None
        raise DownloadError(f"HTTP {e.code} {e.reason} fetching {url}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url}: {e.reason}; check the URL and the network") from e


def _resume_offset(resp: http.client.HTTPResponse, offset: int, url: str) -> int:
    """Where the response body starts: `offset` for a 206 that honours Range, else 0."""
    if offset == 0:
        return 0
    if resp.status != 206:
        log.warning("%s ignored the Range request; downloading from the start", url)
        return 0
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    if m is None or int(m.group(1)) != offset:
        raise DownloadError(
            f"{url} answered Range bytes={offset}- with Content-Range "
            f"{resp.headers.get('Content-Range')!r}; delete the .part file and run again"
        )
    return offset


def _copy_body(resp: http.client.HTTPResponse, part: Path, start: int, url: str) -> None:
    length = resp.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    done = start
    with open(part, "ab" if start else "wb") as f, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5], leave=False
    ) as bar:
        try:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(
                f"download of {url} broke after {done} bytes ({e}); run again to resume from {part}"
            ) from e
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} stopped at {done} of {total} bytes; run again to resume from {part}"
        )


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch url to dest, resuming a previous `<dest>.part`; verify sha256 when given.

    An existing dest is reused when it matches sha256 (or when no sha256 is given).
    Raises DownloadError on HTTP/network failure, ChecksumError on a hash mismatch.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            log.info("reusing %s", dest)
            return dest
        log.warning("%s does not match sha256 %s; downloading it again", dest, sha256)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    log.info("downloading %s -> %s%s", url, dest, f" (resuming at {offset} B)" if offset else "")
    resp = _open(url, offset, timeout)
    if resp is not None:
        with resp:
            _copy_body(resp, part, _resume_offset(resp, offset, url), url)
    _verify(part, sha256, url)
    if sha256 is None:
        log.warning("no sha256 given for %s; its integrity was not verified", url)
    os.replace(part, dest)
    return dest


def extract_archive(archive: Path, dest_dir: Path) -> Path:
    """Unpack a .tar[.gz|.bz2|.xz]/.tgz/.zip/.whl into dest_dir (reused if it already exists).

    Extraction goes to a temporary sibling directory that is renamed at the end, so an
    interrupted run never leaves a half-extracted dest_dir.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if dest_dir.is_dir():
        log.info("reusing extracted %s", dest_dir)
        return dest_dir
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest_dir.name + ".", dir=dest_dir.parent))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # "data" refuses absolute paths and ../
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive")
        os.replace(tmp, dest_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("extracted %s -> %s", archive, dest_dir)
    return dest_dir


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            target = (dest / name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ValueError(f"{archive} member {name!r} would extract outside {dest}")
        zf.extractall(dest)


def pip_download(requirement: str, dest_dir: Path) -> Path:
    """`pip download --no-deps requirement` into dest_dir; returns the sdist/wheel path.

    A file already in dest_dir for that name and version is reused without contacting the index.
    """
    name, _, version = requirement.partition("==")
    stem = re.sub(r"[-_.]+", "[-_.]", name) + "-" + re.escape(version)
    pattern = re.compile(stem + r"(?:-|\.tar\.gz$|\.zip$)", re.IGNORECASE)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)

    def find() -> Path | None:
        return next((p for p in sorted(dest_dir.iterdir()) if pattern.match(p.name)), None)

    found = find()
    if found is not None:
        log.info("reusing %s", found)
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest_dir), requirement]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = find()
    if proc.returncode != 0 or found is None:
        raise DownloadError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return found


def missing_apt_packages(packages: list[str]) -> list[str]:
    """The packages dpkg does not report as installed."""
    if shutil.which("dpkg-query") is None:
        raise MissingPackageError(
            f"dpkg-query not found: this source needs the Debian/Ubuntu packages {' '.join(packages)}"
        )
    missing = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if proc.returncode != 0 or not proc.stdout.endswith("install ok installed"):
            missing.append(pkg)
    return missing


def ensure_apt_packages(packages: list[str]) -> None:
    """Install missing apt packages when running as root; otherwise name the exact command.

    `apt-get update` is run once if the first install fails (stale or empty package lists).
    """
    missing = missing_apt_packages(packages)
    if not missing:
        return
    command = f"apt-get install -y {' '.join(missing)}"
    if os.geteuid() != 0:
        raise MissingPackageError(f"missing apt packages {missing}; install them with: sudo {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    log.info("installing %s", " ".join(missing))
    proc = subprocess.run(install, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log.info("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise MissingPackageError(f"`{command}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
