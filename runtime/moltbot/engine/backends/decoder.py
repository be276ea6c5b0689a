"""Local chat models: an ONNX decoder on ONNX Runtime (a graph runner, runner.py), behind the continuous-batching
scheduler (scheduler.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

from moltbot.engine.backend import (
    ChatInput,
    ChoiceDelta,
    CompletionInput,
    EmbeddingInput,
    Embeddings,
    Event,
    Generation,
    ModelInfo,
    Prompts,
    TokenLogprob,
    TopLogprob,
    Usage,
    wrong_task,
)
from moltbot.engine.config import ModelConfig
from moltbot.engine.errors import GenerationFailed, InvalidRequest
from moltbot.engine.grammar import GrammarCompiler
from moltbot.engine.output import SentLogprobs
from moltbot.engine.runner import open_runner
from moltbot.engine.scheduler import GenerationHandle, GenerationScheduler
from moltbot.engine.sessions import admission_limits, device_options
from moltbot.engine.sources import ModelSourceError, onnx_folder
from moltbot.engine.tokenizer import TemplateError, TextTokenizer
from moltbot.engine.tool_calls import ToolCallFormat, ToolCallReader, compile_tools, format_for
from moltbot.engine.validation import (
    ModelLimits,
    NamedTool,
    SamplingRequest,
    ValidatedRequest,
    check_tool_choice,
    validate,
)
from moltbot.settings import Settings


class DecoderBackend:
    def __init__(self, info: ModelInfo, scheduler: GenerationScheduler, tokenizer: TextTokenizer,
                 default_temperature: float, grammars: GrammarCompiler, tool_format: ToolCallFormat):
        self.info = info
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.limits = ModelLimits(model=info.name, context_length=scheduler.context_length,
                                  capacity=scheduler.max_running + scheduler.max_queued,
                                  default_temperature=default_temperature,
                                  vocab_size=tokenizer.vocab_size, grammars=grammars)
        self.grammars = grammars
        self.tool_format = tool_format  # how this model writes tool calls: read from its text, held by grammars

    @classmethod
    def load(cls, config: ModelConfig, folder: Path | None, settings: Settings) -> DecoderBackend:
        if folder is None:
            raise ValueError(f"{config.name}: the onnxruntime backend needs model files")
        folder = onnx_folder(folder, config, settings)
        tokenizer = TextTokenizer(folder)
        model_config = _model_config(folder)
        limit = model_config.get("max_position_embeddings") or model_config.get("n_positions")
        model_limit = int(limit) if limit else None
        context = min(config.max_tokens, model_limit) if model_limit else config.max_tokens
        max_running, max_queued = admission_limits(config, settings)
        runner = open_runner(folder, device_options(config, settings), slots=max_running, context_length=context,
                             cache_dir=settings.cache_dir)
        if config.quantize and runner.precision != config.quantize:
            raise ModelSourceError(f"{folder} holds a {runner.precision} graph, but the config asks for quantize "
                                   f"{config.quantize}: point path at the checkpoint (built once at that precision) "
                                   f"or at a {config.quantize} graph")
        context = runner.max_length  # the graph's own limit may be lower (a builder graph's context_length)
        tokenizer.eos_token_ids.update(runner.eos_token_ids)
        scheduler = GenerationScheduler(config.name, runner, tokenizer, context_length=context,
                                        max_running=max_running, max_queued=max_queued,
                                        prefill_stall_seconds=settings.prefill_stall_ms / 1000)
        info = ModelInfo.of(config, runner.provider, context, graph=runner.family, precision=runner.precision)
        # Grammar masks as wide as the graph's logits (its config's vocab_size: both runner families size the
        # logits by it), which may differ from the tokenizer's vocabulary.
        width = int(model_config.get("vocab_size") or tokenizer.vocab_size)
        grammars = GrammarCompiler((folder / "tokenizer.json").read_text(), width, tokenizer.vocab_size,
                                   tokenizer.eos_token_ids)
        return cls(info, scheduler, tokenizer, config.temperature, grammars,
                   format_for(config.tool_call_format, tokenizer.chat_template))

    def describe(self) -> ModelInfo:
        return self.info

    async def chat(self, request: ChatInput) -> Generation:
        # With tools, a grammar holds the model's tool calls to the offered functions' schemas: tool_choice required
        # or a named function forces a call; under auto the grammar arms itself once the model opens one.
        choice, tools = request.tool_choice, request.tools
        reads_calls = check_tool_choice(choice, tools)
        forced = choice == "required" or isinstance(choice, NamedTool)

        def prepare() -> tuple[str, ValidatedRequest]:
            try:
                prompt = self.tokenizer.render_chat(request.messages, add_generation_prompt=True, tools=tools)
            except TemplateError as exc:
                raise InvalidRequest(str(exc), param="messages") from None
            validated = self._validate(request.sampling, [prompt], add_special_tokens=False)
            if not (reads_calls and tools):
                return prompt, validated
            if validated.params.grammar is not None:
                if forced:
                    raise InvalidRequest("a forced tool call (tool_choice) and a response format cannot both hold "
                                         "the output: send one of them", param="response_format")
                return prompt, validated  # the response format holds the output; calls are read as written
            name = choice.name if isinstance(choice, NamedTool) else None
            grammar = compile_tools(self.grammars, self.tool_format, tools, name, forced=forced,
                                    parallel=request.parallel_tool_calls)
            if grammar is None:
                return prompt, validated
            return prompt, replace(validated, params=replace(validated.params, grammar=grammar))

        prompt, validated = await asyncio.to_thread(prepare)
        reader = ToolCallReader(self.tool_format, stream=request.stream) if reads_calls and tools else None
        return self._start(validated, prompt, reader)

    async def complete(self, request: CompletionInput) -> Generation:
        validated = await asyncio.to_thread(self._validate, request.sampling, request.prompts,
                                            add_special_tokens=True)
        return self._start(validated, "\n".join(p if isinstance(p, str) else self.tokenizer.decode(p)
                                                for p in request.prompts))

    async def embed(self, request: EmbeddingInput) -> Embeddings:
        raise wrong_task(self.info, "embeddings")

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)

    def _validate(self, sampling: SamplingRequest, prompts: Prompts, *, add_special_tokens: bool
                  ) -> ValidatedRequest:
        # Token ids are taken as sent (as OpenAI and vLLM do); validate() checks they are the model's own.
        ids = [self.tokenizer.encode(p, add_special_tokens=add_special_tokens) if isinstance(p, str) else list(p)
               for p in prompts]
        return validate(sampling, ids, self.limits)

    def _start(self, validated: ValidatedRequest, prompt: str, reader: ToolCallReader | None = None) -> Generation:
        """Queue every sequence (all or none: a refusal cancels those already queued). `reader`: the output is
        read for tool calls."""
        loop = asyncio.get_running_loop()
        first, *others = validated.prompts
        handle = self.scheduler.submit(first, validated.params, validated.n, loop)
        try:
            for ids in others:
                self.scheduler.submit(ids, validated.params, validated.n, loop, handle=handle)
        except BaseException:
            handle.cancel()
            raise

        async def release() -> None:
            handle.cancel()

        return Generation(_events(handle, validated, self.tokenizer, reader), prompt_tokens=validated.prompt_tokens,
                          prompt=prompt, release=release)


async def _events(handle: GenerationHandle, validated: ValidatedRequest, tokenizer: TextTokenizer,
                  reader: ToolCallReader | None) -> AsyncGenerator[Event, None]:
    finished = completion_tokens = 0
    try:
        while finished < validated.sequences:
            event = await handle.next_event()
            if event.finish_reason == "error":
                raise GenerationFailed(event.text)
            completion_tokens += event.tokens
            finished += bool(event.finish_reason)
            text, calls, reason = ((event.text, (), event.finish_reason) if reader is None
                                   else reader.read(event.index, event.text, event.finish_reason))
            yield ChoiceDelta(event.index, text, event.tokens, tool_calls=calls, finish_reason=reason,
                              logprobs=tuple(_named(tokenizer, sent) for sent in event.logprobs))
        yield Usage(validated.prompt_tokens, completion_tokens)
    finally:
        handle.cancel()


def _named(tokenizer: TextTokenizer, sent: SentLogprobs) -> TokenLogprob:
    """The sampler's log probabilities (token ids) with the tokens' texts and bytes (here, on the request's side:
    the scheduler thread does not spend its time on them)."""
    logprobs = sent.logprobs
    raw = tokenizer.token_bytes(logprobs.token)
    top = tuple(TopLogprob(_token_text(tokenizer.token_bytes(i)), lp, tuple(tokenizer.token_bytes(i)))
                for i, lp in zip(logprobs.top_ids, logprobs.top_logprobs, strict=True))
    return TokenLogprob(_token_text(raw), logprobs.logprob, tuple(raw), top=top, offset=sent.offset)


def _token_text(raw: bytes) -> str:
    """A token's text; one that ends inside a character is written as its bytes, as OpenAI writes it
    ("bytes:\\xe2\\x80")."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _model_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
