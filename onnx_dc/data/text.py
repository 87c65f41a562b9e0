"""Calibration samples from text (``--calib text:FILE --tokenizer tokenizer.json [--max-length N]``).

One sample per non-empty line of a UTF-8 file. A Hugging Face ``tokenizer.json`` (read by the
``tokenizers`` package) turns each line into token ids with the special tokens the model was
trained with; the model's integer ``[batch, sequence]`` inputs are fed by their role, found from
their names as exporters write them:

* token ids: ``input_ids`` (any other integer input whose name says ``ids`` or ``input``),
* attention mask: a name with ``mask`` -- 1 for a token, 0 for padding,
* token types (segments): a name with ``type`` or ``segment`` -- 0 for a one-sentence sample.

Length: every sample is cut to ``max_length`` tokens (``--max-length``; else the model's fixed
sequence length; else the tokenizer's own truncation length; else 512) and padded with the
tokenizer's pad id to the longest sample (or to the model's fixed sequence length), so the
samples stack into batches. Statistics and fidelity count real tokens only (the attention mask,
see ``calib.token_mask``), so the padding length changes no result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_dc.errors import DataError

DEFAULT_MAX_LENGTH = 512
TOKENIZERS_INSTALL = "pip install tokenizers (or, from a source checkout, pip install -e '.[text]')"
ROLES = ("ids", "mask", "types")


@dataclass(frozen=True)
class TokenInput:
    """A model input that text feeds: its name, role (ids, mask, types), numpy dtype and fixed length."""

    name: str
    role: str
    dtype: np.dtype
    length: int | None


def token_inputs(inputs) -> tuple[TokenInput, ...]:
    """The model inputs text feeds, by role; DataError when the model has none or one text cannot fill.

    Args:
        inputs: the model's ``calib.InputInfo`` records.
    """
    found, unknown = [], []
    for inp in inputs:
        if inp.dtype.kind not in "iu" or len(inp.shape) != 2:
            unknown.append(inp)
            continue
        role = _role(inp.name)
        if role is None:
            unknown.append(inp)
        else:
            found.append(TokenInput(inp.name, role, inp.dtype, inp.shape[1]))
    described = ", ".join(f"{i.name} ({i.dtype}, {i.describe()})" for i in inputs)
    if not any(t.role == "ids" for t in found):
        raise DataError(f"the model has no token-id input (an integer [batch, sequence] input named like input_ids; "
                        f"it takes {described}); text: calibration feeds transformer models, give images: or npz: "
                        "samples instead")
    if unknown:
        names = ", ".join(i.name for i in unknown)
        raise DataError(f"text: calibration cannot feed model input(s) {names} (it takes {described}; text fills "
                        "input_ids, attention_mask and token_type_ids); give an npz:FILE with one array per input")
    roles = [t.role for t in found]
    if len(set(roles)) != len(roles):
        raise DataError(f"two model inputs take the same role ({', '.join(f'{t.name}: {t.role}' for t in found)}); "
                        "give an npz:FILE with one array per input")
    return tuple(found)


def _role(name: str) -> str | None:
    low = name.lower()
    if "mask" in low:
        return "mask"
    if "type" in low or "segment" in low:
        return "types"
    if "ids" in low or "input" in low:
        return "ids"
    return None


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file (each stripped of surrounding white space)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text:{path}: no such file; give a UTF-8 text file with one sample per line")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise DataError(f"text:{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8, one sample per "
                        "line") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"text:{path}: the file holds no text; give one sample per line")
    return lines


def load_tokenizer(path: str | None):
    """A ``tokenizers.Tokenizer`` read from ``tokenizer.json``; DataError naming the file or the package."""
    if path is None:
        raise DataError("--calib text:FILE needs --tokenizer tokenizer.json (the model's Hugging Face tokenizer file)")
    if not Path(path).is_file():
        raise DataError(f"--tokenizer {path}: no such file; give the model's tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(f"--calib text: needs the tokenizers package: {TOKENIZERS_INSTALL}") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises its own Exception type for any unreadable file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"--tokenizer {path}: not a tokenizer.json the tokenizers package reads ({first})") from None


def tokenizer_max_length(path: str) -> int | None:
    """The truncation length a tokenizer.json declares, if any."""
    try:
        with open(path, encoding="utf-8") as f:
            truncation = json.load(f).get("truncation") or {}
    except (OSError, ValueError, AttributeError):
        return None
    value = truncation.get("max_length") if isinstance(truncation, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None


def encode(lines: list[str], tokenizer, targets: tuple[TokenInput, ...], max_length: int,
           pad_id: int) -> dict[str, np.ndarray]:
    """Input name -> ``[N, 1, L]`` token arrays of ``lines`` (one complete feed per sample).

    Every line is cut to ``max_length`` tokens and padded with ``pad_id`` to the longest line, or to
    the length the model fixes.
    """
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(lines)
    fixed = {t.length for t in targets if t.length is not None}
    length = fixed.pop() if fixed else max(len(e.ids) for e in encodings)
    n = len(encodings)
    ids = np.full((n, length), pad_id, np.int64)
    mask = np.zeros((n, length), np.int64)
    types = np.zeros((n, length), np.int64)
    for i, e in enumerate(encodings):
        k = min(len(e.ids), length)
        ids[i, :k] = e.ids[:k]
        mask[i, :k] = 1
        types[i, :k] = e.type_ids[:k]
    by_role = {"ids": ids, "mask": mask, "types": types}
    return {t.name: by_role[t.role].astype(t.dtype)[:, None] for t in targets}


def text_samples(path: str, tokenizer_path: str | None, max_length: int | None, inputs):
    """Token arrays (input name -> ``[N, 1, L]``) for the lines of ``path``, checked before any is tokenized.

    Raises:
        DataError: no tokenizer, a model without token inputs, an empty or unreadable file, a bad length.
    """
    targets = token_inputs(inputs)
    tokenizer = load_tokenizer(tokenizer_path)
    lines = read_lines(path)
    fixed = {t.length for t in targets if t.length is not None}
    if len(fixed) > 1:
        raise DataError(f"the model's token inputs fix different lengths ({sorted(fixed)}); give an npz:FILE")
    model_length = next(iter(fixed), None)
    if max_length is None:
        max_length = model_length or tokenizer_max_length(tokenizer_path) or DEFAULT_MAX_LENGTH
    elif model_length is not None and max_length > model_length:
        raise DataError(f"--max-length {max_length} is longer than the model's fixed sequence length {model_length}; "
                        f"give --max-length {model_length} or less")
    pad = tokenizer.padding
    pad_id = int(pad["pad_id"]) if pad else (tokenizer.token_to_id("[PAD]") or 0)
    return encode(lines, tokenizer, targets, max_length, pad_id)
