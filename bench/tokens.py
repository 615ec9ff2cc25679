"""Token benchmark: the model bill of the appliance's agent loop against a naive prompt, on
the first set (tuned on) and the held-out set (never tuned on), side by side.

    python bench/tokens.py [--tasks N] [--sets first,code,prose] [--no-tradeoff]

Corpora and questions (`bench/corpora.py`): the first set, 41 modules of this interpreter's
standard library with the 130 questions of `bench/questions.py`, on which the retriever's
settings were chosen; the held-out set of `bench/heldout.py`, written before it was measured
and never tuned on: 25 other standard-library modules (52 questions) and prose in four
formats (44 questions). Each corpus is one collection, ingested with `add_documents`: split
into passages, each passage's views embedded with all-MiniLM-L6-v2 (run in numpy; the vectors
are kept in `.bench-cache/` between runs) and stored in Postgres. Model: the local Messages
API stand-in (`tests/support/messages_api.py`: prefix caching, per-model minimums,
deterministic token counts), reached through the real SDK; every call gets the same scripted
answer, so output tokens are equal on both sides. Prices: the published table seeded by the
migrations (`costs.price_of`).

(b) the appliance: each question is an `agent.run` task run by a Worker, one after another
    (steady traffic, warm cache): surgical retrieval within a token budget (BM25 in SQL and
    similarity of meaning to the passages' vectors, fused, `appliance.retrieval.search`), the
    stable prefix (preamble and persona) marked for caching. Cost per task from the ledger.
(a) naive: the same persona and question, with the whole text of the 3 files that rank best
    for the question (the product's retrieval ranking over passages, expanded to their files),
    no cache_control markers; one raw SDK call per question, priced from its usage.

Recall: (b) the task's checkpointed `retrieve` step holds, for every fact of the answer, a
passage of its file whose line range holds it (a definition's `def`/`class` line, or the line
where a phrase of the prose starts); (a) the answer's files are among the 3.

BM25 alone: `retrieve` by words only at (b)'s setting, its recall, and its cost per task: the
run's, with the context's tokens (as the stand-in counts them) in place of (b)'s.

Trade-off: (b) again at other retrieval settings (`TRADEOFF`, new versions of the agent with
the same persona, so the cache stays warm), to show what recall costs.

The cheapest context: where whole-collection caching beats retrieval (`agents.context_choice`)
for (b)'s budget and model, by call rate, and what each corpus would get.

Retrieval latency: `retrieve` timed alone for every question at (b)'s settings.

Uses DATABASE_URL, else the server on localhost:5432, else a throwaway cluster; creates a fresh
database for the run and drops it after. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import settings  # noqa: E402
from appliance.agents import (  # noqa: E402
    client,
    context_choice,
    costs,
    definitions,
    loop,
    prompt,
)
from appliance.db import documents as dbdocuments  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tasks as dbtasks  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.engine import registry, submission, worker  # noqa: E402
from appliance.retrieval import search  # noqa: E402
from bench import corpora  # noqa: E402
from tests.support import messages_api, postgres  # noqa: E402

MODEL = "claude-sonnet-4-6"
TENANT = "default"
MAX_TOKENS = 300
# Recall >= 0.95 needs about 16 passages (~300 tokens each) with lexical and meaning-based
# retrieval fused; BM25 alone reached 0.65 at 6 / 1,800 (the first issue's setting).
TOP_K = 16
TOKEN_BUDGET = 4800
# Other retrieval settings measured the same way after the main run: what recall costs.
TRADEOFF = ((6, 1800), (10, 3000), (20, 6000))
NAIVE_DOCUMENTS = 3
# Passages ranked per question when expanding to whole files (naive): enough to find 3 files.
NAIVE_CANDIDATES = 200
# Call rates (per hour) at which the crossover of the cheapest context is shown.
RATES = (2, 6, 12, 60, 600)

# The same answer to every call of both approaches (about 150 tokens), so output is equal.
ANSWER = (
    "Use the function named in the passage above: it takes the value you already have and "
    "returns the result directly, without any extra setup. Call it with your data as the first "
    "argument; the optional keyword arguments control the details described in its docstring, "
    "and the defaults are right for most cases. It raises an exception only when the input is "
    "malformed, so wrap the call in try/except if the data comes from users. It has been in the "
    "standard library for many releases, so no third-party package is needed. See the cited "
    "source lines for the exact signature, and test it on a small sample first to check the "
    "output matches what you expect."
)

PERSONA = """\
# Role

You are Ada, a senior support engineer on the internal developer-help desk of a mid-sized \
software company. Developers from every product team write to the desk when they are stuck \
on something in Python's standard library: which module to use, how a function behaves, why \
their code does not do what they expected, or whether a third-party package is really needed. \
Your job is to give each of them a correct, short, practical answer that they can use right \
away, grounded in the source passages of the standard library that are given to you with \
each question.

You are not a general chatbot. You answer questions about the Python standard library and \
how to apply it to everyday engineering work: files and paths, text processing, data \
formats, dates and times, numbers and statistics, concurrency primitives, logging, command \
line tools, networking helpers, and testing. Questions outside that scope are handled as \
described under "Scope and escalation" below.

# Who writes to you

Most people who write to the desk are working developers. Some are new graduates in their \
first month; some have twenty years of experience in another language and are new to Python; \
a few are data analysts who write scripts but do not think of themselves as programmers. \
Assume competence and goodwill. Do not lecture. Do not pad the answer with encouragement or \
praise of the question. People write to the desk in the middle of their work, and the most \
helpful thing you can do is to save them time.

# How to answer

1. Read the question and decide what the person is actually trying to do. Answer that, even \
when the wording points at something slightly different. If they ask how to do something \
with one module but another module in the standard library does it directly, say so in the \
first sentence.

2. Work from the passages. Each passage cites its source file and line range. Base your \
answer on what the passages show: the function's name, its signature, its documented \
behaviour, and the edge cases its docstring or code mentions. When a passage shows that \
behaviour depends on a parameter, name the parameter and its default.

3. Cite your sources. After the answer, list the passages you relied on as \
"source: <file>:<lines>". Cite only passages you actually used. Never invent a file name, \
a line range, a function, or a parameter that is not in the passages.

4. If the passages do not contain the answer, say so plainly in one sentence, then give the \
answer you are confident of from general knowledge of the standard library, clearly marked \
as "not from the provided sources". Do not guess at details such as default values, \
exception types, or version numbers when they are not in front of you; tell the person to \
check the documentation of their Python version instead.

5. Prefer the simplest correct solution. A one-line call to a standard library function is \
better than a hand-written loop. A hand-written loop is better than a third-party \
dependency. Mention a third-party package only when the standard library genuinely cannot do \
the job, and then name it without recommending a version.

6. Show a short example whenever code helps. Examples must be complete enough to run when \
pasted into a Python 3 interpreter, use realistic but made-up values, and avoid printing \
secrets, real host names, or personal data. Keep examples under fifteen lines.

7. Point out the one pitfall that matters. Many standard library functions have a trap that \
catches people: a mutable default, a platform difference, a locale dependency, a function \
that modifies its argument in place and returns None, a parameter whose default changed \
between versions. If the passages show such a trap for the function you recommend, mention \
it in one sentence. Do not list every possible caveat.

# Style guide

- Lead with the answer. The first sentence names the function, class, or method to use and \
what it does for the person's case. Background comes after, if at all.
- Keep answers short. Most answers should be three to eight sentences plus an optional \
example. Long answers are only justified when the person asked for a comparison or an \
explanation of behaviour.
- Write in plain, neutral English. Use the second person ("you can call ..."). Avoid slang, \
jokes, emoji, and exclamation marks. Avoid filler such as "great question", "I hope this \
helps", "feel free to ask", and "as an AI".
- Use the exact names from the source: module, function, class, method, and parameter names \
are written in backticks, with the module prefix the first time they appear, for example \
`shutil.copytree`. Do not rename parameters or invent aliases.
- Use code blocks for anything longer than one expression. Mark code blocks with the \
language (python or console).
- Use numbered lists only for steps that must happen in order; use bullets for options.
- When you compare two functions, say in one sentence when to use each, then stop.
- When behaviour differs between operating systems, say which behaviour applies where.
- Do not restate the question. Do not summarise your own answer at the end.
- Numbers: write units, and use the same units as the source (bytes, seconds, characters).
- Dates in examples use the ISO 8601 format.

# Accuracy rules

- Never claim that a function exists unless it appears in the passages or you are certain it \
is part of the standard library of all supported Python 3 versions.
- Never present a private name (one starting with an underscore) as something to call \
directly; if the passages show only a private helper, explain the public function that uses \
it instead.
- Distinguish clearly between what a function guarantees and what it happens to do in the \
current implementation. Only documented behaviour is a guarantee.
- When a function's result depends on the platform (paths, line endings, file permissions, \
terminal size, temporary directories, locale), say so.
- When the person's code contains a bug, point to the line or the call that is wrong and \
explain the fix; do not rewrite their whole program.
- Security matters more than convenience. Never recommend `random` for tokens, passwords, or \
keys; never recommend building shell commands by string concatenation; never recommend \
disabling certificate verification; never recommend `pickle` or `eval` for data that comes \
from outside the process. If the person's approach is unsafe, say so first and give the \
safe alternative.
- Respect resource limits: warn when a suggested call loads a whole file into memory and the \
person mentions large files, or when a recursive operation may follow symbolic links.

# Scope and escalation

Answer directly when the question is about the standard library or about using it in the \
person's own code.

Hand the question to a human colleague, by ending your answer with the line \
"ESCALATE: <team> - <one-line reason>", in these cases:

- Production incidents: the person reports that a service is down, data is being lost, or \
customers are affected. Give any immediate, safe advice you can in two sentences, then \
escalate to the on-call team ("ESCALATE: on-call - ...").
- Security: the question involves a suspected vulnerability, leaked credentials, a request to \
bypass an access control, or handling of personal data. Do not include any secret in your \
answer. Escalate to the security team ("ESCALATE: security - ...").
- Licensing and legal: questions about whether code or data may be copied, redistributed, or \
used commercially. Escalate to the legal team ("ESCALATE: legal - ...").
- Company infrastructure: questions about internal build systems, deployment pipelines, \
internal package mirrors, or access to internal services. You have no knowledge of these; \
escalate to the platform team ("ESCALATE: platform - ...").
- Repeated failure: the person says that your earlier answer did not work and the passages \
do not explain why. Do not guess a second time; escalate to the developer-experience team \
("ESCALATE: devex - ...").

Do not escalate questions you can answer. An escalation costs a colleague's time, and the \
person waits longer for an answer.

# Questions about third-party packages

When a question is about a third-party package rather than the standard library, say in one \
sentence that the desk covers the standard library, then answer only if the standard library \
offers an equivalent, naming it. Do not explain the third-party package's API from memory.

# Questions about Python versions

The company supports the Python versions that are still receiving security fixes from the \
Python project. When the passages show a parameter or function that may not exist in older \
versions, and the person mentions an older version, tell them to check the "Changed in \
version" notes of the documentation for their version. Do not state a version number that \
is not in the passages.

# Conversations

Each question arrives on its own, with the passages retrieved for it. You do not see earlier \
questions from the same person, and you must not refer to them. If a question depends on \
context you do not have ("the error from before", "my script"), answer what can be answered \
and say in one sentence what information would let you answer the rest.

# Tone in difficult situations

If a person is frustrated or writes rudely, stay calm and factual, answer the technical \
question, and do not comment on their tone. If a person asks you to do their whole \
assignment, for example to write a complete program, give them the key standard library \
calls with a short example and explain how they fit together; do not write the whole \
program. If a person asks for your opinion on a design choice, give a short recommendation \
with the reason, grounded in how the standard library behaves.

# Output format

Plain text with Markdown code blocks. Structure every answer as:

1. The answer, in one to three sentences, naming the function or class to use.
2. An optional example in a code block.
3. An optional pitfall, in one sentence starting with "Watch out:".
4. The sources, one per line, as "source: <file>:<lines>".
5. An optional escalation line, as described above.

Do not add headings to answers. Do not sign your answers. Do not include the passages \
themselves in the answer; people can open the cited lines.

# Examples of good first sentences

- "Use `shlex.split`: it splits a command line the way a POSIX shell does, honouring quotes \
and backslash escapes."
- "Call `pathlib.Path.mkdir` with `parents=True, exist_ok=True`; it creates missing parent \
directories and does nothing if the directory already exists."
- "`collections.deque` with `maxlen` keeps only the newest items, dropping the oldest ones \
from the other end as you append."

# Examples of answers to avoid

- Answers that open with "Sure!" or "Certainly," or that thank the person for asking.
- Answers that explain the history of a module before saying which function to use.
- Answers that list five alternatives when one is clearly right.
- Answers that paste a long passage back to the person instead of explaining it.
- Answers that cite a line range that was not given to you.
"""


def agent_name(corpus: corpora.Corpus) -> str:
    return f"help-{corpus.collection}"


async def define_agent(
    pool: dbpool.Pool, corpus: corpora.Corpus, top_k: int, token_budget: int
) -> None:
    definition = definitions.Definition(
        name=agent_name(corpus),
        persona=PERSONA,
        model=MODEL,
        tools=(),
        max_tokens=MAX_TOKENS,
        max_turns=1,
        retrieval=definitions.Retrieval(
            collections=(corpus.collection,),
            top_k=top_k,
            token_budget=token_budget,
            context="retrieval",  # measured here; the whole collection is priced apart
        ),
    )
    await definitions.apply(pool, definition, tenant_id=TENANT, actor="bench")


def system_blocks() -> list[dict[str, Any]]:
    """The appliance's system prompt without its cache marker: the naive side sends the same."""
    return [{"type": "text", "text": prompt.PREAMBLE}, {"type": "text", "text": PERSONA}]


# --- (b) the appliance ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceRun:
    usd: list[Decimal]
    uncached_input: list[int]
    cache_write: list[int]
    cache_read: list[int]
    output: list[int]
    context_tokens: list[int]
    context_estimate: list[int]
    hits: list[bool]
    misses: list[str]
    seconds: float


async def run_tasks(
    pool: dbpool.Pool,
    dsn: str,
    api: messages_api.Server,
    agent: str,
    cases: Sequence[corpora.Case],
) -> list[int]:
    """Each question as an agent.run task through a Worker, one after another; the task ids."""
    config = settings.ModelSettings.model_validate(
        {"api_key": api.api_key, "base_url": api.base_url, "max_retries": 2}
    )
    model = client.ModelClient(config)
    runtime = loop.Runtime(pool, model, config)
    engine = settings.EngineSettings(node_name="bench-tokens", concurrency=1, max_attempts=1)
    loop_ = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[str]] = {}

    def on_finished(task_id: int, outcome: str) -> None:
        future = waiting.setdefault(task_id, loop_.create_future())
        if not future.done():
            future.set_result(outcome)

    work = worker.Worker(
        pool,
        dsn,
        engine,
        registry.registry,
        on_finished=on_finished,
        services={loop.SERVICE: runtime},
    )
    runner = asyncio.create_task(work.run())
    await work.started.wait()
    task_ids: list[int] = []
    try:
        for case in cases:
            api.script(messages_api.TextReply(ANSWER))
            sub = await submission.submit(
                pool,
                registry.registry,
                engine,
                tenant_id=TENANT,
                workflow=loop.WORKFLOW,
                task_input={"agent": agent, "prompt": case.text},
                actor="bench",
            )
            outcome = await waiting.setdefault(sub.task_id, loop_.create_future())
            if outcome != "succeeded":
                task = await dbtasks.get_task(pool, sub.task_id)
                raise SystemExit(f"task {sub.task_id} {outcome}: {task and task.error}")
            task_ids.append(sub.task_id)
    finally:
        await work.stop()
        await runner
        await model.close()
    return task_ids


async def run_appliance(
    pool: dbpool.Pool,
    dsn: str,
    api: messages_api.Server,
    corpus: corpora.Corpus,
    cases: Sequence[corpora.Case],
) -> ApplianceRun:
    """The agent's tasks for `cases`, their cost from the ledger and their recall."""
    first_request = len(api.requests_to("/v1/messages"))
    started = time.perf_counter()
    task_ids = await run_tasks(pool, dsn, api, agent_name(corpus), cases)
    elapsed = time.perf_counter() - started
    rows = {row.task_id: row for row in await costs.cost_report(pool, by="task")}
    requests = api.requests_to("/v1/messages")[first_request:]
    if len(requests) != len(task_ids):
        raise SystemExit(f"{len(requests)} model calls for {len(task_ids)} tasks")
    hits: list[bool] = []
    misses: list[str] = []
    context_tokens: list[int] = []
    context_estimate: list[int] = []
    for task_id, case, request in zip(task_ids, cases, requests, strict=True):
        steps = {step.name: step.output for step in await dbtasks.list_steps(pool, task_id)}
        passages: list[dict[str, Any]] = steps["retrieve"]["passages"]
        hit = corpora.answered(passages, case)
        hits.append(hit)
        if not hit:
            misses.append(f"  missed: {case.label}: {case.text}")
        context_estimate.append(sum(search.cost_of(search.Passage(**p)) for p in passages))
        blocks = request.body["messages"][0]["content"]
        context_tokens.append(messages_api.tokens_of(blocks[0]) if len(blocks) > 1 else 0)
    chosen = [rows[task_id] for task_id in task_ids]
    return ApplianceRun(
        usd=[row.cost_usd for row in chosen],
        uncached_input=[row.input_tokens for row in chosen],
        cache_write=[row.cache_creation_input_tokens for row in chosen],
        cache_read=[row.cache_read_input_tokens for row in chosen],
        output=[row.output_tokens for row in chosen],
        context_tokens=context_tokens,
        context_estimate=context_estimate,
        hits=hits,
        misses=misses,
        seconds=elapsed,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class WordsOnly:
    hits: list[bool]
    usd: list[Decimal]


async def words_only(
    pool: dbpool.Pool, corpus: corpora.Corpus, cases: Sequence[corpora.Case], run: ApplianceRun
) -> WordsOnly:
    """BM25 alone at the run's setting: its recall, and the run's cost per task with this
    context's tokens (as the stand-in counts them) in place of the run's."""
    prices = await costs.price_of(pool, MODEL)
    hits: list[bool] = []
    usd: list[Decimal] = []
    for index, case in enumerate(cases):
        found = await search.retrieve(
            pool,
            tenant_id=TENANT,
            collections=[corpus.collection],
            query=case.text,
            top_k=TOP_K,
            token_budget=TOKEN_BUDGET,
            words_only=True,
        )
        passages = [dataclasses.asdict(passage) for passage in found]
        hits.append(corpora.answered(passages, case))
        tokens = messages_api.tokens_of({"type": "text", "text": search.render_context(passages)})
        extra = (tokens - run.context_tokens[index]) * prices.input / Decimal(1_000_000)
        usd.append(run.usd[index] + extra)
    return WordsOnly(hits, usd)


# --- (a) naive --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NaiveRun:
    usd: list[Decimal]
    input: list[int]
    cache: list[int]
    output: list[int]
    hits: list[bool]
    seconds: float


async def top_files(pool: dbpool.Pool, collection: str, query: str, count: int) -> list[str]:
    """The `count` files whose passages rank best for `query` (the product's retrieval)."""
    found = await search.retrieve(
        pool,
        tenant_id=TENANT,
        collections=[collection],
        query=query,
        top_k=NAIVE_CANDIDATES,
        token_budget=10**9,
    )
    return list(dict.fromkeys(passage.source for passage in found))[:count]


async def retrieval_latency(
    pool: dbpool.Pool, corpus: corpora.Corpus, cases: Sequence[corpora.Case]
) -> list[float]:
    """Seconds `retrieve` takes for each question at the appliance's settings."""
    seconds = []
    for case in cases:
        started = time.perf_counter()
        await search.retrieve(
            pool,
            tenant_id=TENANT,
            collections=[corpus.collection],
            query=case.text,
            top_k=TOP_K,
            token_budget=TOKEN_BUDGET,
        )
        seconds.append(time.perf_counter() - started)
    return seconds


async def run_naive(
    pool: dbpool.Pool,
    api: messages_api.Server,
    corpus: corpora.Corpus,
    cases: Sequence[corpora.Case],
) -> NaiveRun:
    """Each question with the whole text of its top files, no cache markers, one raw call."""
    prices = await costs.price_of(pool, MODEL)
    sdk = anthropic.AsyncAnthropic(api_key=api.api_key, base_url=api.base_url, max_retries=2)
    texts: dict[str, str] = {}
    run = NaiveRun([], [], [], [], [], 0.0)
    started = time.perf_counter()
    try:
        for case in cases:
            files = await top_files(pool, corpus.collection, case.text, NAIVE_DOCUMENTS)
            for source in files:
                if source not in texts:
                    texts[source] = Path(source).read_text(encoding="utf-8")
            context = "\n\n".join(f"[source: {source}]\n{texts[source]}" for source in files)
            api.script(messages_api.TextReply(ANSWER))
            message = await sdk.messages.create(
                model=MODEL,
                max_tokens=MAX_TOKENS,
                system=[{"type": "text", "text": block["text"]} for block in system_blocks()],
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": context},
                            {"type": "text", "text": case.text},
                        ],
                    }
                ],
            )
            usage = costs.Usage.from_api(message.usage)
            cost, _ = costs.price_call(prices, usage)
            run.usd.append(cost)
            run.input.append(usage.input_tokens)
            run.cache.append(usage.cache_creation_input_tokens + usage.cache_read_input_tokens)
            run.output.append(usage.output_tokens)
            run.hits.append(all(fact.source in files for fact in case.facts))
    finally:
        await sdk.close()
    return dataclasses.replace(run, seconds=time.perf_counter() - started)


# --- the run ----------------------------------------------------------------------------------


def mean(values: Sequence[int | Decimal]) -> float:
    return float(statistics.fmean(float(v) for v in values)) if values else 0.0


def share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclasses.dataclass(slots=True)
class Result:
    """Every figure of one corpus."""

    corpus: corpora.Corpus
    tasks: int
    collection: dbdocuments.Collection
    files: int
    vectors: int
    ingest_s: float
    latency: list[float]
    naive: NaiveRun
    appliance: ApplianceRun
    words: WordsOnly
    tradeoff: list[tuple[int, int, ApplianceRun]]

    def reduction(self, usd: Sequence[Decimal]) -> float:
        naive = mean(self.naive.usd)
        return 1 - mean(usd) / naive if naive else 0.0

    def figures(self) -> dict[str, Any]:
        run = self.appliance
        return {
            "tasks": self.tasks,
            "tuned_on": self.corpus.tuned,
            "corpus_files": self.files,
            "corpus_passages": self.collection.passages,
            "corpus_tokens": self.collection.tokens,
            "corpus_vectors": self.vectors,
            "ingest_seconds": round(self.ingest_s, 1),
            "naive_usd_per_task": round(mean(self.naive.usd), 6),
            "naive_recall": round(share(self.naive.hits), 4),
            "avg_input_tokens_naive": round(
                mean([i + c for i, c in zip(self.naive.input, self.naive.cache, strict=True)]),
                1,
            ),
            "appliance_usd_per_task": round(mean(run.usd), 6),
            "reduction": round(self.reduction(run.usd), 4),
            "recall": round(share(run.hits), 4),
            "avg_uncached_input_tokens_appliance": round(mean(run.uncached_input), 1),
            "avg_context_tokens_appliance": round(mean(run.context_tokens), 1),
            "cache_read_tokens_per_task": round(mean(run.cache_read), 1),
            "bm25_only_recall": round(share(self.words.hits), 4),
            "bm25_only_reduction": round(self.reduction(self.words.usd), 4),
            "retrieval_ms_p50": round(statistics.median(self.latency) * 1000, 1),
            "retrieval_ms_p90": round(quantile(self.latency, 0.9) * 1000, 1),
            "tradeoff": [
                {
                    "top_k": top_k,
                    "token_budget": budget,
                    "recall": round(share(other.hits), 4),
                    "reduction": round(self.reduction(other.usd), 4),
                    "avg_context_tokens": round(mean(other.context_tokens), 1),
                }
                for top_k, budget, other in self.tradeoff
            ],
        }


async def measure(
    pool: dbpool.Pool,
    dsn: str,
    api: messages_api.Server,
    corpus: corpora.Corpus,
    *,
    tasks: int | None,
    encoder: corpora.CachedEncoder | None,
    tradeoff: bool,
) -> Result:
    cases = corpus.cases[:tasks]
    started = time.perf_counter()
    report = await corpora.ingest(pool, corpus, tenant_id=TENANT, encoder=encoder)
    ingest_s = time.perf_counter() - started
    [collection] = [
        c
        for c in await dbdocuments.list_collections(pool, tenant_id=TENANT)
        if c.collection == corpus.collection
    ]
    print(
        f"{corpus.name}: {len(report.added)} files, {report.passages} passages, "
        f"{collection.tokens:,} tokens, {report.vectors:,} vectors of "
        f"{report.model or 'no embedding model (words only)'}; stored in {ingest_s:.1f} s",
        flush=True,
    )
    latency = await retrieval_latency(pool, corpus, cases)
    await define_agent(pool, corpus, TOP_K, TOKEN_BUDGET)
    naive = await run_naive(pool, api, corpus, cases)
    appliance = await run_appliance(pool, dsn, api, corpus, cases)
    words = await words_only(pool, corpus, cases, appliance)
    points: list[tuple[int, int, ApplianceRun]] = []
    for top_k, budget in TRADEOFF if tradeoff else ():
        await define_agent(pool, corpus, top_k, budget)
        points.append((top_k, budget, await run_appliance(pool, dsn, api, corpus, cases)))
    result = Result(
        corpus,
        len(cases),
        collection,
        len(report.added),
        report.vectors,
        ingest_s,
        latency,
        naive,
        appliance,
        words,
        points,
    )
    for line in appliance.misses:
        print(line)
    return result


def table(results: Sequence[Result]) -> list[str]:
    """The figures of every corpus side by side."""

    def row(name: str, cells: Sequence[str]) -> str:
        return f"{name:<44}" + "".join(f"{cell:>20}" for cell in cells)

    lines = [row("", [f"{r.corpus.name}{' (tuned)' if r.corpus.tuned else ''}" for r in results])]
    lines.append(row("questions", [str(r.tasks) for r in results]))
    lines.append(
        row(
            "corpus passages / tokens",
            [f"{r.collection.passages} / {r.collection.tokens:,}" for r in results],
        )
    )
    lines.append(
        row(
            "naive $/task (input tokens/call)",
            [
                f"{mean(r.naive.usd):.4f} ({r.figures()['avg_input_tokens_naive']:,.0f})"
                for r in results
            ],
        )
    )
    lines.append(
        row(
            "naive recall (answer files among the 3)",
            [f"{share(r.naive.hits):.3f}" for r in results],
        )
    )
    lines.append(
        row(
            f"appliance $/task, top {TOP_K} / {TOKEN_BUDGET:,}",
            [f"{mean(r.appliance.usd):.4f}" for r in results],
        )
    )
    lines.append(
        row(
            f"recall / reduction, top {TOP_K} / {TOKEN_BUDGET:,}",
            [
                f"{share(r.appliance.hits):.3f} / {r.reduction(r.appliance.usd):.1%}"
                for r in results
            ],
        )
    )
    for index, (top_k, budget) in enumerate(TRADEOFF):
        if all(len(r.tradeoff) > index for r in results):
            lines.append(
                row(
                    f"recall / reduction, top {top_k} / {budget:,}",
                    [
                        f"{share(r.tradeoff[index][2].hits):.3f} / "
                        f"{r.reduction(r.tradeoff[index][2].usd):.1%}"
                        for r in results
                    ],
                )
            )
    lines.append(
        row(
            f"BM25 alone, top {TOP_K} / {TOKEN_BUDGET:,}",
            [f"{share(r.words.hits):.3f} / {r.reduction(r.words.usd):.1%}" for r in results],
        )
    )
    lines.append(
        row(
            "retrieval ms median / p90",
            [
                f"{statistics.median(r.latency) * 1000:.0f} / {quantile(r.latency, 0.9) * 1000:.0f}"
                for r in results
            ],
        )
    )
    return lines


async def crossover(pool: dbpool.Pool, results: Sequence[Result]) -> dict[str, Any]:
    """Where the whole collection in the cache beats retrieval at (b)'s budget, by call rate,
    and what each corpus would get at those rates."""
    prices = await costs.price_of(pool, MODEL)
    rates: dict[str, Any] = {}
    for rate in RATES:
        tokens = context_choice.crossover_tokens(
            prices=prices, budget_tokens=TOKEN_BUDGET, calls_per_hour=rate, ttl="5m"
        )
        chosen = {}
        for result in results:
            size = result.collection.tokens + context_choice.HEADER_TOKENS * (
                result.collection.passages
            )
            choice = context_choice.choose(
                prices=prices,
                collection_tokens=size,
                budget_tokens=TOKEN_BUDGET,
                calls_per_hour=rate,
                ttl="5m",
                cacheable=True,
            )
            chosen[result.corpus.name] = choice.mode
        rates[str(rate)] = {"crossover_tokens": tokens, "choice": chosen}
        print(
            f"cheapest context at {rate} calls/hour ({MODEL}, 5m cache, budget "
            f"{TOKEN_BUDGET:,}): the whole collection below {tokens:,} tokens; "
            + ", ".join(f"{name}: {mode}" for name, mode in chosen.items())
        )
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="questions per corpus")
    parser.add_argument("--sets", default="first,code,prose")
    parser.add_argument(
        "--no-tradeoff", action="store_true", help="skip the runs at other retrieval settings"
    )
    args = parser.parse_args()
    wanted = args.sets.split(",")
    chosen: list[corpora.Corpus] = []
    if "first" in wanted:
        chosen.append(corpora.first_set())
    if "code" in wanted or "prose" in wanted:
        code, prose = corpora.heldout_sets()
        chosen.extend(c for c, key in ((code, "code"), (prose, "prose")) if key in wanted)
    encoder = corpora.cached_encoder()
    results: list[Result] = []
    async with (
        postgres.server() as server,
        postgres.fresh_database(server, "tokens") as dsn,
        messages_api.running_server() as api,
    ):
        pool = await dbpool.create_pool(dsn, min_size=2, max_size=8)
        try:
            await dbtenants.create_tenant(pool, tenant_id=TENANT, name=TENANT, actor="bench")
            prefix = prompt.estimate_tokens(prompt.PREAMBLE) + prompt.estimate_tokens(PERSONA)
            print(
                f"agent: {MODEL}, stable prefix ~{prefix:,} tokens (minimum cacheable "
                f"{prompt.min_cacheable(MODEL):,}), max_tokens {MAX_TOKENS}, retrieval "
                f"top_k {TOP_K} within {TOKEN_BUDGET} tokens, fusion {search.FUSION}",
                flush=True,
            )
            for corpus in chosen:
                result = await measure(
                    pool,
                    dsn,
                    api,
                    corpus,
                    tasks=args.tasks,
                    encoder=encoder,
                    tradeoff=not args.no_tradeoff,
                )
                results.append(result)
            rates = await crossover(pool, results)
        finally:
            await pool.close()
    print("\n".join(table(results)))
    figures = {
        "model": MODEL,
        "top_k": TOP_K,
        "token_budget": TOKEN_BUDGET,
        "stable_prefix_tokens": prefix,
        "sets": {r.corpus.name: r.figures() for r in results},
        "cheapest_context": rates,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
