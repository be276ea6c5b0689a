"""The official `openai` client against a running server with the embedded default models."""

from __future__ import annotations

import numpy as np
import openai
import pytest


@pytest.fixture
def oai(shared_server):
    with openai.OpenAI(base_url=shared_server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_models_lists_both_defaults_with_their_provider(oai):
    models = {m.id: m for m in oai.models.list().data}
    assert set(models) == {"tiny-chat", "all-minilm-l6-v2"}
    assert models["tiny-chat"].model_extra["task"] == "chat"
    assert models["all-minilm-l6-v2"].model_extra["task"] == "embeddings"
    assert models["tiny-chat"].model_extra["provider"] == "CPUExecutionProvider"
    assert "random weights" in models["tiny-chat"].model_extra["description"]
    assert oai.models.retrieve("tiny-chat").id == "tiny-chat"


def test_chat_completion_reports_usage_and_honours_max_tokens(oai):
    reply = oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                        max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_greedy_chat_is_deterministic_and_seeded_sampling_repeats(oai):
    def ask(**kw):
        return oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Tell me"}],
                                           max_tokens=12, extra_body={"ignore_eos": True}, **kw)
    assert ask(temperature=0).choices[0].message.content == ask(temperature=0).choices[0].message.content
    a = ask(temperature=1.0, seed=7).choices[0].message.content
    b = ask(temperature=1.0, seed=7).choices[0].message.content
    assert a == b


def test_n_gives_that_many_different_choices_even_with_a_seed(oai):
    def ask():
        return oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=8, n=3, temperature=1.0, seed=-5,
                                           extra_body={"ignore_eos": True})
    reply = ask()
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) == 3
    assert [c.message.content for c in ask().choices] == texts  # the seed makes the set reproducible


def test_streamed_chat_ends_with_usage_when_asked(oai):
    stream = oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                         max_tokens=6, temperature=0, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    full = oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert text == full.choices[0].message.content


def test_stop_sequence_cuts_the_text(oai):
    full = oai.completions.create(model="tiny-chat", prompt="The quick brown", max_tokens=20, temperature=0,
                                  extra_body={"ignore_eos": True}).choices[0].text
    assert len(full) > 4
    stop = full[2:4]
    cut = oai.completions.create(model="tiny-chat", prompt="The quick brown", max_tokens=20, temperature=0,
                                 stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_completions_take_a_list_of_prompts(oai):
    reply = oai.completions.create(model="tiny-chat", prompt=["Hello", "Goodbye there"], max_tokens=3,
                                   temperature=0, extra_body={"ignore_eos": True})
    assert reply.object == "text_completion"
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 6
    streamed = list(oai.completions.create(model="tiny-chat", prompt="Hello", max_tokens=3, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_embeddings_are_normalised_and_meaningful(oai):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    reply = oai.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the SDK asks for base64
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 > unrelated
    floats = oai.embeddings.create(model="all-minilm-l6-v2", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    assert reply.usage.prompt_tokens > 0


def test_wrong_task_and_unknown_model_are_client_errors(oai):
    with pytest.raises(openai.NotFoundError) as wrong:  # as OpenAI: "This is not a chat model" is a 404
        oai.embeddings.create(model="tiny-chat", input="x")
    assert wrong.value.body["code"] == "wrong_model_task"
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"


def test_the_sdk_reads_logprobs_and_takes_the_sampling_parameters(oai):
    reply = oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                        max_tokens=5, temperature=0.8, seed=1, logprobs=True, top_logprobs=2,
                                        presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"0": -100},
                                        extra_body={"ignore_eos": True, "top_k": 40, "min_p": 0.01,
                                                    "repetition_penalty": 1.1})
    content = reply.choices[0].logprobs.content
    assert len(content) == 5 and reply.usage.completion_tokens == 5
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 and entry.bytes for entry in content)
    completion = oai.completions.create(model="tiny-chat", prompt="Hello", max_tokens=3, temperature=0, logprobs=1,
                                        extra_body={"ignore_eos": True})
    assert len(completion.choices[0].logprobs.tokens) == 3
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "x", "schema": {"type": "frob"}}})
    assert refused.value.body["param"] == "response_format"
