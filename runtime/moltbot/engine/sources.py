"""Where a model's files come from: a local folder (ONNX export, or a PyTorch checkpoint exported once), or a
remote archive downloaded with resume, verified and unpacked atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

from moltbot.engine.builder_runner import is_builder_graph
from moltbot.engine.config import ModelConfig
from moltbot.engine.export_marker import read_marker
from moltbot.export.genai_builder import graph_recipe
from moltbot.logs import redact_url, redact_urls
from moltbot.settings import Settings

SOURCE_MARKER = ".moltbot-source.json"
# Told (bytes done, bytes in all when known) as a download goes.
Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20
MAX_REDIRECTS = 5


class ModelSourceError(RuntimeError):
    """The model's files cannot be had; the message says what went wrong. URLs in it lose their user info and
    query string (a signed URL's signature): the message goes to the log and, behind a key, to /ready."""

    def __init__(self, message: str):
        super().__init__(redact_urls(message))


def is_onnx_export(folder: Path) -> bool:
    return (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists()


def is_pytorch_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin"))


def resolve_local(folder: Path, task: str, cache_dir: Path, precision: str = "fp32", device: str = "cpu",
                  builder_python: str | None = None) -> Path:
    """The ONNX folder to serve: `folder` itself, or its cached export when it holds a PyTorch checkpoint (for chat
    models the model builder's graph at `precision` where the builder is there and covers the model, else
    Optimum's; see export/__main__.py)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelSourceError(f"{folder}: no such model folder")
    if is_onnx_export(folder):
        return folder
    if not is_pytorch_checkpoint(folder):
        raise ModelSourceError(f"{folder}: neither an ONNX export (model.onnx + tokenizer.json) nor a "
                               "Hugging Face checkpoint (config.json + weights)")
    stamp = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stamp.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    # Keyed by what can change the result, the builder's presence included (without it, chat models fall back to
    # Optimum's export; once it is there, the builder's graph is made).
    maker = graph_recipe(precision, device) if builder_python and task == "chat" else "optimum"
    target = Path(cache_dir) / "exports" / f"{folder.name}-{task}-{precision}-{device}-{maker}-{stamp.hexdigest()[:16]}"
    if is_onnx_export(target):
        return target
    args = ["moltbot.export", str(folder), str(target), "--task", task, "--precision", precision, "--device", device]
    _run_export_step(args + (["--builder-python", builder_python] if builder_python else []),
                     f"exporting {folder} to ONNX ({precision})")
    return target


def onnx_folder(folder: Path, config: ModelConfig, settings: Settings) -> Path:
    """The folder of ONNX files to serve for `config`: its export when `folder` holds a checkpoint, at the precision
    the config's `quantize` asks for (fp32 without one). Embedding models: Optimum's export, int8 by dynamic
    quantisation. The backend checks that a graph it was given as is has the precision asked for."""
    device = config.device or settings.device
    precision = config.quantize or "fp32"
    if precision == "fp16" and device != "cuda":
        raise ModelSourceError(f"{config.name}: quantize fp16 is for device cuda (on the CPU use int8 or int4)")
    if (gguf := gguf_file_in(Path(folder))) is not None:
        if config.task != "chat":
            raise ModelSourceError(f"{config.name}: a GGUF file is imported as a chat model, not {config.task}")
        return imported_gguf(gguf, settings.cache_dir, precision, device, settings.builder_python)
    export_precision = precision if config.task == "chat" else "fp32"
    folder = resolve_local(folder, config.task, settings.cache_dir, export_precision, device, settings.builder_python)
    if is_builder_graph(folder):
        return folder
    if precision == "int8" and read_marker(folder).get("precision") != "int8":
        return quantized(folder, settings.cache_dir)
    if precision == "int4":
        raise ModelSourceError(f"{folder}: int4 graphs are made by the model builder from a Hugging Face "
                               "checkpoint: point path at the checkpoint and set builder_python")
    return folder


def gguf_file_in(path: Path) -> Path | None:
    """The GGUF file a model's `path` names: the file itself, or the one .gguf in a folder that holds neither an
    ONNX export nor a checkpoint (a downloaded `url` naming a .gguf lands in such a folder)."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or is_onnx_export(path) or is_pytorch_checkpoint(path):
        return None
    files = sorted(path.glob("*.gguf"))
    return files[0] if len(files) == 1 else None


def imported_gguf(gguf: Path, cache_dir: Path, precision: str, device: str, builder_python: str | None) -> Path:
    """The serving graph of a GGUF file, made once (export/gguf.py; the conversion runs in the builder's venv)
    and cached under cache_dir/gguf, keyed by the file (name, size, mtime) and how the graph is made."""
    from moltbot.export.genai_builder import BuilderUnavailable
    from moltbot.export.gguf import GGUFError, import_gguf

    stat = gguf.stat()
    stamp = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(cache_dir) / "gguf" / f"{gguf.stem}-{precision}-{device}-{graph_recipe(precision, device)}-{stamp}"
    if (target / "model.onnx").exists():
        return target
    try:
        return import_gguf(gguf, target, precision, device, builder_python=builder_python)
    except (GGUFError, BuilderUnavailable, ValueError, RuntimeError, OSError) as exc:
        raise ModelSourceError(f"importing {gguf}: {exc}") from exc


def quantized(folder: Path, cache_dir: Path) -> Path:
    """The int8 copy of an ONNX model folder, made once (in a child process) and cached."""
    onnx_file = folder / "model.onnx"
    stamp = hashlib.sha256(f"{folder.resolve()}:{onnx_file.stat().st_size}:{onnx_file.stat().st_mtime_ns}".encode())
    # "marked": copies made since the export marker records their precision (older cached copies lack it and
    # would be taken for fp32 graphs), so those are made again.
    target = Path(cache_dir) / "quantized" / f"{folder.name}-int8-marked-{stamp.hexdigest()[:16]}"
    if not is_onnx_export(target):
        _run_export_step(["moltbot.export.quantize", str(folder), str(target)], f"quantising {folder} to int8")
    return target


def _run_export_step(module_args: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelSourceError(f"{what} failed: {' / '.join(tail)}")


def fetch_remote(config: ModelConfig, models_dir: Path,
                 progress: Progress | None = None,
                 timeout: float = 30.0, cancel: threading.Event | None = None) -> Path:
    """Download config.url into models_dir/<name>, verified against config.sha256. Idempotent.

    The transfer goes to models_dir/.downloads/<sha256>.part and resumes from there (HTTP Range) when it was
    interrupted; the model folder appears only once the archive is complete, verified and unpacked.
    """
    if not config.url or not config.sha256:
        raise ModelSourceError(f"{config.name}: a remote model needs url and sha256")
    models_dir = Path(models_dir)
    target = models_dir / config.name.replace("/", "--")
    expected = config.sha256.lower()
    marker = target / SOURCE_MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("sha256") == expected:
                return target
        except ValueError:
            pass
    downloads = models_dir / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / f"{expected}.part"
    _download(config.url, part, progress, timeout, cancel, max_bytes=config.max_download_bytes,
              allow_http=config.allow_http)
    actual = file_sha256(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ModelSourceError(f"{config.url}: sha256 mismatch (expected {expected}, got {actual}); "
                               "the download was discarded")
    _unpack_atomically(part, target, {"url": redact_url(config.url), "sha256": expected}, gguf_name(config.url))
    part.unlink(missing_ok=True)
    return target


def gguf_name(url: str) -> str | None:
    """The file name when the URL's path names a .gguf file (kept as is, not unpacked), else None."""
    name = httpx.URL(url).path.rsplit("/", 1)[-1]
    return name if name.lower().endswith(".gguf") and name != ".gguf" else None


def _download(url: str, part: Path, progress: Progress | None, timeout: float, cancel: threading.Event | None,
              max_bytes: int = 16 * 1024**3, allow_http: bool = False) -> None:
    """GET url into part (resuming it), following at most MAX_REDIRECTS redirects; refuses a plain http:// URL or
    redirect unless allow_http, and stops (deleting the part) once Content-Length or the bytes received pass
    max_bytes. Each redirect is checked before it is followed: a refused hop is never requested (its URL may be
    signed), and a later hop back to https:// does not make an http:// one in between acceptable."""
    if url.startswith("http://") and not allow_http:
        raise ModelSourceError(f"{url}: plain http:// is refused; use https:// or set allow_http in the model config")

    def check_hop(request: httpx.Request) -> None:  # httpx calls it before sending each request, redirects included
        if request.url.scheme != "https" and not allow_http:
            raise ModelSourceError(f"{url}: redirected to {redact_url(str(request.url))} (plain http://), "
                                   "which is refused; set allow_http in the model config to accept it")
    have = part.stat().st_size if part.exists() else 0
    if have > max_bytes:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=timeout,
                          event_hooks={"request": [check_hop]}) as client, \
                client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and have:  # nothing left to fetch
                return
            if response.status_code not in (200, 206):
                raise ModelSourceError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            if response.status_code == 200:
                have = 0  # the server ignored the range: start again
            total = response.headers.get("content-length")
            total = int(total) + have if total is not None else None
            if total is not None and total > max_bytes:
                part.unlink(missing_ok=True)
                raise ModelSourceError(f"{url}: the archive is {total} bytes, more than the model's "
                                       f"max_download_bytes ({max_bytes}); nothing was kept")
            with part.open("ab" if have else "wb") as fh:
                done = have
                for chunk in response.iter_raw():  # as received, undecoded: every byte counts for a resume
                    if cancel is not None and cancel.is_set():
                        raise ModelSourceError(f"{url}: download stopped at shutdown; it resumes at the next start")
                    done += len(chunk)
                    if done > max_bytes:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise ModelSourceError(f"{url}: more than the model's max_download_bytes ({max_bytes}) "
                                               "received; the download was stopped and discarded")
                    fh.write(chunk)
                    if progress:
                        progress(done, total)
            if total is not None and done < total:
                raise ModelSourceError(f"{url}: transfer interrupted at {done} of {total} bytes; "
                                       "run again to resume")
    except httpx.TooManyRedirects:
        raise ModelSourceError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
    except httpx.HTTPError as exc:
        size = part.stat().st_size if part.exists() else 0
        raise ModelSourceError(f"{url}: download failed after {size} bytes ({type(exc).__name__}: {exc}); "
                               "run again to resume") from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack_atomically(archive: Path, target: Path, meta: dict[str, str], single_file: str | None = None) -> None:
    """Unpack `archive` into the model folder `target`, or (single_file) move it there under that name."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if single_file:
            archive.rename(work / single_file)
        else:
            _extract(archive, work)
        entries = [p for p in work.iterdir()]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else work
        if root is not work:  # the archive holds one top folder: serve its contents
            for item in root.iterdir():
                item.rename(work / item.name)
            root.rmdir()
        (work / SOURCE_MARKER).write_text(json.dumps(meta))
        work.chmod(0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            work.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _extract(archive: Path, dest: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_member(name, dest)
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:  # checked here too: Pythons before 3.11.4 have no extraction filters
                    if not (member.isfile() or member.isdir()):
                        raise ModelSourceError(f"archive member {member.name!r} is not a plain file or folder")
                    _check_member(member.name, dest)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(dest, members=members, filter="data")
                else:
                    tf.extractall(dest, members=members)
        else:
            raise ModelSourceError(f"{archive.name}: not a tar or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise ModelSourceError(f"cannot unpack the model archive: {exc}") from exc


def _check_member(name: str, dest: Path) -> None:
    resolved = (dest / name).resolve()
    if not str(resolved).startswith(str(dest.resolve()) + os.sep) and resolved != dest.resolve():
        raise ModelSourceError(f"archive member {name!r} would land outside the model folder")
