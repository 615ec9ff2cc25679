"""Retrieval latency by collection size: 5,000 passages, and ten times that.

    python bench/scale.py [--sizes 5000,50000] [--questions N]

Corpus: real source text, the `.py` files of this interpreter's standard library and then of
its site-packages, in sorted order, taken until the collection holds the size asked for;
split and stored by `add_documents` as `docs add` does, so BM25 works on real term
statistics. Vectors: random unit vectors (one per view, as many views as the real splitter
makes), because embedding 200,000 views would take hours on 2 cores and the time to rank
them does not depend on what they say (recall is bench/tokens.py's and bench/recall.py's).

For each size: `retrieve` at the shipped setting (top 16 within 4,800 tokens) for the
questions of bench/questions.py and bench/heldout.py, after one question that loads the
collection's vectors into the process's index (the cold start, reported apart); the median
and 90th percentile of the warm ones, the BM25 query alone, and how many times the vectors
were read from Postgres (1: not read again per question). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.db import documents as dbdocuments  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.retrieval import documents, embedding, search, vectors  # noqa: E402
from bench import heldout, questions  # noqa: E402
from tests.support import postgres  # noqa: E402

TENANT = "default"
TOP_K = 16
TOKEN_BUDGET = 4800


class RandomEncoder:
    """Unit vectors drawn from a generator seeded by each text: stable, and free."""

    def encode(self, texts: Sequence[str]) -> embedding.Vectors:
        out = np.empty((len(texts), embedding.DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vector = np.random.default_rng(seed).standard_normal(embedding.DIMENSIONS)
            out[row] = vector / np.linalg.norm(vector)
        return out


def source_files() -> list[Path]:
    """The .py files of the standard library, then of site-packages, sorted."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    site = Path(paths["purelib"])
    first = sorted(p for p in stdlib.rglob("*.py") if site not in p.parents)
    return first + sorted(site.rglob("*.py"))


def take(size: int) -> list[Path]:
    """Files whose passages add up to about `size`."""
    chosen: list[Path] = []
    total = 0
    for path in source_files():
        if "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text.encode()) > documents.MAX_FILE_BYTES or "\0" in text:
            continue
        total += len(documents.split(text, name=path.name, kind="python"))
        chosen.append(path)
        if total >= size:
            break
    return chosen


async def measure(pool: dbpool.Pool, collection: str, texts: Sequence[str]) -> dict[str, Any]:
    loads = vectors.indexes.loads
    started = time.perf_counter()
    await search.retrieve(
        pool,
        tenant_id=TENANT,
        collections=[collection],
        query=texts[0],
        top_k=TOP_K,
        token_budget=TOKEN_BUDGET,
    )
    cold = time.perf_counter() - started
    warm: list[float] = []
    words: list[float] = []
    for text in texts[1:]:
        started = time.perf_counter()
        await search.retrieve(
            pool,
            tenant_id=TENANT,
            collections=[collection],
            query=text,
            top_k=TOP_K,
            token_budget=TOKEN_BUDGET,
        )
        warm.append(time.perf_counter() - started)
        started = time.perf_counter()
        await dbdocuments.search_passages(
            pool,
            tenant_id=TENANT,
            collections=[collection],
            query=search.search_query(text),
            k1=search.K1,
            b=search.B,
            max_tokens=TOKEN_BUDGET,
            limit=TOP_K * search.CANDIDATES_PER_PASSAGE + search.EXTRA_CANDIDATES,
            title_weight=search.TITLE_WEIGHT,
            title_b=search.TITLE_B,
        )
        words.append(time.perf_counter() - started)
    ordered = sorted(warm)
    return {
        "cold_ms": round(cold * 1000, 1),
        "p50_ms": round(statistics.median(warm) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * len(ordered))] * 1000, 1),
        "bm25_p50_ms": round(statistics.median(words) * 1000, 1),
        "bm25_p90_ms": round(sorted(words)[int(0.9 * len(words))] * 1000, 1),
        "vector_reads": vectors.indexes.loads - loads,
        "questions": len(texts),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    texts = [q.text for q in questions.QUESTIONS] + [q.text for q in heldout.QUESTIONS]
    texts = texts[: args.questions]
    figures: dict[str, Any] = {}
    async with postgres.server() as server, postgres.fresh_database(server, "scale") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=2, max_size=8)
        try:
            await dbtenants.create_tenant(pool, tenant_id=TENANT, name=TENANT, actor="bench")
            for size in (int(s) for s in args.sizes.split(",")):
                collection = f"scale-{size}"
                files = take(size)
                started = time.perf_counter()
                report = await documents.add_documents(
                    pool,
                    tenant_id=TENANT,
                    collection=collection,
                    paths=files,
                    encoder=RandomEncoder(),
                )
                ingest_s = time.perf_counter() - started
                [stats] = [
                    c
                    for c in await dbdocuments.list_collections(pool, tenant_id=TENANT)
                    if c.collection == collection
                ]
                result = await measure(pool, collection, texts)
                result.update(
                    files=len(files),
                    passages=report.passages,
                    vectors=report.vectors,
                    tokens=stats.tokens,
                    ingest_s=round(ingest_s, 1),
                )
                figures[str(size)] = result
                print(
                    f"{report.passages:,} passages ({report.vectors:,} vectors, "
                    f"{stats.tokens:,} tokens, {len(files)} files, stored in {ingest_s:.0f} s): "
                    f"retrieve {result['p50_ms']} ms median, {result['p90_ms']} ms p90 over "
                    f"{len(texts) - 1} questions (BM25 alone {result['bm25_p50_ms']} / "
                    f"{result['bm25_p90_ms']} ms); first question {result['cold_ms']} ms "
                    f"(reads the vectors); vectors read {result['vector_reads']} time(s)",
                    flush=True,
                )
        finally:
            await pool.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
