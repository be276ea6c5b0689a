"""The clients people use, as they come, against a live server (no mocks): the official `openai` SDK, LangChain's
`langchain-openai` (chat, streaming, tools, embeddings at their defaults) and LiteLLM (chat, streaming tool calls
rebuilt with `stream_chunk_builder`, embeddings). `tiny-toolcall` is a small real model that answers every turn
with a get_weather tool call (tests/runtime/toolcall_model.py)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.runtime.live_models import CHAT, EMBED, TOOLCALL, start_with_toolcall_model
from tests.runtime.openai_schemas import assert_valid
from tests.runtime.toolcall_model import TOOL_ARGUMENTS, TOOL_NAME, WEATHER_TOOL

# Offline: LiteLLM's own copy of its model price map, and tiktoken's cl100k_base file from the copy in LiteLLM's
# wheel (tiktoken looks for it under the sha1 of its download URL; nothing is downloaded).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
_LITELLM = Path(importlib.util.find_spec("litellm").submodule_search_locations[0])
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_LITELLM / "litellm_core_utils" / "tokenizers"))
assert (Path(os.environ["TIKTOKEN_CACHE_DIR"]) / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").exists()

import litellm  # noqa: E402
from langchain_core.messages import AIMessageChunk  # noqa: E402
from langchain_openai import ChatOpenAI, OpenAIEmbeddings  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, defaults_dir: Path):
    srv = start_with_toolcall_model(tmp_path_factory.mktemp("clients"))
    yield srv
    srv.stop()


@pytest.fixture
def base_url(server) -> str:
    return server.url + "/v1"


@pytest.fixture
def oai(base_url) -> openai.OpenAI:
    with openai.OpenAI(base_url=base_url, api_key="none", max_retries=0) as client:
        yield client


# ---- openai ------------------------------------------------------------------------------------------------------
def test_openai_chat_and_its_raw_json_match_openais_schema(oai):
    raw = oai.chat.completions.with_raw_response.create(model=CHAT, messages=QUESTION, max_tokens=4)
    assert_valid("CreateChatCompletionResponse", json.loads(raw.text))
    reply = raw.parse()
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.refusal is None
    assert reply.usage.completion_tokens == 4


def test_openai_stream_helper_rebuilds_the_tool_call(oai):
    with oai.chat.completions.stream(model=TOOLCALL, messages=QUESTION, tools=[WEATHER_TOOL],
                                     max_tokens=200) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in events and "tool_calls.function.arguments.done" in events
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == TOOL_NAME and json.loads(call.function.arguments) == TOOL_ARGUMENTS


def test_openai_token_ids_and_typed_errors(oai):
    ids = oai.embeddings.create(model=EMBED, input=[[1996, 4937, 2003]]).data[0].embedding
    text = oai.embeddings.create(model=EMBED, input="the cat is").data[0].embedding
    assert ids == pytest.approx(text, abs=1e-5)  # the ids of "the cat is" in the model's own tokenizer
    completion = oai.completions.create(model=CHAT, prompt=[10, 11, 12], max_tokens=3)
    assert completion.usage.prompt_tokens == 3 and completion.choices[0].text
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=CHAT, messages=QUESTION, extra_body={"stream": "yes"})
    assert bad.value.body["param"] == "stream"
    with pytest.raises(openai.BadRequestError) as wrong:
        oai.embeddings.create(model=EMBED, input=[[100, 99_999]])
    assert wrong.value.body["code"] == "invalid_token_ids"


# ---- langchain-openai --------------------------------------------------------------------------------------------
def test_langchain_chat_invoke_and_stream(base_url):
    llm = ChatOpenAI(model=CHAT, base_url=base_url, api_key="none", max_tokens=5, max_retries=0)
    answer = llm.invoke("Hello")
    assert answer.content and answer.response_metadata["finish_reason"] == "length"
    chunks = list(llm.stream("Hello"))
    assert len(chunks) > 2 and "".join(c.content for c in chunks)


def test_langchain_bind_tools_streams_the_tool_call(base_url):
    llm = ChatOpenAI(model=TOOLCALL, base_url=base_url, api_key="none", max_tokens=200, max_retries=0)
    bound = llm.bind_tools([WEATHER_TOOL])
    merged: AIMessageChunk | None = None
    count = 0
    for chunk in bound.stream("What is the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
        count += 1
    assert merged is not None and count > 3
    assert merged.tool_calls == [{"name": TOOL_NAME, "args": TOOL_ARGUMENTS, "id": merged.tool_calls[0]["id"],
                                  "type": "tool_call"}]
    assert not merged.invalid_tool_calls
    whole = bound.invoke("What is the weather in Paris?")
    assert whole.tool_calls[0]["name"] == TOOL_NAME and whole.tool_calls[0]["args"] == TOOL_ARGUMENTS


class Verdict(BaseModel):
    """A yes/no verdict with a bounded confidence (bounded fields: the random model ends only what the schema ends)."""

    verdict: Literal["yes", "no"]
    confidence: int = Field(ge=0, le=100)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_returns_a_valid_object(base_url, method):
    # json_schema: response_format with the model's schema; function_calling: a tool forced by name (tool_choice).
    llm = ChatOpenAI(model=CHAT, base_url=base_url, api_key="none", max_tokens=200, temperature=1.0, seed=1,
                     max_retries=0)
    structured = llm.with_structured_output(Verdict, method=method)
    answer = structured.invoke("Should we ship on Friday?")
    assert isinstance(answer, Verdict), answer
    assert answer.verdict in ("yes", "no") and 0 <= answer.confidence <= 100


def test_langchain_embeddings_at_their_defaults(base_url, server):
    # At its defaults OpenAIEmbeddings tokenises with tiktoken (cl100k_base) and sends token ids.
    embeddings = OpenAIEmbeddings(model=EMBED, base_url=base_url, api_key="none", max_retries=0)
    vectors = embeddings.embed_documents(["the cat"])  # ids that happen to be in this model's vocabulary
    assert len(vectors) == 1 and len(vectors[0]) == 384
    # ids beyond this model's vocabulary: the server says they come from another tokenizer
    with pytest.raises(openai.BadRequestError) as refused:
        embeddings.embed_documents(["Kubernetes orchestrates containerised microservices"])
    assert "vocabulary" in refused.value.body["message"] and refused.value.body["param"] == "input"
    # Sending text, as against any model with its own tokenizer: the server's own embedding of it
    texts = OpenAIEmbeddings(model=EMBED, base_url=base_url, api_key="none", check_embedding_ctx_length=False)
    direct = httpx.post(server.url + "/v1/embeddings", json={"model": EMBED, "input": "the cat"}).json()
    assert texts.embed_query("the cat") == pytest.approx(direct["data"][0]["embedding"], abs=1e-6)


# ---- litellm -----------------------------------------------------------------------------------------------------
def test_litellm_chat_stream_and_embeddings(base_url):
    reply = litellm.completion(model=f"openai/{CHAT}", api_base=base_url, api_key="none", messages=QUESTION,
                               max_tokens=4)
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 4
    chunks = list(litellm.completion(model=f"openai/{CHAT}", api_base=base_url, api_key="none",
                                     messages=QUESTION, max_tokens=4, stream=True))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    assert rebuilt.choices[0].message.content
    vectors = litellm.embedding(model=f"openai/{EMBED}", api_base=base_url, api_key="none", input=["a", "b"])
    assert [len(item["embedding"]) for item in vectors.data] == [384, 384]


def test_litellm_response_format_with_a_pydantic_model(base_url):
    reply = litellm.completion(model=f"openai/{CHAT}", api_base=base_url, api_key="none", messages=QUESTION,
                               max_tokens=200, temperature=1.0, seed=1, response_format=Verdict)
    assert reply.choices[0].finish_reason == "stop"
    assert Verdict.model_validate_json(reply.choices[0].message.content).confidence <= 100


def test_litellm_stream_chunk_builder_rebuilds_the_tool_call(base_url):
    chunks = list(litellm.completion(model=f"openai/{TOOLCALL}", api_base=base_url, api_key="none",
                                     messages=QUESTION, tools=[WEATHER_TOOL], max_tokens=200, stream=True))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    call = rebuilt.choices[0].message.tool_calls[0]
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    assert call.function.name == TOOL_NAME and json.loads(call.function.arguments) == TOOL_ARGUMENTS
