"""Graph runner for Optimum's decoder exports: past key/values in, a grown present out, every step.

The graph concatenates the whole KV cache at each step, so a step costs more as the context grows; the model
builder's graphs (builder_runner.py) do not, and are preferred where the builder covers the architecture. This family
stays for the rest. Rows are left-padded to one length; a finished row stays until the next rebuild (a cheap
wasted row beats a copy of the whole cache per finished sequence), and `rebuild` drops those rows and adds newly
prefilled ones in one copy into the idle buffers. The scheduler sees stable slot numbers; the runner maps them
to the rows of the moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from moltbot.engine.export_marker import read_marker
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
        self._slots = slots
        self.reset()

    def reset(self) -> None:
        """Every slot free, the cache empty (after a failure that may have left the batch half-built)."""
        self.batch = Batch(self.model)
        self._free = list(range(self._slots))

    def free_slots(self) -> int:
        return len(self._free)

    def prefill(self, prompts: list[list[int]], token_budget: int) -> tuple[list[int], np.ndarray]:
        """Run the prompts (left-padded, together, in chunks of the budget) and join them to the batch."""
        if len(prompts) > len(self._free):
            raise ValueError(f"{len(prompts)} prompts for {len(self._free)} free slots")
        length = max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), length), dtype=np.int64)
        mask = np.zeros((len(prompts), length), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        chunk = max(1, token_budget // len(prompts))
        present = self.model.empty_past(len(prompts))
        logits = np.empty(0)
        for start in range(0, length, chunk):
            end = min(start + chunk, length)
            logits, present = self.model.run(ids[:, start:end], mask[:, :end], positions[:, start:end], present)
        slots = [self._free.pop(0) for _ in prompts]
        self._rebuild(Prefilled(slots, present, mask))
        return slots, logits[:, -1, :]

    def decode(self, slots: list[int], tokens: list[int]) -> np.ndarray:
        rows = {slot: row for row, slot in enumerate(self.batch.slots) if slot is not None}
        step_tokens = np.zeros(len(self.batch.slots), dtype=np.int64)
        for slot, token in zip(slots, tokens, strict=True):
            step_tokens[rows[slot]] = token
        logits = self.batch.step(step_tokens)
        return logits[[rows[slot] for slot in slots]]

    def release(self, slot: int) -> None:
        """The slot's row stops counting now and leaves the batch at the next rebuild (at once when a quarter
        of the rows are finished, so that stepping them does not cost more than the copy)."""
        self.batch.slots = [None if s == slot else s for s in self.batch.slots]
        self._free.append(slot)
        finished = len(self.batch.slots) - self.batch.live()
        if finished * 4 >= len(self.batch.slots):
            self._rebuild(None)

    def _rebuild(self, new: Prefilled | None) -> None:
        self.batch.rebuild([row for row, slot in enumerate(self.batch.slots) if slot is not None], new)
