"""The one request validator (engine/validation.py), in process: defaults, refusals and the fields they name."""

from __future__ import annotations

import asyncio

import pytest

from moltbot.engine.backend import ChatInput, ChoiceDelta, Generation, ModelInfo, Usage
from moltbot.engine.errors import InvalidRequest
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.validation import ModelLimits, SamplingRequest, check_dimensions, check_sampling, validate
from moltbot.settings import Settings

LIMITS = ModelLimits(model="m", context_length=100, capacity=6, default_temperature=0.7)


def refusal(sampling: SamplingRequest, prompts: list[list[int]] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        validate(sampling, [[1, 2, 3]] if prompts is None else prompts, LIMITS)
    return refused.value


def test_defaults_come_from_the_model_and_the_rest_of_the_context():
    validated = validate(SamplingRequest(), [[1] * 30, [2] * 40], LIMITS)
    assert validated.params.max_tokens == 60  # the longest prompt leaves 60 tokens of context
    assert validated.params.temperature == 0.7 and validated.params.top_p == 1.0
    assert validated.sequences == 2 and validated.prompt_tokens == 70


def test_what_the_client_sent_is_kept():
    sampling = SamplingRequest(max_tokens=5, temperature=0.0, top_p=0.5, n=3, stop=("x",), seed=7, ignore_eos=True)
    validated = validate(sampling, [[1, 2]], LIMITS)
    params = validated.params
    assert (params.max_tokens, params.temperature, params.top_p, params.stop, params.seed, params.ignore_eos) == (
        5, 0.0, 0.5, ("x",), 7, True)
    assert validated.n == 3 and validated.sequences == 3 and validated.prompt_tokens == 6


def test_max_tokens_beyond_the_context_is_refused_not_clamped():
    assert validate(SamplingRequest(max_tokens=97), [[1, 2, 3]], LIMITS).params.max_tokens == 97  # fits exactly
    error = refusal(SamplingRequest(max_tokens=98))
    assert (error.param, error.code) == ("max_tokens", "context_length_exceeded")
    assert "101 tokens (3 in the prompt, 98 for the completion)" in error.message


def test_a_prompt_that_fills_the_context_is_refused():
    error = refusal(SamplingRequest(max_tokens=1), [[1] * 100])
    assert (error.param, error.code) == ("messages", "context_length_exceeded")


def test_an_empty_prompt_is_refused():
    assert refusal(SamplingRequest(), [[1], []]).param == "prompt"


def test_more_sequences_than_the_model_takes_are_refused():
    assert validate(SamplingRequest(n=3), [[1], [2]], LIMITS).sequences == 6
    error = refusal(SamplingRequest(n=4), [[1], [2]])
    assert (error.param, error.code) == ("n", "too_many_sequences")


@pytest.mark.parametrize("sampling,param", [
    (SamplingRequest(max_tokens=0), "max_tokens"),
    (SamplingRequest(temperature=-0.1), "temperature"),
    (SamplingRequest(temperature=2.5), "temperature"),
    (SamplingRequest(top_p=0.0), "top_p"),
    (SamplingRequest(top_p=1.5), "top_p"),
    (SamplingRequest(n=0), "n"),
    (SamplingRequest(n=17), "n"),
    (SamplingRequest(stop=("a", "b", "c", "d", "e")), "stop"),
    (SamplingRequest(stop=("",)), "stop"),
    (SamplingRequest(logprobs=True), "logprobs"),
])
def test_every_backend_refuses_out_of_range_options_and_logprobs(sampling, param):
    with pytest.raises(InvalidRequest) as refused:
        check_sampling(sampling)
    assert refused.value.param == param
    assert refusal(sampling).param == param


@pytest.mark.parametrize("sampling,param", [
    (SamplingRequest(presence_penalty=0.5), "presence_penalty"),
    (SamplingRequest(frequency_penalty=-1.0), "frequency_penalty"),
    (SamplingRequest(echo=True), "echo"),
    (SamplingRequest(suffix="end"), "suffix"),
])
def test_what_only_the_local_sampler_lacks_is_refused_for_local_models_only(sampling, param):
    check_sampling(sampling)  # a service model's upstream may honour it
    assert refusal(sampling).param == param


def test_zero_penalties_are_accepted():
    validate(SamplingRequest(presence_penalty=0.0, frequency_penalty=0.0), [[1]], LIMITS)


def test_embedding_dimensions_must_be_the_models_own():
    check_dimensions(None, 384, "e")
    check_dimensions(384, 384, "e")
    with pytest.raises(InvalidRequest) as refused:
        check_dimensions(128, 384, "e")
    assert refused.value.param == "dimensions"


class RecordingBackend:
    """A chat backend that records what it was asked and answers 'ok'."""

    def __init__(self) -> None:
        self.requests: list[ChatInput] = []

    def describe(self) -> ModelInfo:
        return ModelInfo(name="rec", task="chat", backend="test", source=None, provider="none")

    async def chat(self, request: ChatInput) -> Generation:
        self.requests.append(request)

        async def events():
            yield ChoiceDelta(0, "ok", 1, finish_reason="stop")
            yield Usage(3, 1)

        return Generation(events())


def registry_with(backend: RecordingBackend) -> ModelRegistry:
    registry = ModelRegistry(Settings())
    registry.models["rec"] = backend  # type: ignore[assignment]
    return registry


def test_the_plugins_chat_builds_the_same_sampling_request():
    backend = RecordingBackend()
    reply = asyncio.run(registry_with(backend).chat([{"role": "user", "content": "hi"}], max_tokens=9,
                                                    stop="END", top_p=0.5, seed=3))
    assert reply == {"content": "ok", "finish_reason": "stop", "model": "rec", "tool_calls": None,
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    [request] = backend.requests
    assert request.sampling == SamplingRequest(max_tokens=9, temperature=0.0, top_p=0.5, stop=("END",), seed=3)
    assert request.openai_body == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
                                   "temperature": 0.0, "stop": "END", "top_p": 0.5, "seed": 3}


def test_the_plugins_chat_refuses_options_it_does_not_know():
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(registry_with(RecordingBackend()).chat([{"role": "user", "content": "hi"}], top_k=5))
    assert refused.value.param == "top_k"
