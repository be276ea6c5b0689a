"""Graph runner for Optimum's decoder exports: past key/values in, a grown present out, every step.

The graph concatenates the whole KV cache at each step, so a step costs more as the context grows; the model
builder's graphs (builder_runner.py) do not, and are preferred where the builder covers the architecture. This family
stays for the rest. Rows are left-padded to one length; a finished row stays until the next rebuild (a cheap
wasted row beats a copy of the whole cache per finished sequence), and `rebuild` drops those rows and adds newly
prefilled ones in one copy into the idle buffers. A prompt's cache is built outside the batch, chunk by chunk where
the scheduler sends it so, and joins the batch at its first decode step. The scheduler sees stable slot numbers;
the runner maps them to the rows of the moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from moltbot.engine.export_marker import read_marker
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sessions import DeviceOptions, active_provider, create_session

# One tensor per past key/value input: numpy arrays on the host, OrtValues where the cache stays on a device.
KVCache = list[Any]


class DecoderModel:
    """The ONNX decoder with its KV cache layout, run one step at a time."""

    def __init__(self, folder: Path, options: DeviceOptions, cache_dir: Path | None = None):
        self.folder = Path(folder)
        self.session = create_session(self.folder / "model.onnx", options, cache_dir)
        self.provider = active_provider(self.session)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        if not self.past_names:
            raise ValueError(f"{folder}: model.onnx has no past_key_values inputs; export it with "
                             "task text-generation-with-past (moltbot models export)")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = np.float16 if "float16" in first.type else np.float32
        self.has_position_ids = "position_ids" in inputs
        self.output_names = ["logits", *self.present_names]
        # Where the KV cache lives between steps. On the CPU: our own reusable host buffers, bound with IO
        # binding. On CUDA: OrtValues on the device (ORT allocates the presents there, they are bound back as
        # the next step's past), so only token ids go in and logits come out each step.
        self.binds_host_buffers = self.provider == "CPUExecutionProvider"
        self.device = ("cuda", options.cuda_device_id) if self.provider == "CUDAExecutionProvider" else ("cpu", 0)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=self.kv_dtype) for _ in self.past_names]

    def _feed(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray
              ) -> dict[str, np.ndarray]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.has_position_ids:
            feed["position_ids"] = position_ids
        return feed

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = self._feed(input_ids, attention_mask, position_ids)
        feed.update(zip(self.past_names, past, strict=True))
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def run_into(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                 past: list[np.ndarray], present: list[np.ndarray]) -> np.ndarray:
        """One step with the new KV cache written into `present` (preallocated, contiguous); returns logits."""
        binding = self.session.io_binding()
        for name, value in self._feed(input_ids, attention_mask, position_ids).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, array in zip(self.past_names, past, strict=True):
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        binding.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        for name, array in zip(self.present_names, present, strict=True):
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)
        logits: np.ndarray = binding.get_outputs()[0].numpy()
        return logits

    def run_resident(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                     past: KVCache) -> tuple[np.ndarray, KVCache]:
        """One step with the KV cache as OrtValues on self.device; the presents stay there too."""
        binding = self.session.io_binding()
        for name, value in self._feed(input_ids, attention_mask, position_ids).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in zip(self.past_names, self.to_device(past), strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, *self.device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def to_device(self, values: KVCache) -> KVCache:
        return [v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(v), *self.device) for v in values]

    @staticmethod
    def to_host(values: KVCache) -> list[np.ndarray]:
        return [v.numpy() if isinstance(v, ort.OrtValue) else v for v in values]


class KVBuffers:
    """Two sets of flat buffers, one per past tensor: a step reads the KV cache from one set and writes the
    grown cache into the other. Reusing warm memory avoids allocating (and page-faulting) ~100 MB per step."""

    def __init__(self, model: DecoderModel):
        self.model = model
        self.sets: list[list[np.ndarray]] = [[], []]
        self.current = 0

    def views(self, which: int, batch: int, length: int) -> list[np.ndarray]:
        shape = (batch, self.model.kv_heads, length, self.model.head_dim)
        needed = int(np.prod(shape))
        buffers = self.sets[which]
        if not buffers or buffers[0].size < needed:
            size = max(needed, int(1.5 * buffers[0].size) if buffers else needed)
            buffers = self.sets[which] = [np.empty(size, dtype=self.model.kv_dtype) for _ in self.model.past_names]
        return [b[:needed].reshape(shape) for b in buffers]


@dataclass
class Prefilled:
    """Newcomers after their prefill, row for row: their KV cache and attention mask."""

    slots: list[int]
    past: list[np.ndarray]
    mask: np.ndarray


class Batch:
    """The running rows and their KV cache, left-padded to one length; `slots[row]` is None for a finished row."""

    def __init__(self, model: DecoderModel):
        self.model = model
        self.slots: list[int | None] = []
        self.buffers = KVBuffers(model)
        self.past: KVCache = model.empty_past(0)
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.positions = np.zeros((0,), dtype=np.int64)

    def live(self) -> int:
        return sum(1 for s in self.slots if s is not None)

    def rebuild(self, keep: list[int], new: Prefilled | None) -> None:
        """Keep rows `keep`, append the `new` rows, trim the columns that no row attends to any more."""
        kept_mask = self.mask[keep]
        start = int(np.argmax(kept_mask.any(axis=0))) if len(keep) and kept_mask.any() else kept_mask.shape[1]
        kept_len = kept_mask.shape[1] - start
        new_len = new.mask.shape[1] if new else 0
        length = max(kept_len, new_len)
        rows = len(keep) + (len(new.slots) if new else 0)
        idle = 1 - self.buffers.current
        target = self.buffers.views(idle, rows, length) if self.model.binds_host_buffers else [
            np.empty((rows, self.model.kv_heads, length, self.model.head_dim), self.model.kv_dtype)
            for _ in self.model.past_names]
        mask = np.zeros((rows, length), dtype=np.int64)
        for dst, src in zip(target, self.model.to_host(self.past), strict=True):
            dst[:, :, : length - kept_len].fill(0)  # padding: masked out, but must not hold NaN garbage
            for out_row, row in enumerate(keep):
                dst[out_row, :, length - kept_len:] = src[row, :, start:]
        mask[: len(keep), length - kept_len:] = kept_mask[:, start:]
        if new:
            offset = len(keep)
            for dst, src in zip(target, new.past, strict=True):
                dst[offset:, :, : length - new_len].fill(0)
                dst[offset:, :, length - new_len:] = src
            mask[offset:, length - new_len:] = new.mask
        self.buffers.current = idle
        self.past = target if self.model.binds_host_buffers else self.model.to_device(target)
        self.mask = mask
        self.slots = [self.slots[i] for i in keep] + (list(new.slots) if new else [])
        keep_index = np.asarray(keep, dtype=np.int64)
        self.positions = np.concatenate([self.positions[keep_index], new.mask.sum(axis=1) if new else []]
                                        ).astype(np.int64)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One decode step for every row (`tokens[row]`: its last token); returns the logits [rows, vocab]."""
        rows, length = self.mask.shape
        mask = np.concatenate([self.mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        if self.model.binds_host_buffers:
            idle = 1 - self.buffers.current
            present = self.buffers.views(idle, rows, length + 1)
            logits = self.model.run_into(tokens[:, None], mask, self.positions[:, None], self.past, present)
            self.buffers.current = idle
        else:
            logits, present = self.model.run_resident(tokens[:, None], mask, self.positions[:, None], self.past)
        self.past, self.mask = present, mask
        self.positions = self.positions + 1
        return logits[:, -1, :]


class OptimumRunner:
    """The scheduler's view of an Optimum decoder: numbered slots over the rows of a rebuilt batch."""

    family = "optimum"

    eos_token_ids: tuple[int, ...] = ()  # the tokenizer's files say them

    def __init__(self, folder: Path, options: DeviceOptions, slots: int, max_length: int,
                 cache_dir: Path | None = None):
        self.model = DecoderModel(folder, options, cache_dir)
        self.provider = self.model.provider
        self.precision = str(read_marker(folder).get("precision") or
                             ("fp16" if self.model.kv_dtype == np.float16 else "fp32"))
        self.max_length = max_length  # the graph has no buffer of its own to bound it
        self.slots = slots
        self.reset()

    def reset(self) -> None:
        """Every slot free, the cache empty (after a failure that may have left the batch half-built)."""
        self.batch = Batch(self.model)
        self._free = list(range(self.slots))
        # Prompts prefilled but not yet stepped: each slot's own KV cache [1, heads, tokens, head_dim] per layer.
        # They join the batch at their first decode step, together: one rebuild, however many chunks they took.
        self._pending: dict[int, list[np.ndarray]] = {}

    def free_slots(self) -> int:
        return len(self._free)

    def prefill(self, chunks: list[PrefillChunk]) -> np.ndarray:
        """Chunks that start prompts run together, left-padded; a chunk that continues a prompt runs alone on its
        pending cache. Each slot's cache waits outside the batch until its first decode step."""
        self._check(chunks)
        starting = [i for i, c in enumerate(chunks) if c.start == 0]
        out: list[np.ndarray] = [np.empty(0)] * len(chunks)
        try:
            if starting:
                for i, row in zip(starting, self._prefill_new([chunks[i] for i in starting]), strict=True):
                    out[i] = row
            for i, chunk in enumerate(chunks):
                if chunk.start:
                    out[i] = self._prefill_more(chunk)
        except BaseException:
            for chunk in chunks:
                self._drop(chunk.slot)  # a half-written prompt must not keep its slot
            raise
        return np.stack(out)

    def _check(self, chunks: list[PrefillChunk]) -> None:
        slots = [c.slot for c in chunks]
        if not chunks or len(set(slots)) != len(slots):
            raise ValueError("prefill writes distinct slots")
        for chunk in chunks:
            if chunk.start == 0:
                fits = chunk.slot in self._free
            else:
                fits = chunk.slot in self._pending and self._pending[chunk.slot][0].shape[2] == chunk.start
            if not chunk.tokens or not fits:
                raise ValueError(f"slot {chunk.slot} does not hold the prompt's first {chunk.start} tokens")

    def _prefill_new(self, chunks: list[PrefillChunk]) -> np.ndarray:
        length = max(len(c.tokens) for c in chunks)
        ids = np.zeros((len(chunks), length), dtype=np.int64)
        mask = np.zeros((len(chunks), length), dtype=np.int64)
        for row, chunk in enumerate(chunks):
            ids[row, length - len(chunk.tokens):] = chunk.tokens
            mask[row, length - len(chunk.tokens):] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        logits, present = self.model.run(ids, mask, positions, self.model.empty_past(len(chunks)))
        for row, chunk in enumerate(chunks):  # each row without its left padding
            self._free.remove(chunk.slot)
            self._pending[chunk.slot] = [p[row: row + 1, :, length - len(chunk.tokens):] for p in present]
        rows: np.ndarray = logits[:, -1, :]
        return rows

    def _prefill_more(self, chunk: PrefillChunk) -> np.ndarray:
        ids = np.asarray([chunk.tokens], dtype=np.int64)
        mask = np.ones((1, chunk.end), dtype=np.int64)
        positions = np.arange(chunk.start, chunk.end, dtype=np.int64)[None, :]
        logits, self._pending[chunk.slot] = self.model.run(ids, mask, positions, self._pending[chunk.slot])
        row: np.ndarray = logits[0, -1, :]
        return row

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        joining = [slot for slot in slots if slot in self._pending]
        if joining:
            self._rebuild(self._joined(joining))
        rows = {slot: row for row, slot in enumerate(self.batch.slots) if slot is not None}
        step_tokens = np.zeros(len(self.batch.slots), dtype=np.int64)
        for slot, token in zip(slots, tokens, strict=True):
            step_tokens[rows[slot]] = token
        logits = self.batch.step(step_tokens)
        return logits[[rows[slot] for slot in slots]]

    def _joined(self, slots: list[int]) -> Prefilled:
        """The pending caches of `slots` as one left-padded block of rows (and out of the pending ones)."""
        caches = [self._pending.pop(slot) for slot in slots]
        length = max(cache[0].shape[2] for cache in caches)
        mask = np.zeros((len(slots), length), dtype=np.int64)
        past = [np.zeros((len(slots), self.model.kv_heads, length, self.model.head_dim), self.model.kv_dtype)
                for _ in self.model.past_names]
        for row, cache in enumerate(caches):
            held = cache[0].shape[2]
            mask[row, length - held:] = 1
            for dst, src in zip(past, cache, strict=True):
                dst[row, :, length - held:] = src[0]
        return Prefilled(slots, past, mask)

    def release(self, slot: int) -> None:
        """The slot's row stops counting now and leaves the batch at the next rebuild (at once when a quarter
        of the rows are finished, so that stepping them does not cost more than the copy)."""
        if self._drop(slot):
            return
        self.batch.slots = [None if s == slot else s for s in self.batch.slots]
        if slot not in self._free:
            self._free.append(slot)
        finished = len(self.batch.slots) - self.batch.live()
        if finished * 4 >= len(self.batch.slots):
            self._rebuild(None)

    def _drop(self, slot: int) -> bool:
        """Free a slot whose prompt has not joined the batch; whether it had one."""
        if self._pending.pop(slot, None) is None:
            return False
        self._free.append(slot)
        return True

    def _rebuild(self, new: Prefilled | None) -> None:
        self.batch.rebuild([row for row, slot in enumerate(self.batch.slots) if slot is not None], new)
