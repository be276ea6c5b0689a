"""A local HTTP server for model archives: throttled, interruptible, with Range support (for resume)."""

from __future__ import annotations

import hashlib
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_model_archive(model_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(model_dir, arcname=model_dir.name)
    return archive


class ArchiveServer:
    """Serves one file at /model.tar.gz on 127.0.0.1. `cut_after` bytes: the first response is cut there."""

    def __init__(self, path: Path, bytes_per_second: int | None = None, cut_after: int | None = None):
        self.data = Path(path).read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.bytes_per_second = bytes_per_second
        self.cut_after = cut_after
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/model.tar.gz":
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                outer.requests.append({"range": range_header})
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}")
                else:
                    self.send_response(200)
                body = outer.data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.cut_after
                if cut is not None and len(outer.requests) == 1:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                step = 64 * 1024
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    if outer.bytes_per_second:
                        time.sleep(step / outer.bytes_per_second)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.tar.gz"

    def __enter__(self) -> "ArchiveServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
