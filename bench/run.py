"""`make bench`: the runtime against its peers, through the HTTP API, on the models of bench/models.py.

Prepares (cached under build/bench/) the checkpoint, its ONNX export and GGUF conversion, then measures side by
side in one run and writes docs/benchmarks.md. Every point runs a bounded number of times (BENCH_REPEATS,
default 3) and the median is recorded; targets print pass/FAIL but nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import membw
from bench.loadgen import HealthProbe, PointResult, run_point
from bench.models import CPU_SHAPE, GPU_SHAPE, ModelShape, prompt_of_tokens
from bench.prepare import ensure_checkpoint, ensure_gguf, ensure_onnx
from bench.servers import LlamaServer, MoltbotServer
from bench.stats import Target, fmt, markdown_table, median, percentile

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 32
CONCURRENCIES = (1, 8, 32, 64)
THREADS = 2
OVERLOAD_TOKENS = 16  # the 256-request check is about status codes and /health, not throughput


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class System:
    """One server under test and its measured points (concurrency -> one PointResult per repeat)."""

    label: str
    load_seconds: list[float] = field(default_factory=list)
    points: dict[int, list[PointResult]] = field(default_factory=dict)

    def tokens_per_second(self, concurrency: int) -> float | None:
        runs = self.points.get(concurrency)
        return median(p.tokens_per_second for p in runs) if runs else None

    def latency(self, concurrency: int, kind: str, q: float) -> float | None:
        """Median over repeats of the q-th percentile (ms) of TTFT or inter-token gaps."""
        values = []
        for point in self.points.get(concurrency, []):
            ok = [r for r in point.results if r.status == 200]
            samples = ([r.ttft for r in ok if r.ttft is not None] if kind == "ttft"
                       else [g for r in ok for g in r.gaps])
            if samples:
                values.append(1000 * percentile(samples, q))
        return median(values) if values else None


def machine_description() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name")), "unknown")
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "os": platform.platform(), "python": platform.python_version(), "load_average": os.getloadavg()}


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True)
    names = [n.strip() for n in result.stdout.splitlines() if n.strip()]
    return names[0] if result.returncode == 0 and names else None


def make_prompts(checkpoint: Path, count: int) -> tuple[list[str], list[list[int]]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text).ids

    texts = [prompt_of_tokens(encode, PROMPT_TOKENS, variant) for variant in range(count)]
    return texts, [encode(t) for t in texts]


def payloads(model: str, prompts: list[str], start: int, count: int, new_tokens: int, llama: bool) -> list[dict]:
    out = []
    for i in range(count):
        body = {"model": model, "prompt": prompts[(start + i) % len(prompts)], "max_tokens": new_tokens,
                "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
        if llama:
            body["cache_prompt"] = False  # no reuse of a previous request's KV: every prompt is prefilled
        out.append(body)
    return out


def requests_for(concurrency: int) -> int:
    """Requests per point: one per client (two at concurrency 1), bounded so the whole run stays short."""
    return max(2, concurrency)


def check_point(label: str, point: PointResult, new_tokens: int) -> None:
    bad = [r for r in point.results if r.status != 200 or r.tokens != new_tokens]
    if bad:
        first = bad[0]
        log(f"WARNING {label} c{point.concurrency}: {len(bad)} of {len(point.results)} requests did not give "
            f"200 with {new_tokens} tokens (first: status {first.status}, {first.tokens} tokens, {first.error})")


def verify_prompt_length(url: str, model: str, prompt: str, new_tokens: int) -> tuple[int, int]:
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    reply = httpx.post(url + "/v1/completions", json=body, timeout=600).json()
    usage = reply.get("usage") or {}
    return int(usage.get("prompt_tokens", -1)), int(usage.get("completion_tokens", -1))


def measure(system: System, url: str, model: str, prompts: list[str], concurrency: int, new_tokens: int,
            llama: bool, offset: int) -> None:
    count = requests_for(concurrency)
    point = asyncio.run(run_point(url, payloads(model, prompts, offset, count, new_tokens, llama), concurrency))
    check_point(system.label, point, new_tokens)
    system.points.setdefault(concurrency, []).append(point)
    log(f"{system.label:<22} c{concurrency:<3} {point.tokens_per_second:7.1f} tok/s  "
        f"({point.generated_tokens} tokens in {point.wall_seconds:.1f} s, statuses {point.statuses()})")


def overload_checks(server: MoltbotServer, model: str, prompts: list[str], new_tokens: int,
                    streaming64: list[PointResult]) -> list[list[str]]:
    rows = []
    results = [r for p in streaming64 for r in p.results]
    five = sum(1 for r in results if r.status >= 500)
    complete = sum(1 for r in results if r.status == 200 and r.tokens == new_tokens)
    rows.append([f"64 concurrent streaming requests ({len(streaming64)} runs): all complete, no 5xx",
                 f"{complete}/{len(results)} complete, {five} 5xx", "pass" if complete == len(results) and not five
                 else "FAIL"])
    with HealthProbe(server.url + "/health") as probe:
        time.sleep(0.5)
        point = asyncio.run(run_point(server.url, payloads(model, prompts, 1000, 256, OVERLOAD_TOKENS, False),
                                      256))
        health = probe.finish()
    statuses = point.statuses()
    other = {s: n for s, n in statuses.items() if s not in (200, 429)}
    latencies = health["latencies"]
    p99 = 1000 * percentile(latencies, 99) if latencies else None
    rows.append([f"256 concurrent requests ({OVERLOAD_TOKENS} tokens each): each 200 or 429, never 5xx",
                 ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items())),
                 "pass" if not other else "FAIL"])
    rows.append(["/health p99 under 50 ms during that load",
                 f"p99 {fmt(p99)} ms, p50 {fmt(1000 * percentile(latencies, 50), 2)} ms, max "
                 f"{fmt(1000 * max(latencies))} ms over {len(latencies)} probes, {health['failures']} failed",
                 "pass" if p99 is not None and p99 < 50 and not health["failures"] else "FAIL"])
    log(f"overload: {statuses}; /health p99 {fmt(p99)} ms")
    return rows


def hf_eager(checkpoint: Path, token_prompts: list[list[int]], new_tokens: int, repeats: int, device: str,
             dtype: str) -> dict[int, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(token_prompts[:8], fh)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bench.hf_eager", str(checkpoint), "--prompts", fh.name, "--batches", "1", "8",
             "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--device", device, "--dtype", dtype,
             "--threads", str(THREADS if device == "cpu" else 0)],
            capture_output=True, text=True, cwd=REPO, check=False)
    finally:
        os.unlink(fh.name)
    if result.returncode != 0:
        raise RuntimeError(f"transformers eager run failed:\n{result.stderr[-3000:]}")
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    return {int(batch): median(values) for batch, values in runs.items()}


def llama_cpp_paths() -> tuple[Path, Path]:
    root = REPO / "build" / "bench" / "llama.cpp"
    subprocess.run(["bash", str(REPO / "bench" / "build_llama_server.sh"), str(root)], check=True,
                   env={**os.environ, "PY": sys.executable})
    return root / "bin" / "llama-server", root / "src"


def system_table(systems: list[System]) -> str:
    rows = []
    for system in systems:
        for c in sorted(system.points):
            rows.append([system.label, c, system.tokens_per_second(c),
                         system.latency(c, "ttft", 50), system.latency(c, "ttft", 99),
                         system.latency(c, "itl", 50), system.latency(c, "itl", 99)])
    return markdown_table(["System", "Concurrency", "Aggregate tok/s (median)", "TTFT p50 ms", "TTFT p99 ms",
                           "ITL p50 ms", "ITL p99 ms"], rows)


def run_cpu(args, work: Path, report: list[str]) -> None:
    models_root = REPO / "build" / "bench" / "models"
    cache_dir = REPO / "build" / "bench" / "cache"
    shape: ModelShape = CPU_SHAPE
    new_tokens = 64
    checkpoint = ensure_checkpoint(shape, models_root, log=log)
    onnx = ensure_onnx(checkpoint, models_root, shape.name, log=log)
    llama: dict[str, Path] = {}

    def llama_files() -> tuple[Path, Path]:
        """llama-server and the GGUF file, made when first needed (the build takes minutes; on a first run
        it can go on while the runtime is measured)."""
        if not llama:
            llama["bin"], llama_src = llama_cpp_paths()
            llama["gguf"] = ensure_gguf(checkpoint, models_root, shape.name, llama_src, log=log)
        return llama["bin"], llama["gguf"]

    prompts, token_prompts = make_prompts(checkpoint, 1500)
    log(f"prompts: {len(prompts)} distinct texts of {PROMPT_TOKENS} tokens each")

    bandwidth = {t: membw.copy_bandwidth(t) for t in (1, 2)}
    log("memory bandwidth (numpy copy): " + ", ".join(f"{t} thread(s) {b / 1e9:.1f} GB/s"
                                                       for t, b in bandwidth.items()))

    variants = [("moltbot fp32", None)] + ([] if args.skip_int8 else [("moltbot int8", "int8")])
    servers, systems = {}, {}
    try:
        for label, quantize in variants:
            config = {"name": shape.name, "type": "local", "path": str(onnx), "max_tokens": 2048}
            if quantize:
                config["quantize"] = quantize
            home = work / label.replace(" ", "-")
            if quantize:  # the first start makes the quantised model (cached); cold load is measured after
                with MoltbotServer(label, config, home / "prepare", cache_dir) as first:
                    log(f"{label}: first start (includes quantisation unless cached) {first.load_seconds:.1f} s")
            server = MoltbotServer(label, config, home, cache_dir).start()
            servers[label] = server
            systems[label] = System(label, [server.load_seconds])
            log(f"{label}: ready in {server.load_seconds:.2f} s")
            prompt_count, completion_count = verify_prompt_length(server.url, shape.name, prompts[0], new_tokens)
            log(f"{label}: warm-up reply used {prompt_count} prompt and {completion_count} completion tokens")
        if not args.skip_llama:
            systems["llama-server f16"] = System("llama-server f16")

        offset = 0
        for _ in range(args.repeats):  # the two runtime variants interleaved, so that noise hits both alike
            for label, server in servers.items():
                for c in CONCURRENCIES:
                    measure(systems[label], server.url, shape.name, prompts, c, new_tokens, False, offset)
                    offset += requests_for(c)

        log("transformers eager generate() fp32 ...")
        eager = hf_eager(checkpoint, token_prompts, new_tokens, args.repeats, "cpu", "float32")
        log(f"transformers eager fp32: batch 1 {eager[1]:.1f} tok/s, batch 8 {eager[8]:.1f} tok/s")

        overload = overload_checks(servers["moltbot fp32"], shape.name, prompts, new_tokens,
                                   systems["moltbot fp32"].points[64])
    finally:
        for server in servers.values():
            server.stop()

    llama_error = None
    if not args.skip_llama:
        system = systems["llama-server f16"]
        try:
            llama_bin, gguf = llama_files()
            for repeat in range(args.repeats):
                for c in CONCURRENCIES:
                    with LlamaServer(llama_bin, gguf, parallel=c, threads=THREADS,
                                     context_per_slot=PROMPT_TOKENS + new_tokens + 32, home=work,
                                     alias=shape.name) as peer_server:
                        system.load_seconds.append(peer_server.load_seconds)
                        if repeat == 0 and c == 1:
                            counts = verify_prompt_length(peer_server.url, shape.name, prompts[0], new_tokens)
                            log(f"llama-server: warm-up reply used {counts[0]} prompt and {counts[1]} completion "
                                "tokens")
                        measure(system, peer_server.url, shape.name, prompts, c, new_tokens, True, offset)
                    offset += requests_for(c)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            llama_error = f"{type(exc).__name__}: {str(exc)[:500]}"
            log(f"llama-server not measured: {llama_error}")

    ceiling_rows = []
    for dtype, width in (("fp32", 4), ("f16", 2), ("int8", 1)):
        step_bytes = shape.weight_bytes_per_step(width)
        ceiling_rows.append([dtype, f"{step_bytes / 1e6:.0f} MB", bandwidth[1] / step_bytes, bandwidth[2] / step_bytes])

    report.append(f"## CPU: {shape.name} (Llama, {shape.parameter_count() / 1e6:.1f} M parameters, random weights)\n")
    report.append(f"{PROMPT_TOKENS}-token prompts (distinct per request), {new_tokens} generated tokens per request, "
                  f"greedy, `ignore_eos`; {THREADS} threads everywhere; median of {args.repeats} runs per point. "
                  "Requests per point (closed loop): " + ", ".join(f"c{c}: {requests_for(c)}" for c in CONCURRENCIES) + ".\n")
    ordered = [systems[k] for k in systems if systems[k].points]
    report.append(system_table(ordered) + "\n")
    if llama_error:
        report.append(f"llama-server was not measured in this run: {llama_error}\n")
    load_rows = [[s.label, median(s.load_seconds)] for s in ordered if s.load_seconds]
    report.append("Cold load (process start to ready; model files already made):\n")
    report.append(markdown_table(["System", "Seconds (median)"], load_rows) + "\n")
    report.append("Transformers eager `generate()` (fp32, same checkpoint, one process):\n")
    report.append(markdown_table(["Batch", "tok/s (median)"], [[1, eager[1]], [8, eager[8]]]) + "\n")
    report.append(f"Memory-bandwidth ceiling at batch 1 (numpy copy: {bandwidth[1] / 1e9:.1f} GB/s on 1 thread, "
                  f"{bandwidth[2] / 1e9:.1f} GB/s on 2; weights read once per decode step):\n")
    report.append(markdown_table(["Weights", "Bytes per step", "tok/s ceiling, 1 thread", "tok/s ceiling, 2 threads"],
                                 ceiling_rows) + "\n")
    targets = []
    peer = systems.get("llama-server f16")
    for label in servers:
        s = systems[label]
        targets += [
            Target(f"{label}: c32 >= 6x c1", s.tokens_per_second(32), s.tokens_per_second(1), 6.0),
            Target(f"{label}: c1 >= 1.5x transformers eager fp32 batch 1", s.tokens_per_second(1), eager[1], 1.5),
        ]
        for c in (8, 32):
            targets.append(Target(f"{label}: c{c} >= llama-server f16 c{c}", s.tokens_per_second(c),
                                  peer.tokens_per_second(c) if peer and peer.points else None))
    report.append("Targets (issue 7):\n")
    report.append(markdown_table(["Target", "Measured tok/s", "Needed tok/s", "Ratio", "Result"],
                                 [t.row() for t in targets]) + "\n")
    report.append("Overload checks (moltbot fp32, max_running 32, max_queued 128: the service defaults):\n")
    report.append(markdown_table(["Check", "Measured", "Result"], overload) + "\n")


def run_gpu(args, work: Path, report: list[str], gpu: str) -> None:
    models_root = REPO / "build" / "bench" / "models"
    cache_dir = REPO / "build" / "bench" / "cache"
    shape = GPU_SHAPE
    new_tokens = 128
    checkpoint = ensure_checkpoint(shape, models_root, dtype="float16", log=log)
    onnx = ensure_onnx(checkpoint, models_root, shape.name, dtype="fp16", device="cuda", log=log)
    prompts, token_prompts = make_prompts(checkpoint, 1500)
    config = {"name": shape.name, "type": "local", "path": str(onnx), "max_tokens": 2048, "device": "cuda"}
    system = System("moltbot fp16 cuda")
    with MoltbotServer(system.label, config, work / "gpu", cache_dir, device="cuda") as server:
        system.load_seconds.append(server.load_seconds)
        verify_prompt_length(server.url, shape.name, prompts[0], new_tokens)
        offset = 0
        for _ in range(args.repeats):
            for c in CONCURRENCIES:
                measure(system, server.url, shape.name, prompts, c, new_tokens, False, offset)
                offset += requests_for(c)
    eager = hf_eager(checkpoint, token_prompts, new_tokens, args.repeats, "cuda", "float16")
    report.append(f"## GPU: {shape.name} (Qwen2, {shape.parameter_count() / 1e6:.0f} M parameters, fp16) on {gpu}\n")
    report.append(system_table([system]) + "\n")
    report.append(markdown_table(["System", "Cold load s", "tok/s batch 1", "tok/s batch 8"],
                                 [[system.label, median(system.load_seconds), system.tokens_per_second(1),
                                   system.tokens_per_second(8)],
                                  ["transformers eager fp16", "n/a", eager[1], eager[8]]]) + "\n")
    targets = [Target("c1 >= 3x transformers eager fp16 batch 1", system.tokens_per_second(1), eager[1], 3.0),
               Target("c32 >= 15x own c1", system.tokens_per_second(32), system.tokens_per_second(1), 15.0)]
    report.append(markdown_table(["Target", "Measured tok/s", "Needed tok/s", "Ratio", "Result"],
                                 [t.row() for t in targets]) + "\n")


def write_docs(path: Path, machine: dict, report: list[str], gpu: str | None, started: float) -> None:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Benchmarks\n",
        "Written by `make bench` (bench/run.py); rerun it to refresh this page. A benchmark, not a test: "
        "targets print pass/FAIL, nothing asserts on timings.\n",
        f"- Date: {today} (run took {(time.monotonic() - started) / 60:.1f} min)",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB memory; "
        f"{machine['os']}; Python {machine['python']}",
        f"- Load average when the run started: {', '.join(f'{x:.1f}' for x in machine['load_average'])} "
        "(the machine is shared: figures move by up to 2x between runs; each point is the median of repeats; "
        "the two runtime variants are measured interleaved, then transformers, then llama-server, in one run)",
        f"- GPU: {gpu or 'none (nvidia-smi found no GPU): GPU rows skipped'}\n",
    ]
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(header + report + [METHOD, NOTES_MARKER]) + (notes or "\n"))


NOTES_MARKER = "<!-- Hand-written notes below this line are kept when make bench rewrites the page. -->"


METHOD = """## Method

- Models are made here with random weights and a fixed seed (bench/models.py): nothing is downloaded. The
  tokenizer is a byte-level BPE trained with `tokenizers` on a generated corpus of pseudo-words to the real
  vocabulary size. The checkpoint is exported with `moltbot models export CKPT OUT --task chat` (Optimum,
  fp32); the int8 variant is the runtime's own `"quantize": "int8"` model-config field. llama.cpp converts the
  same weights to GGUF f16 with its `convert_hf_to_gguf.py` (pre-tokenizer mapped to `gpt-2`).
- Every system is reached through its OpenAI-compatible HTTP API on 127.0.0.1 (`/v1/completions`, streamed),
  by a closed-loop async load generator (httpx): `c` clients, each sending its next request when the previous
  one ends. Aggregate tok/s = generated tokens / wall time of the point. TTFT = request sent to first text
  chunk; ITL = gaps between text chunks (a chunk is one token unless a token ends inside a UTF-8 character).
- llama-server (built from the sources in the llama-cpp-python sdist on PyPI) runs with `-t 2 -np <c>` and
  `-c <c x 128>` (128 tokens per slot), restarted per concurrency; `cache_prompt` is off and every prompt is
  distinct, so no system reuses a cached prefix.
- Transformers eager: `generate()` greedy with `min_new_tokens = max_new_tokens`, 2 torch threads, in a
  subprocess of the project venv.
- Memory-bandwidth ceiling: weight bytes read per decode step (all parameters once, the tied embedding as
  the output head) over the numpy copy bandwidth (read + write bytes per second).
- GPU: when `nvidia-smi` finds a GPU, `make bench` also runs the Qwen2.5-0.5B-shaped model (fp16 export on
  CUDA, `MOLTBOT_DEVICE=cuda`, 128 generated tokens) against transformers eager fp16. The machines this
  page was written on had no GPU, so that path has not been run.
"""


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers under test are stopped
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "3")))
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--skip-llama", action="store_true", help="leave out llama-server")
    parser.add_argument("--skip-int8", action="store_true", help="leave out the int8 variant")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    started = time.monotonic()
    machine = machine_description()
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="moltbot-bench-") as tmp:
        run_cpu(args, Path(tmp), report)
        gpu = gpu_name()
        if gpu:
            run_gpu(args, Path(tmp), report, gpu)
        else:
            log("no GPU: GPU rows skipped")
    write_docs(args.docs, machine, report, gpu, started)
    print("\n".join(report))
    if not gpu:
        print("no GPU: GPU rows skipped")
    log(f"done in {(time.monotonic() - started) / 60:.1f} min; results in {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
