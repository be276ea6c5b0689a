"""Graph runner for decoders whose past and present KV cache share one preallocated buffer.

ONNX Runtime GenAI's model builder makes such graphs: GroupQueryAttention writes each new key/value into the
cache at the row's own sequence length (taken from the attention mask's row sum) and applies rotary embeddings
itself, MatMulNBits holds block-quantised weights. So nothing is concatenated as a conversation grows, and
rows of one batch may have different lengths.

Each running sequence owns one row ("slot") of a `[slots, kv_heads, max_length, head_dim]` buffer per layer.
A step binds the rows `[0, high)` in place (no copy); a newcomer is prefilled straight into its free slot,
the other rows untouched. A free slot below `high` is stepped as a dummy row of length one until a newcomer
takes it, which keeps every binding a plain offset into the buffer on the CPU and on CUDA alike.
"""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from moltbot.engine.export_marker import read_marker
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sessions import DeviceOptions, active_provider, create_session

GENAI_CONFIG = "genai_config.json"
_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def is_builder_graph(folder: Path) -> bool:
    """A model builder folder whose decoder shares the past and present KV buffer."""
    try:
        config = json.loads((Path(folder) / GENAI_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("search", {}).get("past_present_share_buffer")) and "decoder" in config.get("model", {})


def builder_precision(folder: Path, kv_dtype: Any) -> str:
    """The graph's weight precision: from moltbot's export marker, else from the graph itself. (The serving path
    has no onnx package: MatMulNBits' `bits` attribute is found in the small graph file's bytes.)"""
    folder = Path(folder)
    if "precision" in (meta := read_marker(folder)):
        return str(meta["precision"])
    with (folder / "model.onnx").open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as graph:
        # mapped, not read: a single-file graph holds its weights (hundreds of MB)
        if graph.find(b"MatMulNBits") >= 0:
            # AttributeProto {name: "bits" (field 1), i: 4 or 8 (field 3)}, serialised in field order.
            bits = re.search(rb"\n\x04bits\x18([\x04\x08])", graph)
            return f"int{bits.group(1)[0]}" if bits else "int"
        if graph.find(b"MatMulInteger") >= 0 or graph.find(b"DynamicQuantizeMatMul") >= 0:  # CPU int8 (quantize.py)
            return "int8"
    return "fp16" if kv_dtype == np.float16 else "fp32"


class BuilderGraphRunner:
    """One decoder session with its slot buffers; used by one scheduler thread only."""

    family = "genai"  # the name users see for builder graphs (/v1/models `graph`, the export marker)

    def __init__(self, folder: Path, options: DeviceOptions, slots: int, max_length: int,
                 cache_dir: Path | None = None):
        folder = Path(folder)
        config = json.loads((folder / GENAI_CONFIG).read_text())["model"]
        decoder = config["decoder"]
        self.session = create_session(folder / decoder.get("filename", "model.onnx"), options, cache_dir)
        self.provider = active_provider(self.session)
        self.context_length = int(config.get("context_length", max_length))
        self.max_length = min(max_length, self.context_length)
        inputs = {i.name: i for i in self.session.get_inputs()}
        names = decoder.get("inputs", {})
        outputs = decoder.get("outputs", {})
        layers = int(decoder["num_hidden_layers"])
        past_key, past_value = names.get("past_key_names", "past_key_values.%d.key"), names.get(
            "past_value_names", "past_key_values.%d.value")
        present_key, present_value = outputs.get("present_key_names", "present.%d.key"), outputs.get(
            "present_value_names", "present.%d.value")
        self.past_names = [n % i for i in range(layers) for n in (past_key, past_value)]
        self.present_names = [n % i for i in range(layers) for n in (present_key, present_value)]
        self.input_ids_name = names.get("input_ids", "input_ids")
        self.mask_name = names.get("attention_mask", "attention_mask")
        self.position_name = names.get("position_ids", "position_ids") if "position_ids" in inputs else None
        self.logits_name = outputs.get("logits", "logits")
        logits_output = next(o for o in self.session.get_outputs() if o.name == self.logits_name)
        self._logits_dtype = _DTYPES[logits_output.type]
        # A graph built with prune_lm_head (export/gguf.py does for large vocabularies) computes the logits of each
        # row's last position only: [batch, 1, vocab] instead of [batch, sequence, vocab] (a 262k-vocabulary
        # prefill of 1,000 tokens would return 1 GiB). Its prefill groups then hold prompts of one length.
        self.last_position_only = len(logits_output.shape) == 3 and logits_output.shape[1] == 1
        self.vocab_size = int(config.get("vocab_size") or logits_output.shape[-1])
        first = inputs[self.past_names[0]]
        self.kv_heads = int(decoder.get("num_key_value_heads", first.shape[1]))
        self.head_dim = int(decoder.get("head_size", first.shape[3]))
        self.kv_dtype = _DTYPES[first.type]
        self.eos_token_ids = _ids(config.get("eos_token_id"))  # beside the tokenizer's, for folders without one
        self.device = ("cuda", options.cuda_device_id) if self.provider == "CUDAExecutionProvider" else ("cpu", 0)
        shape = (slots, self.kv_heads, self.max_length, self.head_dim)
        self._row_bytes = int(np.prod(shape[1:])) * int(np.dtype(self.kv_dtype).itemsize)
        kv_bytes = self._row_bytes * slots * len(self.past_names)
        if self.device[0] == "cuda" and options.gpu_mem_limit and kv_bytes > options.gpu_mem_limit:
            # On CUDA the whole buffer is allocated now: refuse with the sizes rather than fail in the allocator.
            raise ValueError(
                f"the KV cache for {slots} slots of {self.max_length} tokens needs {kv_bytes / 2**30:.1f} GiB, over "
                f"gpu_mem_limit ({options.gpu_mem_limit / 2**30:.1f} GiB): lower max_running or the model's "
                "max_tokens, or raise the limit")
        # On the CPU, numpy's zeroed pages are only backed by memory once touched: a long max_length costs only
        # what the sequences use. On CUDA the buffers are ORT's own device allocations.
        self._buffers: list[Any] = (
            [np.zeros(shape, self.kv_dtype) for _ in self.past_names] if self.device[0] == "cpu"
            else [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, *self.device)
                  for _ in self.past_names])
        self._pointers = [b.ctypes.data if isinstance(b, np.ndarray) else b.data_ptr() for b in self._buffers]
        self.slots = slots
        self.lengths = np.zeros(slots, dtype=np.int64)  # tokens cached per slot; 0 for a free slot
        # Decode steps over the same rows bind the same KV buffers and logits: their bindings are made once per
        # row count and only the step's ids and mask are bound again (60 layers' bindings cost ~0.5 ms a step).
        self._decode_bindings: dict[int, tuple[ort.IOBinding, np.ndarray]] = {}
        self.precision = builder_precision(folder, self.kv_dtype)

    # ---- slots ----------------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return int(np.count_nonzero(self.lengths == 0))

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0

    def reset(self) -> None:
        """Every slot free (what is left in the buffers is never read: a slot's length says what is valid)."""
        self.lengths[:] = 0

    # ---- running the graph ----------------------------------------------------------------------------
    def prefill(self, chunks: list[PrefillChunk]) -> np.ndarray:
        """Write each chunk into its slot's rows from its start; returns each chunk's last-token logits.

        Chunks that start a prompt in consecutive slots run as one right-padded batch (on a graph that computes the
        last position only, of one length); a chunk that continues a prompt runs alone, its past bound in place."""
        self._check(chunks)
        out: list[np.ndarray] = []
        group: list[PrefillChunk] = []
        try:
            for chunk in chunks:
                if group and not self._joins(group, chunk):
                    out.extend(self._prefill_group(group))
                    group = []
                group.append(chunk)
            out.extend(self._prefill_group(group))
        except BaseException:
            self.lengths[[c.slot for c in chunks]] = 0  # a half-written prompt must not keep its slot
            raise
        return np.stack(out)

    def _check(self, chunks: list[PrefillChunk]) -> None:
        slots = [c.slot for c in chunks]
        if not chunks or len(set(slots)) != len(slots) or not all(0 <= s < self.slots for s in slots):
            raise ValueError("prefill writes distinct slots")
        for chunk in chunks:
            if not chunk.tokens or chunk.end >= self.max_length:
                raise ValueError(f"a prompt of {chunk.end} tokens does not fit a context of {self.max_length}")
            if self.lengths[chunk.slot] != chunk.start:
                raise ValueError(f"slot {chunk.slot} holds {self.lengths[chunk.slot]} tokens, not {chunk.start}")

    def _joins(self, group: list[PrefillChunk], chunk: PrefillChunk) -> bool:
        """Whether `chunk` can share the group's graph call: both start prompts, in the next slot up (a call binds
        rows [first, first + rows)), of the group's length where the graph keeps only the last position."""
        return (group[0].start == 0 and chunk.start == 0 and chunk.slot == group[-1].slot + 1
                and not (self.last_position_only and len(chunk.tokens) != len(group[0].tokens)))

    def _prefill_group(self, group: list[PrefillChunk]) -> np.ndarray:
        width = max(len(c.tokens) for c in group)
        ids = np.zeros((len(group), width), dtype=np.int64)
        for row, chunk in enumerate(group):
            ids[row, : len(chunk.tokens)] = chunk.tokens
        past = np.array([c.start for c in group], dtype=np.int64)
        added = np.array([len(c.tokens) for c in group], dtype=np.int64)
        logits = self._run(group[0].slot, len(group), ids, past + added, past_lengths=past, last=added - 1)
        self.lengths[group[0].slot: group[0].slot + len(group)] = past + added
        return logits

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        """One step for the slots in use named in `slots` (each with its last token); returns their logits in that
        order. Other rows below the highest are stepped as dummies that advance nothing: a free slot as a row
        of length one, a slot whose prompt is being prefilled in chunks with a token at its length, which its
        next chunk overwrites."""
        in_use = set(np.flatnonzero(self.lengths).tolist())
        if not slots or not set(slots) <= in_use or len(set(slots)) != len(slots):
            raise ValueError("decode steps distinct slots in use")
        if np.any(self.lengths[slots] >= self.max_length):
            raise ValueError("a sequence reached the end of its context")
        high = max(slots) + 1
        step_tokens = np.zeros((high, 1), dtype=np.int64)
        step_tokens[slots, 0] = tokens
        total = np.where(self.lengths[:high] > 0, self.lengths[:high] + 1, 1)
        binding, logits = self._decode_binding(high)
        self._bind_step(binding, step_tokens, total, past_lengths=total - 1)
        self.session.run_with_iobinding(binding)
        self.lengths[slots] += 1
        picked: np.ndarray = logits[slots, 0]
        return picked.astype(np.float32)  # a copy: the next step overwrites the bound logits

    def _decode_binding(self, rows: int) -> tuple[ort.IOBinding, np.ndarray]:
        if rows not in self._decode_bindings:
            binding = self._kv_binding(0, rows)
            logits = np.empty((rows, 1, self.vocab_size), dtype=self._logits_dtype)
            binding.bind_output(self.logits_name, "cpu", 0, self._logits_dtype, list(logits.shape),
                                logits.ctypes.data)
            self._decode_bindings[rows] = (binding, logits)
        return self._decode_bindings[rows]

    def _kv_binding(self, first: int, rows: int) -> ort.IOBinding:
        """A binding of slot rows [first, first + rows) of every layer's buffer as both past and present."""
        binding = self.session.io_binding()
        shape = [rows, self.kv_heads, self.max_length, self.head_dim]
        offset = first * self._row_bytes
        for past, present, pointer in zip(self.past_names, self.present_names, self._pointers, strict=True):
            binding.bind_input(past, self.device[0], self.device[1], self.kv_dtype, shape, pointer + offset)
            binding.bind_output(present, self.device[0], self.device[1], self.kv_dtype, shape, pointer + offset)
        return binding

    def _bind_step(self, binding: ort.IOBinding, ids: np.ndarray, total: np.ndarray,
                   past_lengths: np.ndarray) -> None:
        """Bind a call's token ids, attention mask (`total` tokens per row after it) and positions."""
        binding.bind_cpu_input(self.input_ids_name, ids)
        width = int(total.max())
        binding.bind_cpu_input(self.mask_name, (np.arange(width) < total[:, None]).astype(np.int64))
        if self.position_name:
            positions = past_lengths[:, None] + np.arange(ids.shape[1])
            binding.bind_cpu_input(self.position_name, np.minimum(positions, total[:, None] - 1).astype(np.int64))

    def _run(self, first: int, rows: int, ids: np.ndarray, total: np.ndarray, past_lengths: np.ndarray,
             last: np.ndarray) -> np.ndarray:
        """Run the graph over slot rows [first, first + rows) with `total` tokens per row after this call; returns
        each row's logits at its position `last` (in this call's tokens), [rows, vocab] in float32."""
        binding = self._kv_binding(first, rows)
        self._bind_step(binding, ids, total, past_lengths)
        binding.bind_output(self.logits_name, "cpu")
        self.session.run_with_iobinding(binding)
        logits: np.ndarray = binding.get_outputs()[-1].numpy()
        if self.last_position_only:  # every row's last position is the call's last (see _joins)
            last = np.full(rows, logits.shape[1] - 1)
        picked: np.ndarray = logits[np.arange(rows), last]  # before converting: a prefill's logits span every position
        return picked.astype(np.float32, copy=False)  # fp16 graphs: sampling works in float32


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)
