"""DCGM exporter stand-in for Molecule: serves one DCGM metric on :9400/metrics (there is no GPU to read)."""
from http.server import BaseHTTPRequestHandler, HTTPServer

METRICS = b'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-stand-in",modelName="stand-in"} 0\n'


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(METRICS if self.path == "/metrics" else b"")


HTTPServer(("0.0.0.0", 9400), Handler).serve_forever()
