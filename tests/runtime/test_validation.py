"""The one request validator (engine/validation.py), in process: defaults, refusals and the fields they name."""

from __future__ import annotations

import asyncio

import pytest

from moltbot.engine.backend import ChatInput, ChoiceDelta, Generation, ModelInfo, Usage
from moltbot.engine.errors import InvalidRequest
from moltbot.engine.registry import ModelRegistry
from moltbot.engine.validation import (
    ModelLimits,
    NamedTool,
    SamplingRequest,
    check_dimensions,
    check_embedding_inputs,
    check_sampling,
    check_tool_choice,
    validate,
)
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
    (SamplingRequest(logprobs=-1), "logprobs"),
    (SamplingRequest(logprobs=6), "logprobs"),
    (SamplingRequest(logprobs=True, top_logprobs=21), "top_logprobs"),
    (SamplingRequest(logprobs=True, top_logprobs=-1), "top_logprobs"),
    (SamplingRequest(top_logprobs=2), "top_logprobs"),  # needs logprobs: true
    (SamplingRequest(logprobs=False, top_logprobs=2), "top_logprobs"),
    (SamplingRequest(presence_penalty=2.01), "presence_penalty"),
    (SamplingRequest(presence_penalty=-2.01), "presence_penalty"),
    (SamplingRequest(frequency_penalty=2.5), "frequency_penalty"),
    (SamplingRequest(frequency_penalty=-2.5), "frequency_penalty"),
    (SamplingRequest(repetition_penalty=0.0), "repetition_penalty"),
    (SamplingRequest(repetition_penalty=2.01), "repetition_penalty"),
    (SamplingRequest(top_k=-2), "top_k"),
    (SamplingRequest(min_p=-0.1), "min_p"),
    (SamplingRequest(min_p=1.01), "min_p"),
    (SamplingRequest(logit_bias={"5": 100.5}), "logit_bias"),
    (SamplingRequest(logit_bias={"5": -101.0}), "logit_bias"),
    (SamplingRequest(logit_bias={str(i): 1.0 for i in range(301)}), "logit_bias"),
    (SamplingRequest(logit_bias={"05": 1.0}), "logit_bias"),  # one spelling per id
    (SamplingRequest(logit_bias={"-1": 1.0}), "logit_bias"),
    (SamplingRequest(logit_bias={"x": 1.0}), "logit_bias"),
])
def test_every_backend_refuses_out_of_range_options(sampling, param):
    with pytest.raises(InvalidRequest) as refused:
        check_sampling(sampling)
    assert refused.value.param == param
    assert refusal(sampling).param == param


@pytest.mark.parametrize("sampling,param", [
    (SamplingRequest(echo=True), "echo"),
    (SamplingRequest(suffix="end"), "suffix"),
    (SamplingRequest(response_format={"type": "json_object"}), "response_format"),  # LIMITS: no grammar compiler
    (SamplingRequest(structured_outputs={"regex": "a+"}), "structured_outputs"),
    (SamplingRequest(unknown_fields=("guided_json", "other")), "guided_json"),
])
def test_what_only_the_local_sampler_lacks_is_refused_for_local_models_only(sampling, param):
    check_sampling(sampling)  # a service model's upstream may honour it
    assert refusal(sampling).param == param


def test_the_refusals_say_why():
    assert refusal(SamplingRequest(response_format={"type": "json_object"})).message.endswith(
        "cannot constrain its output")
    unknown = refusal(SamplingRequest(unknown_fields=("guided_json",)))
    assert (unknown.message, unknown.code) == ("Unrecognized request argument supplied: guided_json",
                                               "unknown_parameter")


@pytest.mark.parametrize("sampling", [
    SamplingRequest(presence_penalty=-2.0, frequency_penalty=2.0), SamplingRequest(repetition_penalty=2.0),
    SamplingRequest(top_k=-1), SamplingRequest(top_k=0), SamplingRequest(min_p=0.0), SamplingRequest(min_p=1.0),
    SamplingRequest(logprobs=0), SamplingRequest(logprobs=5), SamplingRequest(logprobs=True, top_logprobs=0),
    SamplingRequest(logprobs=True, top_logprobs=20), SamplingRequest(logprobs=False),
    SamplingRequest(logit_bias={"0": -100.0, "99": 100.0}), SamplingRequest(response_format={"type": "text"}),
])
def test_the_bounds_themselves_are_accepted(sampling):
    check_sampling(sampling)
    validate(sampling, [[1]], LIMITS)


def test_sampling_options_reach_the_sampler():
    sampling = SamplingRequest(top_k=40, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5,
                               frequency_penalty=-0.5, logit_bias={"7": -100.0, "3": 2.5}, logprobs=True,
                               top_logprobs=4)
    params = validate(sampling, [[1]], LIMITS).params
    assert (params.top_k, params.min_p, params.repetition_penalty, params.presence_penalty,
            params.frequency_penalty) == (40, 0.05, 1.1, 0.5, -0.5)
    assert params.logit_bias == ((3, 2.5), (7, -100.0)) and params.logprobs == 4
    defaults = validate(SamplingRequest(top_k=-1), [[1]], LIMITS).params
    assert (defaults.top_k, defaults.min_p, defaults.repetition_penalty, defaults.presence_penalty,
            defaults.logit_bias, defaults.logprobs) == (0, 0.0, 1.0, 0.0, (), None)
    assert not defaults.penalised and defaults.route == "drawn"  # at the model's temperature, 0.7
    assert validate(SamplingRequest(temperature=0, logprobs=True), [[1]], LIMITS).params.route == "plain"
    assert validate(SamplingRequest(temperature=0, presence_penalty=0.1), [[1]], LIMITS).params.route == "adjusted"
    # chat's logprobs true without top_logprobs: the sampled token's alone; completions' a number of them
    assert validate(SamplingRequest(logprobs=True), [[1]], LIMITS).params.logprobs == 0
    assert validate(SamplingRequest(logprobs=3), [[1]], LIMITS).params.logprobs == 3
    assert validate(SamplingRequest(logprobs=False, top_logprobs=None), [[1]], LIMITS).params.logprobs is None


def test_logit_bias_ids_are_checked_against_the_vocabulary_as_prompts_are():
    limits = ModelLimits(model="m", context_length=100, capacity=6, default_temperature=0.7, vocab_size=50)
    validate(SamplingRequest(logit_bias={"49": 1.0}), [[1]], limits)
    with pytest.raises(InvalidRequest) as refused:
        validate(SamplingRequest(logit_bias={"50": 1.0}), [[1]], limits)
    assert (refused.value.param, refused.value.code) == ("logit_bias", "invalid_token_ids")
    assert "token id 50 is not in the vocabulary" in refused.value.message


def test_an_embedding_input_the_tokenizer_takes_nothing_from_is_its_special_tokens_alone():
    assert check_embedding_inputs([[5], []], LIMITS, truncate=False, reserved=2) == [[5], []]  # [CLS] [SEP]
    with pytest.raises(InvalidRequest) as refused:
        check_embedding_inputs([[5], []], LIMITS, truncate=False)  # a model without them: nothing to embed
    assert refused.value.param == "input"


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
        asyncio.run(registry_with(RecordingBackend()).chat([{"role": "user", "content": "hi"}], best_of=5))
    assert refused.value.param == "best_of"


def test_the_plugins_chat_takes_the_new_options_and_returns_logprobs_when_asked():
    backend = RecordingBackend()
    registry = registry_with(backend)
    reply = asyncio.run(registry.chat([{"role": "user", "content": "hi"}], top_k=5, min_p=0.1, logprobs=True,
                                      top_logprobs=2, logit_bias={"3": -100.0}))
    assert reply["logprobs"] == []  # the recording backend reports none; the key says they were asked for
    [request] = backend.requests
    assert (request.sampling.top_k, request.sampling.min_p, request.sampling.logit_bias) == (5, 0.1, {"3": -100.0})
    assert request.openai_body["top_logprobs"] == 2
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(registry.chat([{"role": "user", "content": "hi"}], unknown_fields=("x",)))
    assert refused.value.param == "unknown_fields"


def test_tool_choice_says_whether_the_output_is_read_for_tool_calls():
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert check_tool_choice(None, tools) is True
    assert check_tool_choice(None, None) is False
    assert check_tool_choice("none", tools) is False
    assert check_tool_choice(NamedTool("f"), tools) is True
    with pytest.raises(InvalidRequest) as refused:
        check_tool_choice(NamedTool("g"), tools)
    assert refused.value.param == "tool_choice"
