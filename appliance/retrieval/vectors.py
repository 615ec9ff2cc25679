"""The meaning index: a collection's passage vectors as one matrix, kept in the process.

Ranking by meaning compares the question's vector with every view of every passage searched
(no pgvector here: see migration 0008). Reading those vectors from Postgres for each question
costs ~20 ms for a thousand passages and grows with the collection (tens of megabytes for
50,000 passages), so the matrix built from them is kept in memory, per tenant, collections and
model, and used again as long as the collections' versions (bumped by every change of their
passages, migration 0014) are the ones it was built at: a question then reads one small row
per collection instead of the vectors. A process holds at most `MAX_VECTORS` vectors in all
(float32: ~1.5 KB each), dropping the least recently used index first; a collection too large
for that is read for each question, as before.

`Index.nearest` ranks the passages by their best view, less `private_penalty` for a passage
whose definitions are all private, and leaves out those below `min_similarity`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.retrieval import embedding

MAX_VECTORS = 1_000_000

Key = tuple[str, tuple[str, ...], str]  # tenant, collections (sorted), model


@dataclasses.dataclass(frozen=True, slots=True)
class Index:
    """The vectors of a set of passages, and which rows belong to which passage."""

    passage_ids: npt.NDArray[np.int64]
    private: npt.NDArray[np.float32]  # 1.0 for a passage whose definitions are all private
    starts: npt.NDArray[np.intp]  # the first row of each passage in `matrix`
    matrix: embedding.Vectors

    @classmethod
    def build(cls, rows: Sequence[dbdocuments.Vectors]) -> Index:
        counts = [len(row.vectors) // (4 * embedding.DIMENSIONS) for row in rows]
        return cls(
            passage_ids=np.array([row.passage_id for row in rows], dtype=np.int64),
            private=np.array([row.private for row in rows], dtype=np.float32),
            starts=np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp),
            matrix=embedding.unpack(b"".join(row.vectors for row in rows)),
        )

    @property
    def size(self) -> int:
        return len(self.matrix)

    def nearest(
        self,
        question: embedding.Vectors,
        limit: int,
        *,
        private_penalty: float,
        min_similarity: float,
    ) -> list[int]:
        """The ids of the `limit` passages whose best view is nearest `question` (one vector,
        or several: then a view counts by the nearest of them), nearest first (a few
        milliseconds for thousands of passages, so it runs in the event loop)."""
        if not len(self.passage_ids):
            return []
        similarity = self.matrix @ question.T
        if similarity.ndim == 2:  # several question vectors: each passage by the nearest one
            similarity = similarity.max(axis=1)
        best = np.maximum.reduceat(similarity, self.starts)
        best -= private_penalty * self.private
        if limit < len(best):
            top = np.argpartition(-best, limit)[:limit]
            order = top[np.argsort(-best[top], kind="stable")]
        else:
            order = np.argsort(-best, kind="stable")
        return [int(self.passage_ids[i]) for i in order if best[i] >= min_similarity]


class Indexes:
    """The indexes a process keeps, by tenant, collections and model, at their versions."""

    def __init__(self, max_vectors: int = MAX_VECTORS) -> None:
        self.max_vectors = max_vectors
        self._kept: collections.OrderedDict[Key, tuple[dict[str, int], Index]] = (
            collections.OrderedDict()
        )
        self.loads = 0  # how many times vectors were read from Postgres (for the benchmarks)

    async def get(
        self, db: dbpool.Pool, *, tenant_id: str, collections: Sequence[str], model: str
    ) -> Index:
        """The index of a tenant's collections: kept, when their versions are unchanged, or
        read from Postgres (and kept when it fits)."""
        key: Key = (tenant_id, tuple(sorted(set(collections))), model)
        versions = await dbdocuments.get_collection_versions(
            db, tenant_id=tenant_id, collections=key[1]
        )
        kept = self._kept.get(key)
        if kept is not None and kept[0] == versions:
            self._kept.move_to_end(key)
            return kept[1]
        rows = await dbdocuments.list_passage_vectors(
            db, tenant_id=tenant_id, collections=key[1], model=model
        )
        self.loads += 1
        index = Index.build(rows)
        self._kept.pop(key, None)
        if index.size <= self.max_vectors:
            self._kept[key] = (versions, index)
            while sum(i.size for _, i in self._kept.values()) > self.max_vectors:
                self._kept.popitem(last=False)
        return index


# The process's indexes (one event loop per process: no lock needed).
indexes = Indexes()
