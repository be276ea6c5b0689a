"""A CPU int4 graph from a GGUF keeps the file's own quantised blocks instead of quantising the dequantised
weights a second time.

Re-quantising weights that already sit on a 4-bit grid costs far more than the first quantisation did: the
builder's symmetric int4 of SmolLM2's dequantised Q4_1 weights raised perplexity by 59% over the fp32 graph (and
Gemma's Q4_K_M by 220%), while the file's blocks are exactly what llama.cpp serves. Every block type here is
`w = scale * (q - zero_point) + offset` over blocks of 16 or 32 inputs, which ONNX Runtime's MatMulNBits computes
exactly for the `scale * (q - zero_point)` part (4-bit for Q4_*, 8-bit for the 5-, 6- and 8-bit types), with a
uint8 zero point. The `offset` (Q4_1's and the K-types' block minimum) is not a MatMulNBits term: a float zero
point would hold it, but ONNX Runtime then dequantises the whole matrix at every call (40x slower, measured), so
the graph adds it as `(x @ E) @ offsets.T`, E summing each block of the input (1/32 of the MatMul's work).

Run by export/gguf.py in the model builder's environment after the builder made the int4 graph
(`python gguf_blocks.py FILE.gguf CHECKPOINT_DIR GRAPH_DIR`): it rewrites GRAPH_DIR/model.onnx in place and
prints one JSON line (the block types used, per tensor count). Every weight it writes is checked against the
checkpoint's dequantised values (the same numbers, bit for bit, up to float rounding): rows are matched by
content, so the Q/K row permutation llama.cpp's converter applies to Llama files needs no rule of its own.
Exits 3 (with the reason) when a tensor's block type is not covered; the caller keeps the builder's graph then.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NOT_COVERED_EXIT = 3
QK_K = 256


class NotCovered(Exception):
    """A tensor whose block type or place in the graph this import does not cover."""


@dataclass
class Blocks:
    """A [rows, K] weight as w = scale * (q - zero_point) + offset over blocks of `block` inputs."""

    q: np.ndarray  # uint8 [rows, n_blocks, block], values below 2**bits
    scale: np.ndarray  # float32 [rows, n_blocks]
    zero_point: np.ndarray  # uint8 [rows, n_blocks]
    offset: np.ndarray | None  # float32 [rows, n_blocks], or None when all zero
    bits: int
    block: int

    def values(self) -> np.ndarray:
        w = (self.q.astype(np.float32) - self.zero_point[..., None]) * self.scale[..., None]
        if self.offset is not None:
            w = w + self.offset[..., None]
        result: np.ndarray = w.reshape(self.q.shape[0], -1)
        return result

    def rows(self, order: np.ndarray) -> Blocks:
        return Blocks(self.q[order], self.scale[order], self.zero_point[order],
                      None if self.offset is None else self.offset[order], self.bits, self.block)

    def as_format(self, bits: int, block: int) -> Blocks:
        """The same values with more bits per weight and/or smaller blocks (to share one MatMulNBits)."""
        q, zp = self.q.astype(np.int32), self.zero_point.astype(np.int32)
        if bits != self.bits:  # re-centre: 4-bit q with zero point 8 is 8-bit q + 120 with zero point 128
            shift = (1 << (bits - 1)) - (1 << (self.bits - 1))
            q, zp = q + shift, zp + shift
        scale, offset = self.scale, self.offset
        if block != self.block:
            split = self.block // block
            rows, n = q.shape[:2]
            q = q.reshape(rows, n * split, block)
            zp, scale = np.repeat(zp, split, axis=1), np.repeat(scale, split, axis=1)
            offset = None if offset is None else np.repeat(offset, split, axis=1)
        return Blocks(q.astype(np.uint8), scale, zp.astype(np.uint8), offset, bits, block)


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray, block: int) -> np.ndarray:
    """ggml's 4-bit packing: the low nibbles hold a block's first half, the high nibbles its second half."""
    n = qs.shape[0]
    return (qs.reshape(n, -1, 1, block // 2) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1) & 0x0F) \
        .reshape(n, -1, block)


def decode(type_name: str, raw: np.ndarray, rows: int) -> Blocks:
    """The blocks of one GGUF tensor, raw = its bytes as uint8 [n_blocks_total, bytes_per_block]."""
    n = raw.shape[0]
    if type_name == "Q4_0":
        d, qs = _f16(raw[:, 0:2]), raw[:, 2:]
        q, scale, zp, off, bits, block = _nibbles(qs, 32), d[:, None], 8, None, 4, 32
    elif type_name == "Q4_1":
        d, m, qs = _f16(raw[:, 0:2]), _f16(raw[:, 2:4]), raw[:, 4:]
        q, scale, zp, off, bits, block = _nibbles(qs, 32), d[:, None], 0, m[:, None], 4, 32
    elif type_name in ("Q5_0", "Q5_1"):
        head = 2 if type_name == "Q5_0" else 4
        d = _f16(raw[:, 0:2])
        qh = raw[:, head:head + 4].copy().view(np.uint32)[:, 0:1] >> np.arange(32, dtype=np.uint32)
        q = _nibbles(raw[:, head + 4:], 32)[:, 0] | ((qh & 1).astype(np.uint8) << 4)
        q = q[:, None, :]
        scale, bits, block = d[:, None], 8, 32
        zp, off = (16, None) if type_name == "Q5_0" else (0, _f16(raw[:, 2:4])[:, None])
    elif type_name == "Q8_0":
        d, qs = _f16(raw[:, 0:2]), raw[:, 2:].copy().view(np.int8)
        q = (qs.astype(np.int16) + 128).astype(np.uint8)[:, None, :]
        scale, zp, off, bits, block = d[:, None], 128, None, 8, 32
    elif type_name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(raw[:, 0:2]), _f16(raw[:, 2:4])
        sc, mins = _k_scale_min(raw[:, 4:16])
        if type_name == "Q4_K":
            q, bits = _nibbles(raw[:, 16:], 64).reshape(n, 8, 32), 4
        else:
            fifth = raw[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1) & np.uint8(1)
            q, bits = (_nibbles(raw[:, 48:], 64).reshape(n, 8, 32) | (fifth << np.uint8(4))).astype(np.uint8), 8
        scale, zp, off, block = d[:, None] * sc, 0, -(dmin[:, None] * mins), 32
    elif type_name == "Q6_K":
        ql, qh = raw[:, 0:128], raw[:, 128:192]
        scales, d = raw[:, 192:208].copy().view(np.int8).astype(np.float32), _f16(raw[:, 208:210])
        low = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1) & 0x0F).reshape(n, 2, 4, 32)
        high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1) & 0x03)
        q = (low | (high << 4)).reshape(n, 16, 16)
        scale, zp, off, bits, block = d[:, None] * scales, 32, None, 8, 16
    else:
        raise NotCovered(f"block type {type_name}")
    # Per GGUF block: q [n, sub_blocks, block], scale and offset [n, sub_blocks]; then per row of the weight.
    per_row = q.size // (rows * block)
    offset = None if off is None else np.asarray(off, np.float32).reshape(rows, per_row)
    return Blocks(q.astype(np.uint8).reshape(rows, per_row, block),
                  np.asarray(scale, np.float32).reshape(rows, per_row),
                  np.full((rows, per_row), zp, np.uint8), offset, bits, block)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit sub-block scales and minimums of Q4_K/Q5_K (ggml's get_scale_min_k4)."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _row_order(gguf_values: np.ndarray, reference: np.ndarray, name: str) -> np.ndarray:
    """Which GGUF row each checkpoint row is (llama.cpp stores Llama's Q/K rows permuted for its rope)."""
    if gguf_values.shape != reference.shape:
        raise ValueError(f"{name}: GGUF shape {gguf_values.shape}, checkpoint {reference.shape}")
    if np.array_equal(gguf_values, reference):
        return np.arange(reference.shape[0])
    where: dict[bytes, list[int]] = {}
    for index, row in enumerate(gguf_values):
        where.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), []).append(index)
    order = []
    for row in reference:
        found = where.get(hashlib.blake2b(row.tobytes(), digest_size=16).digest())
        if not found:
            raise ValueError(f"{name}: a checkpoint row matches no row of the GGUF tensor")
        order.append(found.pop())
    return np.array(order)


# The builder's MatMulNBits nodes and the checkpoint weights they hold, in row order.
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul_Q4$")
_PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def checkpoint_names(node_name: str, tied: bool) -> list[str]:
    if node_name == "/lm_head/MatMul_Q4":
        return ["model.embed_tokens.weight" if tied else "lm_head.weight"]
    match = _NODE.match(node_name)
    if not match:
        raise NotCovered(f"graph node {node_name}")
    layer, part, proj = match.groups()
    prefix = f"model.layers.{layer}.{'self_attn' if part == 'attn' else 'mlp'}"
    return [f"{prefix}.{p}.weight" for p in _PACKED.get(proj, (proj,))]


class Source:
    """The GGUF's tensors by checkpoint name, and the checkpoint's dequantised values to check them against."""

    def __init__(self, gguf_file: Path, checkpoint: Path):
        import gguf
        from safetensors import safe_open

        self.reader = gguf.GGUFReader(gguf_file)
        arch = str(self.reader.fields["general.architecture"].contents())
        n_layers = int(self.reader.fields[f"{arch}.block_count"].contents())
        arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
        self.names = gguf.get_tensor_name_map(arch_id, n_layers)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.dequantize = gguf.quants.dequantize
        self.files: list[Any] = [safe_open(str(f), "np") for f in sorted(checkpoint.glob("*.safetensors"))]
        self.keys = [set(f.keys()) for f in self.files]

    def reference(self, name: str) -> np.ndarray:
        for f, keys in zip(self.files, self.keys, strict=True):
            if name in keys:
                return np.asarray(f.get_tensor(name), dtype=np.float32)
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(name in keys for keys in self.keys)

    def blocks(self, name: str) -> tuple[Blocks, str]:
        gguf_name = self.names.get_name(name.removesuffix(".weight"))
        tensor = self.tensors.get(f"{gguf_name}.weight") if gguf_name else None
        if tensor is None:
            raise NotCovered(f"{name}: no GGUF tensor")
        type_name = tensor.tensor_type.name
        if type_name in ("F32", "F16", "BF16"):
            raise NotCovered(f"{name}: {type_name} (not quantised)")
        reference = self.reference(name)
        data = np.asarray(tensor.data)  # uint8 [rows, bytes per row] for the block types
        blocks_per_row = reference.shape[1] // (QK_K if type_name.endswith("_K") else 32)
        blocks = decode(type_name, data.reshape(reference.shape[0] * blocks_per_row, -1), reference.shape[0])
        gguf_values = self.dequantize(data, tensor.tensor_type).reshape(reference.shape)
        order = _row_order(gguf_values.astype(np.float32), reference, name)
        blocks = blocks.rows(order)
        if not np.allclose(blocks.values(), reference, rtol=1e-5, atol=1e-6):
            raise ValueError(f"{name}: the decoded {type_name} blocks do not give the checkpoint's values")
        return blocks, type_name


def join(parts: list[Blocks]) -> Blocks:
    """The rows of packed weights (q, k, v) in one MatMulNBits: the widest bits, the smallest block."""
    bits, block = max(p.bits for p in parts), min(p.block for p in parts)
    parts = [p.as_format(bits, block) for p in parts]
    offsets = [p.offset if p.offset is not None else np.zeros_like(p.scale) for p in parts]
    any_offset = any(p.offset is not None for p in parts)
    return Blocks(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]),
                  np.concatenate([p.zero_point for p in parts]),
                  np.concatenate(offsets) if any_offset else None, bits, block)


def packed_q(blocks: Blocks) -> np.ndarray:
    """MatMulNBits' B: [N, n_blocks, block * bits / 8], 4-bit values two to a byte, the even element low."""
    packed: np.ndarray = blocks.q if blocks.bits == 8 else (blocks.q[..., 0::2] | (blocks.q[..., 1::2] << 4))
    return packed.astype(np.uint8)


def packed_zero_points(blocks: Blocks) -> np.ndarray:
    if blocks.bits == 8:
        return blocks.zero_point
    rows, n = blocks.zero_point.shape
    padded = np.zeros((rows, n + n % 2), np.uint8)
    padded[:, :n] = blocks.zero_point
    packed: np.ndarray = padded[:, 0::2] | (padded[:, 1::2] << 4)
    return packed.astype(np.uint8)


def rewrite(graph_dir: Path, source: Source) -> dict[str, Any]:
    import onnx
    from onnx import helper, numpy_helper

    path = graph_dir / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    tied = not source.has("lm_head.weight")
    used: Counter[str] = Counter()
    nodes, extra_inits = [], []
    block_sums: dict[tuple[str, int, int], str] = {}
    replaced: dict[str, tuple[str, Blocks]] = {}  # old weight initializer -> (new name, blocks)
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "MatMulNBits":
            continue
        parts, types = zip(*(source.blocks(n) for n in checkpoint_names(node.name, tied)), strict=True)
        used.update(types)
        blocks = join(list(parts))
        attrs = {a.name: a for a in node.attribute}
        n_rows, k = attrs["N"].i, attrs["K"].i
        if blocks.q.shape[0] != n_rows or blocks.q.shape[1] * blocks.block != k:
            raise ValueError(f"{node.name}: blocks {blocks.q.shape} for N={n_rows}, K={k}")
        base = node.input[1].removesuffix("_Q4")
        weight, scales, zps = f"{base}_gguf{blocks.bits}", f"{base}_gguf_scales", f"{base}_gguf_zero_points"
        extra_inits += [numpy_helper.from_array(packed_q(blocks), weight),
                        numpy_helper.from_array(blocks.scale, scales),
                        numpy_helper.from_array(packed_zero_points(blocks), zps)]
        replaced[node.input[1]] = (weight, blocks)
        node.input[:] = [node.input[0], weight, scales, zps]
        attrs["bits"].i, attrs["block_size"].i = blocks.bits, blocks.block
        if blocks.offset is None:
            continue
        # + (x @ E) @ offsets.T: E [K, n_blocks] sums each block of the input; shared by nodes of one input.
        n_blocks = k // blocks.block
        key = (node.input[0], k, blocks.block)
        if key not in block_sums:
            ones = f"/gguf/block_sum_{k}x{blocks.block}"
            if ones not in {i.name for i in extra_inits}:
                extra_inits.append(numpy_helper.from_array(
                    np.repeat(np.eye(n_blocks, dtype=np.float32), blocks.block, axis=0), ones))
            block_sums[key] = f"{node.name}/gguf/block_sums"
            nodes.append(helper.make_node("MatMul", [node.input[0], ones], [block_sums[key]],
                                          name=f"{node.name}/gguf/BlockSums"))
        offsets = f"{base}_gguf_offsets_t"
        extra_inits.append(numpy_helper.from_array(np.ascontiguousarray(blocks.offset.T), offsets))
        output = node.output[0]
        node.output[0] = f"{output}/gguf/scaled"
        nodes.append(helper.make_node("MatMul", [block_sums[key], offsets], [f"{output}/gguf/offsets"],
                                      name=f"{node.name}/gguf/Offsets"))
        nodes.append(helper.make_node("Add", [node.output[0], f"{output}/gguf/offsets"], [output],
                                      name=f"{node.name}/gguf/Add"))
    _retie_embedding(nodes, replaced, extra_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + extra_inits)
    # onnx.load read the weights into memory: the old data file goes, the new one takes its name (the graph
    # is still in the builder's work folder, so nothing serves it half-written).
    path.with_name("model.onnx.data").unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    path.with_name("model.onnx.data").chmod(0o644)  # onnx writes it 0600: the image's service user reads it
    return {"gguf_block_types": dict(sorted(used.items()))}


def _retie_embedding(nodes: list[Any], replaced: dict[str, tuple[str, Blocks]], extra_inits: list[Any]) -> None:
    """The builder's tied embedding (GatherBlockQuantized over a Reshape of lm_head's weight) reads the new
    lm_head blocks: its bits, block size, zero points and the reshape to [vocab, K * bits / 8]."""
    from onnx import numpy_helper

    reshapes = {n.output[0]: n for n in nodes if n.op_type == "Reshape" and n.input[0] in replaced}
    for node in nodes:
        if node.op_type != "GatherBlockQuantized" or node.input[0] not in reshapes:
            continue
        reshape = reshapes[node.input[0]]
        weight, blocks = replaced[reshape.input[0]]
        if blocks.offset is not None:
            raise NotCovered("a tied embedding with block offsets")
        rows = blocks.q.shape[0]
        shape = f"/gguf/constants/{rows}x{blocks.q.shape[1] * blocks.q.shape[2] * blocks.bits // 8}"
        extra_inits.append(numpy_helper.from_array(np.array([rows, -1], np.int64), shape))
        reshape.input[:] = [weight, shape]
        scales = weight.rsplit("_gguf", 1)[0] + "_gguf_scales"
        zps = weight.rsplit("_gguf", 1)[0] + "_gguf_zero_points"
        node.input[:] = [node.input[0], node.input[1], scales, zps]
        for attr in node.attribute:
            if attr.name == "bits":
                attr.i = blocks.bits
            elif attr.name == "block_size":
                attr.i = blocks.block


def main(argv: list[str]) -> int:
    gguf_file, checkpoint, graph_dir = (Path(a) for a in argv)
    try:
        summary = rewrite(graph_dir, Source(gguf_file, checkpoint))
    except NotCovered as exc:
        print(f"not covered: {exc}", file=sys.stderr)
        return NOT_COVERED_EXIT
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
