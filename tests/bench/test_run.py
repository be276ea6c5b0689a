"""The benchmark driver's pieces (bench/run.py) without servers: model configs per precision, payloads, point
specs, prompt handout, and a pair's interleaved rounds with stand-in servers."""

from pathlib import Path

import argparse

import pytest

from bench import run
from bench.loadgen import PointResult, RequestResult
from bench.report import PairResult


def test_model_config_serves_the_imported_graph_folder():
    assert run.moltbot_model_config("m", Path("/models/graph-int8")) == {
        "name": "m", "type": "local", "path": "/models/graph-int8", "max_tokens": 2048}


def test_payloads_ask_for_an_exact_token_count():
    ours = run.payload("m", "hello", 64, llama=False)
    assert ours == {"model": "m", "prompt": "hello", "max_tokens": 64, "temperature": 0, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
    assert run.payload("m", "hello", 64, llama=True) == {**ours, "cache_prompt": False}


def test_point_specs_and_pairs():
    specs = run.point_specs(rounds=5, long_rounds=3, long=True)
    assert [(s.name, s.concurrency, s.prompt_tokens, s.new_tokens, s.requests, s.rounds) for s in specs] == [
        ("c1", 1, 32, 64, 4, 5), ("c8", 8, 32, 64, 8, 5), ("c32", 32, 32, 64, 32, 5),
        ("long c8", 8, 1024, 128, 8, 3)]
    assert [s.name for s in run.point_specs(5, 3, long=False)] == ["c1", "c8", "c32"]
    assert run.parse_pairs("all") == list(run.PAIRS)
    assert run.parse_pairs("gemma3") == [("gemma3", "int8", "Q4_K_M"), ("gemma3", "int4", "Q4_K_M")]
    assert run.parse_pairs("smollm2:fp32:f16, int4") == [
        ("smollm2", "int4", "q4_0"), ("smollm2", "int4", "Q4_1"), ("gemma3", "int4", "Q4_K_M"),
        ("smollm2", "fp32", "f16")]
    with pytest.raises(argparse.ArgumentTypeError, match="fp8"):
        run.parse_pairs("int8,fp8")
    with pytest.raises(argparse.ArgumentTypeError, match="gemma3:int8:q8_0"):
        run.parse_pairs("gemma3:int8:q8_0")  # no q8_0 is made for Gemma
    assert run.long_point_for(["all"], ("gemma3", "int4", "Q4_K_M"))
    assert run.long_point_for(["int8"], ("smollm2", "int8", "Q4_1"))
    assert run.long_point_for(["smollm2:int4:q4_0"], ("smollm2", "int4", "q4_0"))
    assert not run.long_point_for(["int8"], ("smollm2", "int4", "q4_0")) and not run.long_point_for([], PAIR)


def test_prompt_pool_hands_out_distinct_prompts_then_wraps():
    pool = run.PromptPool(["a", "b", "c"])
    assert pool.take(2) == ["a", "b"]
    assert pool.take(2) == ["c", "a"]


PAIR = ("smollm2", "int8", "q8_0")


class FakeServer:
    started: list[str] = []

    def __init__(self, name, *args, **kwargs):
        self.name = name if isinstance(name, str) else f"llama-np{kwargs['parallel']}"
        self.url = f"http://{self.name.replace(' ', '-')}"
        self.load_seconds = 0.5
        self.stopped = False

    def start(self):
        FakeServer.started.append(self.name)
        return self

    def stop(self):
        self.stopped = True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def test_pair_rounds_interleave_and_alternate_which_side_goes_first(monkeypatch, tmp_path):
    calls = []

    def fake_measure(url, model, prompts, spec, llama):
        calls.append((spec.name, "b" if llama else "a", len(prompts)))
        tps = 60.0 if llama else 90.0
        results = [RequestResult(200, 0.1, [0.02] * (spec.new_tokens - 1), spec.new_tokens, 1.0, None,
                                 spec.new_tokens, spec.new_tokens) for _ in prompts]
        return PointResult(spec.concurrency, len(prompts) * spec.new_tokens / tps, results)

    FakeServer.started = []
    monkeypatch.setattr(run, "MoltbotServer", FakeServer)
    monkeypatch.setattr(run, "LlamaServer", FakeServer)
    monkeypatch.setattr(run, "runtime_refuses", lambda config, home: None)
    monkeypatch.setattr(run, "one_request", lambda url, model, prompt, new, llama: (32, new))
    monkeypatch.setattr(run, "measure", fake_measure)
    monkeypatch.setattr(run, "served_graph", lambda url, model: "genai int8")
    pair = PairResult("int8", "q8_0", model="smollm2")
    specs = run.point_specs(rounds=5, long_rounds=3, long=True)
    prompts = {32: run.PromptPool([f"p{i}" for i in range(100)]), 1024: run.PromptPool(["long"] * 10)}
    seen = []
    run.run_pair(pair, specs, "m", tmp_path / "onnx", tmp_path / "g.gguf", tmp_path / "llama-server", prompts,
                 tmp_path, on_running=lambda server: seen.append(server.name))
    assert pair.why is None and pair.served == "genai int8"
    # the runtime starts once to make its graph, then for real; one llama-server for short and one for long
    assert FakeServer.started == ["moltbot int8", "moltbot int8", "llama-np32", "llama-np8"]
    assert seen == ["moltbot int8"]
    c1 = [side for name, side, _ in calls if name == "c1"]
    assert c1 == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    long = [(side, n) for name, side, n in calls if name == "long c8"]
    assert long == [("a", 8), ("b", 8), ("b", 8), ("a", 8), ("a", 8), ("b", 8)]
    assert [n for name, _, n in calls if name == "c32"] == [32] * 10
    point = pair.points["c8"]
    assert point.order == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a"), ("a", "b")]
    assert point.ratios().median == pytest.approx(1.5)
    assert point.token_check() == "all 80 ok"
    assert [n for name, _, n in calls if name == "c1"] == [4] * 10
    assert pair.prompt_tokens["moltbot int8"] == {"c1, c8, c32": 32, "long c8": 32}  # (the stand-in says 32)


def test_a_precision_the_runtime_refuses_is_reported_not_started(monkeypatch, tmp_path):
    FakeServer.started = []
    monkeypatch.setattr(run, "MoltbotServer", FakeServer)
    monkeypatch.setattr(run, "LlamaServer", FakeServer)
    pair = PairResult("int4", "q4_0")
    monkeypatch.setattr(run, "runtime_refuses", lambda config, home: "quantize must be int8 (or left out)")
    run.run_pair(pair, run.point_specs(5, 3, False), "m", tmp_path, tmp_path, tmp_path, {}, tmp_path)
    assert pair.why == "quantize must be int8 (or left out)"
    assert pair.points == {} and FakeServer.started == []


def test_runtime_refuses_says_what_the_model_config_check_says(tmp_path):
    """The real `moltbot models check` on a config it accepts and one it cannot (an unknown precision)."""
    graph = tmp_path / "graph"
    assert run.runtime_refuses(run.moltbot_model_config("m", graph), tmp_path / "ok") is None
    bad = {**run.moltbot_model_config("m", graph), "quantize": "int3"}
    why = run.runtime_refuses(bad, tmp_path / "bad")
    assert "quantize" in why and str(tmp_path) not in why


def test_write_docs_keeps_the_hand_written_notes(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# old page\n\nold figures\n\n" + run.NOTES_MARKER + "\n\n## Notes\n\nkept\n")
    machine = {"cpu": "Test CPU", "cores": 2, "memory_gib": 23.5, "os": "Linux", "python": "3.11.7",
               "load_average": (1.0, 2.0, 3.0)}
    run.write_docs(docs, machine, ["## CPU\n", "| a |\n"], None, started=0.0, timings={"preparation": 60.0})
    text = docs.read_text()
    assert "old figures" not in text
    assert text.startswith("# Benchmarks\n")
    assert "- Load average when the run started: 1.0, 2.0, 3.0" in text
    assert "(preparation 1.0 min)" in text
    assert "## Method" in text and "GPU rows skipped" in text
    assert text.endswith(run.NOTES_MARKER + "\n\n## Notes\n\nkept\n")


def test_a_runtime_that_loads_no_model_is_noticed_from_ready(monkeypatch, tmp_path):
    """A runtime whose every model failed stays up but never ready: the bench reads why from /ready."""
    from bench import servers

    class Reply:
        def __init__(self, body):
            self.body = body

        def json(self):
            return self.body

    server = servers.MoltbotServer("moltbot int4", {"name": "m"}, tmp_path, tmp_path / "cache")
    bodies = {"loading": {"status": "loading", "models": [], "failed": []},
              "failed": {"status": "loading", "models": [], "failed": [
                  {"source": "m.json", "model": "m", "error": "int4 graphs are made by the model builder"}]},
              "ready": {"status": "ready", "models": ["m"], "failed": []}}
    for state, expected in (("loading", []), ("failed", ["int4 graphs are made by the model builder"]),
                            ("ready", [])):
        monkeypatch.setattr(servers.httpx, "get", lambda url, timeout, state=state: Reply(bodies[state]))
        assert server._load_failures() == expected
