"""Retrieval by meaning beside BM25, against the real Postgres: vectors stored at ingestion,
questions in other words than the text's, and what happens without the model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.retrieval import documents, embedding, search, vectors

# Three short notes that share no word with the questions asked of them below.
HOUSE = {
    "kitchen.md": "# Kitchen\n\nThe dishwasher runs every evening after dinner. Empty it before "
    "breakfast and put the plates back in the cupboard next to the sink.\n",
    "garage.md": "# Garage\n\nBicycles are parked along the left wall of the garage. Pump the "
    "tyres once a week and oil the chain after riding in the rain.\n",
    "garden.md": "# Garden\n\nWater the tomatoes early in the morning during summer, and cover "
    "the seedlings with fleece when frost is forecast.\n",
}
CROCKERY = "When should the crockery get cleaned?"  # the kitchen note, in other words
BIKE = "How often do I inflate the wheels of my bike?"  # the garage note, in other words

CODE = '''\
def _parse_header(line):
    """Split one raw header line into its name and its value."""
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


class Message:
    """An e-mail message: headers and a body."""

    def _reset(self):
        self.headers = {}
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def house(folder: Path) -> dict[str, Path]:
    """The notes written under `folder/house`, by name."""
    return {name: write(folder / "house", name, text) for name, text in HOUSE.items()}


async def ingest(
    db: dbpool.Pool,
    paths: list[Path],
    *,
    tenant_id: str = "default",
    collection: str = "house",
    model_dir: Path | None = None,
) -> documents.IngestReport:
    return await documents.add_documents(
        db, tenant_id=tenant_id, collection=collection, paths=paths, model_dir=model_dir
    )


async def ask(
    db: dbpool.Pool,
    query: str,
    *,
    tenant_id: str = "default",
    model_dir: Path | None = None,
    top_k: int = 5,
) -> list[search.Passage]:
    return await search.retrieve(
        db,
        tenant_id=tenant_id,
        collections=("house",),
        query=query,
        top_k=top_k,
        token_budget=4000,
        model_dir=model_dir,
    )


async def by_words(db: dbpool.Pool, query: str) -> list[str]:
    """The sources BM25 alone finds for `query` (the words' side of the retrieval)."""
    found = await dbdocuments.search_passages(
        db,
        tenant_id="default",
        collections=["house"],
        query=search.search_query(query),
        k1=search.K1,
        b=search.B,
        max_tokens=4000,
        limit=10,
    )
    return [passage.source for passage in found.values()]


async def vector_rows(db: dbpool.Pool) -> list[tuple[str, int, int, bool]]:
    """(source, position, number of vectors, private) of every stored passage's vectors."""
    rows = await db.fetch(
        "SELECT d.source, p.position, octet_length(e.vectors) AS size, e.private"
        "  FROM appliance.passage_embeddings e"
        "  JOIN appliance.passages p ON p.passage_id = e.passage_id"
        "  JOIN appliance.documents d ON d.document_id = p.document_id"
        " ORDER BY 1, 2"
    )
    width = 4 * embedding.DIMENSIONS
    return [(r["source"], r["position"], r["size"] // width, r["private"]) for r in rows]


@pytest.mark.asyncio(loop_scope="session")
class TestVectors:
    async def test_every_passage_is_stored_with_a_vector_per_view(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Each passage gets one unit vector per view, of the model that made them."""
        paths = house(tmp_path)

        report = await ingest(db, list(paths.values()))

        assert report.model == embedding.MODEL
        expected = sorted(
            (path.resolve().as_posix(), passage.position, len(passage.views), False)
            for path in paths.values()
            for passage in documents.split(path.read_text(), name=path.name, kind="markdown")
        )
        assert await vector_rows(db) == expected
        assert (
            await db.fetchval(
                "SELECT count(*) FROM appliance.passage_embeddings WHERE model <> $1",
                embedding.MODEL,
            )
            == 0
        )
        stored = await db.fetchval("SELECT vectors FROM appliance.passage_embeddings LIMIT 1")
        np.testing.assert_allclose(np.linalg.norm(embedding.unpack(stored), axis=1), 1.0, atol=1e-5)

    async def test_a_changed_file_replaces_its_vectors(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """New content gets new vectors; none of the old passages' are left behind."""
        paths = house(tmp_path)
        await ingest(db, list(paths.values()))
        paths["kitchen.md"].write_text(
            "# Kitchen\n\nThe oven is cleaned on the first Sunday of every month.\n"
        )

        report = await ingest(db, list(paths.values()))

        assert report.replaced == (paths["kitchen.md"].resolve().as_posix(),)
        orphans = await db.fetchval(
            "SELECT count(*) FROM appliance.passage_embeddings e WHERE NOT EXISTS"
            " (SELECT FROM appliance.passages p WHERE p.passage_id = e.passage_id)"
        )
        assert orphans == 0
        assert len(await vector_rows(db)) == await db.fetchval(
            "SELECT count(*) FROM appliance.passages"
        )
        found = await ask(db, "When is the stove scrubbed?", top_k=1)
        assert "oven" in found[0].text

    async def test_a_passage_opening_only_private_definitions_is_marked_private(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """`def _parse_header` alone is private; `class Message` with its `_reset` is not."""
        helper = write(tmp_path, "helper.py", CODE[: CODE.index("class")])
        message = write(tmp_path, "message.py", CODE[CODE.index("class") :])

        await ingest(db, [helper, message])

        assert [(Path(row[0]).name, row[3]) for row in await vector_rows(db)] == [
            ("helper.py", True),
            ("message.py", False),
        ]


@pytest.mark.asyncio(loop_scope="session")
class TestMeaning:
    async def test_a_question_in_other_words_is_found_by_meaning(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A question sharing no word with the note that answers it finds that note first,
        where BM25 alone finds nothing."""
        paths = house(tmp_path)
        await ingest(db, list(paths.values()))

        assert await by_words(db, CROCKERY) == []
        assert await by_words(db, BIKE) == []
        assert (await ask(db, CROCKERY))[0].source == paths["kitchen.md"].resolve().as_posix()
        assert (await ask(db, BIKE))[0].source == paths["garage.md"].resolve().as_posix()

    async def test_a_question_about_nothing_held_finds_nothing(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Passages below the similarity floor are not returned by meaning."""
        await ingest(db, list(house(tmp_path).values()))

        assert await ask(db, "quantum chromodynamics on a lattice") == []

    async def test_the_exact_match_of_the_words_comes_first(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """The one note holding a word of the question comes first, though another is nearer
        in meaning; that one comes next."""
        paths = house(tmp_path)
        odd = write(tmp_path / "house", "zanzibar.md", "# Zanzibar\n\nA note about spices.\n")
        await ingest(db, [*paths.values(), odd])

        found = await ask(db, f"Zanzibar: {CROCKERY}")

        assert found[0].source == odd.resolve().as_posix()
        assert found[1].source == paths["kitchen.md"].resolve().as_posix()

    async def test_a_tenant_never_finds_another_tenants_passages_by_meaning(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """acme's question about bikes does not reach globex's garage note, only globex's does."""
        paths = house(tmp_path)
        await ingest(db, [paths["kitchen.md"]], tenant_id="acme")
        await ingest(db, [paths["garage.md"]], tenant_id="globex")

        assert await ask(db, BIKE, tenant_id="acme") == []
        [found] = await ask(db, BIKE, tenant_id="globex")
        assert found.source == paths["garage.md"].resolve().as_posix()


@pytest.mark.asyncio(loop_scope="session")
class TestWithoutTheModel:
    async def test_ingestion_stores_passages_without_vectors_and_warns(
        self, db: dbpool.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without the model, passages are stored for BM25, no vector is, and a warning says so."""
        paths = house(tmp_path)

        with caplog.at_level(logging.WARNING):
            report = await ingest(db, list(paths.values()), model_dir=tmp_path / "no-model")

        assert report.model is None
        assert report.passages == len(HOUSE)
        assert await vector_rows(db) == []
        events = {getattr(r, "event", None) for r in caplog.records}
        assert {"embedding.unavailable", "documents.not_embedded"} <= events

    async def test_retrieval_falls_back_to_the_words(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Without the model, retrieval ranks by BM25 alone: words find, paraphrases do not."""
        paths = house(tmp_path)
        await ingest(db, list(paths.values()))
        missing = tmp_path / "no-model"

        found = await ask(db, "dishwasher", model_dir=missing)

        assert [p.source for p in found] == [paths["kitchen.md"].resolve().as_posix()]
        assert await ask(db, CROCKERY, model_dir=missing) == []

    async def test_a_passage_without_vectors_is_still_found_by_its_words(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A note stored without vectors is found by its words beside notes that have them."""
        paths = house(tmp_path)
        await ingest(db, [paths["kitchen.md"]], model_dir=tmp_path / "no-model")
        await ingest(db, [paths["garage.md"]])

        found = await ask(db, "dishwasher bicycles")

        assert {p.source for p in found} == {
            paths["kitchen.md"].resolve().as_posix(),
            paths["garage.md"].resolve().as_posix(),
        }

    async def test_a_file_stored_without_vectors_gets_them_once_the_model_is_there(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Ingesting unchanged content again with the model stores its vectors ("embedded")."""
        paths = house(tmp_path)
        await ingest(db, [paths["kitchen.md"]], model_dir=tmp_path / "no-model")

        report = await ingest(db, [paths["kitchen.md"]])
        again = await ingest(db, [paths["kitchen.md"]])

        source = paths["kitchen.md"].resolve().as_posix()
        assert (report.embedded, report.added, report.replaced) == ((source,), (), ())
        assert [row[0] for row in await vector_rows(db)] == [source]
        assert again.unchanged == (source,)
        assert (await ask(db, CROCKERY))[0].source == source


@pytest.mark.asyncio(loop_scope="session")
class TestIndexes:
    async def test_a_second_question_reads_no_vectors(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """The collection's vectors are read once and kept while it does not change."""
        await ingest(db, list(house(tmp_path).values()))
        before = vectors.indexes.loads

        await ask(db, CROCKERY)
        await ask(db, BIKE)

        assert vectors.indexes.loads == before + 1

    async def test_a_changed_collection_is_read_again(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A document stored anew changes the collection's version: its new vectors are used."""
        paths = house(tmp_path)
        await ingest(db, list(paths.values()))
        await ask(db, CROCKERY)
        before = vectors.indexes.loads
        write(
            tmp_path / "house",
            "garden.md",
            "# Garden\n\nThe hens lay their eggs in the "
            "wooden coop behind the shed; collect them at noon.\n",
        )
        await ingest(db, [paths["garden.md"]])

        found = await ask(db, "Where do the chickens nest?", top_k=1)

        assert vectors.indexes.loads == before + 1
        assert "hens" in found[0].text


class TestFuse:
    """How the two rankings become one (pure functions of `search`)."""

    def test_the_words_best_comes_first(self) -> None:
        """The exact match of the words leads, whatever the meaning ranks first."""
        assert search.fuse([1, 2, 3], [3, 4, 5])[:2] == [1, 3]

    def test_a_passage_ranked_well_both_ways_comes_first(self) -> None:
        """Found by both sides, a passage outranks the best of either side alone."""
        fusion = search.Fusion(words_first=0)
        assert search.fuse([1, 2, 3], [3, 4, 5], fusion)[0] == 3

    def test_a_passage_in_both_rankings_is_taken_once(self) -> None:
        """Each passage appears once, whichever sides found it."""
        assert sorted(search.fuse([1, 2], [2, 3, 1, 4])) == [1, 2, 3, 4]

    def test_when_one_ranking_is_empty_the_other_order_is_kept(self) -> None:
        """Without meaning candidates the words' order is kept, and the other way round."""
        assert search.fuse([3, 1, 2], []) == [3, 1, 2]
        assert search.fuse([], [3, 1, 2]) == [3, 1, 2]

    def test_the_heavier_side_wins_a_tie_of_ranks(self) -> None:
        """Two passages first on one side each: the weight decides which comes first."""
        words = search.Fusion(k=20, words=2, meaning=1, words_first=0)
        meaning = search.Fusion(k=20, words=1, meaning=2, words_first=0)
        assert search.fuse([1], [2], words) == [1, 2]
        assert search.fuse([1], [2], meaning) == [2, 1]

    def test_a_question_of_several_sentences_is_embedded_whole_and_by_sentence(self) -> None:
        """Each sentence of a two-part question gets a vector of its own, beside the whole."""
        two = "I run a program with a time limit. Which error tells me it ran over?"

        assert search.query_texts(two) == [
            two,
            "I run a program with a time limit.",
            "Which error tells me it ran over?",
        ]
        assert search.query_texts("What is json.dumps for?") == ["What is json.dumps for?"]

    def test_a_passage_counts_by_the_nearest_of_several_question_vectors(self) -> None:
        """With several question vectors, a passage near any one of them ranks by that one."""
        questions = np.zeros((2, embedding.DIMENSIONS), dtype=np.float32)
        questions[0, 0] = questions[1, 1] = 1.0
        rows = []
        for passage_id, axis in ((1, 0), (2, 1), (3, 2)):
            vector = np.zeros((1, embedding.DIMENSIONS), dtype=np.float32)
            vector[0, axis] = 1.0
            rows.append(dbdocuments.Vectors(passage_id, False, embedding.pack(vector)))

        found = vectors.Index.build(rows).nearest(
            questions, 10, private_penalty=0.0, min_similarity=0.5
        )

        assert sorted(found) == [1, 2]

    def test_a_private_passage_counts_less_and_a_far_one_not_at_all(self) -> None:
        """The private penalty reorders near ties; below the floor a passage is left out."""
        question = np.zeros(embedding.DIMENSIONS, dtype=np.float32)
        question[0] = 1.0

        def stored(passage_id: int, similarity: float, private: bool) -> dbdocuments.Vectors:
            vector = np.zeros((1, embedding.DIMENSIONS), dtype=np.float32)
            vector[0, 0], vector[0, 1] = similarity, np.sqrt(1 - similarity**2)
            return dbdocuments.Vectors(passage_id, private, embedding.pack(vector))

        rows = [stored(1, 0.62, True), stored(2, 0.60, False), stored(3, 0.10, False)]

        index = vectors.Index.build(rows)
        assert index.nearest(
            question,
            10,
            private_penalty=search.PRIVATE_PENALTY,
            min_similarity=search.MIN_SIMILARITY,
        ) == [2, 1]
