"""Recall of the retriever alone, fast: no model calls, no costs (those are bench/tokens.py's).

    python bench/recall.py [--sets first,code,prose] [--settings 16/4800,6/1800] [--words-only]
                           [--misses]

Ingests the corpora (bench/corpora.py; vectors from `.bench-cache/` after the first run) into
a fresh database and, for each question, retrieves at each setting (top_k/token_budget) and
checks that every fact of the answer is in the passages, as bench/tokens.py does. Prints
recall per corpus and setting, the context's tokens, and with --misses the questions missed at
the first setting. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.retrieval import search  # noqa: E402
from bench import corpora  # noqa: E402
from tests.support import postgres  # noqa: E402

TENANT = "default"


def parse_settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        top_k, budget = item.split("/")
        out.append((int(top_k), int(budget)))
    return out


def parse_fusion(text: str) -> search.Fusion:
    """`k:words:meaning[:words_first]` as a Fusion."""
    k, words, meaning, *first = text.split(":")
    return search.Fusion(
        k=float(k),
        words=float(words),
        meaning=float(meaning),
        words_first=int(first[0]) if first else search.FUSION.words_first,
    )


async def evaluate(
    pool: dbpool.Pool,
    corpus: corpora.Corpus,
    top_k: int,
    budget: int,
    *,
    fusion: search.Fusion,
    words_only: bool,
) -> tuple[list[bool], list[int], list[float], list[str]]:
    """For each question: found, the context's tokens, seconds; and the misses."""
    hits: list[bool] = []
    tokens: list[int] = []
    seconds: list[float] = []
    misses: list[str] = []
    for case in corpus.cases:
        started = time.perf_counter()
        found = await search.retrieve(
            pool,
            tenant_id=TENANT,
            collections=[corpus.collection],
            query=case.text,
            top_k=top_k,
            token_budget=budget,
            words_only=words_only,
            fusion=fusion,
        )
        seconds.append(time.perf_counter() - started)
        passages = [
            {"source": p.source, "line_start": p.line_start, "line_end": p.line_end} for p in found
        ]
        hit = corpora.answered(passages, case)
        hits.append(hit)
        tokens.append(sum(search.cost_of(p) for p in found))
        if not hit:
            misses.append(f"  missed: {case.label}: {case.text}")
    return hits, tokens, seconds, misses


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sets", default="first,code,prose")
    parser.add_argument("--settings", default="16/4800,6/1800,10/3000,20/6000")
    parser.add_argument("--words-only", action="store_true", help="BM25 alone")
    parser.add_argument(
        "--fusions",
        default="",
        help="k:words:meaning:words_first,... fusions to compare (default: the shipped one)",
    )
    parser.add_argument("--ingest-only", action="store_true", help="fill the vector cache")
    parser.add_argument("--misses", action="store_true")
    args = parser.parse_args()
    wanted = args.sets.split(",")
    chosen: list[corpora.Corpus] = []
    if "first" in wanted:
        chosen.append(corpora.first_set())
    if "code" in wanted or "prose" in wanted:
        code, prose = corpora.heldout_sets()
        chosen.extend(c for c, key in ((code, "code"), (prose, "prose")) if key in wanted)
    settings = parse_settings(args.settings)
    fusions = [parse_fusion(item) for item in args.fusions.split(",") if item] or [search.FUSION]
    encoder = None if args.words_only else corpora.cached_encoder()
    figures: dict[str, Any] = {}
    async with postgres.server() as server, postgres.fresh_database(server, "recall") as dsn:
        pool = await dbpool.create_pool(dsn, min_size=2, max_size=8)
        try:
            await dbtenants.create_tenant(pool, tenant_id=TENANT, name=TENANT, actor="bench")
            for corpus in chosen:
                started = time.perf_counter()
                report = await corpora.ingest(pool, corpus, tenant_id=TENANT, encoder=encoder)
                print(
                    f"{corpus.name}: {len(report.added)} files, {report.passages} passages, "
                    f"{report.vectors} vectors ({encoder.encoded if encoder else 0} embedded "
                    f"so far) in {time.perf_counter() - started:.1f} s",
                    flush=True,
                )
            for corpus, fusion in itertools.product([] if args.ingest_only else chosen, fusions):
                rows = {}
                for top_k, budget in settings:
                    hits, tokens, seconds, misses = await evaluate(
                        pool, corpus, top_k, budget, fusion=fusion, words_only=args.words_only
                    )
                    recall = sum(hits) / len(hits)
                    name = f"{fusion.k:g}:{fusion.words:g}:{fusion.meaning:g}:{fusion.words_first}"
                    rows[f"{name} {top_k}/{budget}"] = {
                        "recall": round(recall, 4),
                        "context_tokens": round(statistics.fmean(tokens), 1),
                        "ms_p50": round(statistics.median(seconds) * 1000, 1),
                    }
                    print(
                        f"{corpus.name} ({len(corpus.cases)} questions) fusion {fusion.k:g}:"
                        f"{fusion.words:g}:{fusion.meaning:g}:{fusion.words_first} top {top_k} / "
                        f"{budget}: "
                        f"recall {recall:.3f}, context {statistics.fmean(tokens):,.0f} tokens, "
                        f"{statistics.median(seconds) * 1000:.0f} ms median",
                        flush=True,
                    )
                    if args.misses and (top_k, budget) == settings[0]:
                        print("\n".join(misses))
                figures.setdefault(corpus.name, {}).update(rows)
        finally:
            await pool.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
