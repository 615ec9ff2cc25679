"""Token benchmark: the model bill of the appliance's agent loop against a naive prompt.

    python bench/tokens.py [--tasks N] [--top-k K] [--token-budget T] [--no-tradeoff]

Corpus: 41 modules of this interpreter's standard library (code and docstrings), ingested with
`add_documents` into one collection: split into passages, each passage's views embedded with
all-MiniLM-L6-v2 (run in numpy, `appliance.retrieval.embedding`) and stored in Postgres. Questions:
`bench/questions.py`, each with the definition that answers it, in a developer's words rather
than the docstring's. Model: the local Messages API stand-in (`tests/support/messages_api.py`:
prefix caching, per-model minimums, deterministic token counts), reached through the real SDK;
every call gets the same scripted answer, so output tokens are equal on both sides. Prices: the
published table seeded by the migrations (`costs.price_of`).

(b) the appliance: each question is an `agent.run` task run by a Worker, one after another
    (steady traffic, warm cache): surgical retrieval within a token budget (BM25 in SQL and
    similarity of meaning to the passages' vectors, merged one-in-four / three-in-four,
    `appliance.retrieval.search`), the stable prefix (preamble and persona) marked for caching.
    Cost per task from the ledger.
(a) naive: the same persona and question, with the whole text of the 3 files that rank best
    for the question (the product's retrieval ranking over passages, expanded to their files),
    no cache_control markers; one raw SDK call per question, priced from its usage.

Recall: (b) the task's checkpointed `retrieve` step holds a passage of the answer's file whose
line range contains the answering `def`/`class` line; (a) the answer's file is among the 3.

Retrieval latency: `retrieve` timed alone for every question at (b)'s settings (the query's
embedding, BM25, fetching and ranking the collection's vectors, reading the passages).

Trade-off: (b) again at other retrieval settings (`TRADEOFF`, new versions of the agent with
the same persona, so the cache stays warm), to show what recall costs.

Uses DATABASE_URL, else the server on localhost:5432, else a throwaway cluster; creates a fresh
database for the run and drops it after. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import settings  # noqa: E402
from appliance.agents import client, costs, definitions, loop, prompt  # noqa: E402
from appliance.db import documents as dbdocuments  # noqa: E402
from appliance.db import pool as dbpool  # noqa: E402
from appliance.db import tasks as dbtasks  # noqa: E402
from appliance.db import tenants as dbtenants  # noqa: E402
from appliance.engine import registry, submission, worker  # noqa: E402
from appliance.retrieval import documents, search  # noqa: E402
from bench.questions import QUESTIONS, Question  # noqa: E402
from tests.support import messages_api, postgres  # noqa: E402

MODEL = "claude-sonnet-4-6"
AGENT = "stdlib-help"
TENANT = "default"
COLLECTION = "stdlib"
MAX_TOKENS = 300
# Recall >= 0.95 needs about 16 passages of this corpus (~300 tokens each) with lexical and
# meaning-based retrieval merged; BM25 alone reached 0.65 at 6 / 1,800 (the setting).
TOP_K = 16
TOKEN_BUDGET = 4800
# Other retrieval settings measured the same way after the main run: what recall costs.
TRADEOFF = ((6, 1800), (10, 3000), (20, 6000))
NAIVE_DOCUMENTS = 3
# Passages ranked per question when expanding to whole files (naive): enough to find 3 files.
NAIVE_CANDIDATES = 200

FILES = (
    "argparse.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "collections/__init__.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "email/utils.py",
    "enum.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "glob.py",
    "gzip.py",
    "heapq.py",
    "html/__init__.py",
    "ipaddress.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "pathlib.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "reprlib.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "tarfile.py",
    "tempfile.py",
    "textwrap.py",
    "urllib/parse.py",
    "uuid.py",
    "zipfile.py",
)

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


# --- where answers are ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """Where a question's answer is: the file's source (as ingested) and its definition lines."""

    source: str
    lines: tuple[int, ...]


def definition_lines(text: str, name: str) -> list[int]:
    """The `def`/`class` lines of `name` (`f` or `Class.member`), under `if`/`try` too."""
    parts = name.split(".")
    found: list[int] = []

    def walk(body: Iterable[ast.stmt], depth: int) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name != parts[depth]:
                    continue
                if depth == len(parts) - 1:
                    found.append(node.lineno)
                elif isinstance(node, ast.ClassDef):
                    walk(node.body, depth + 1)
            elif isinstance(node, ast.If):
                walk(node.body, depth)
                walk(node.orelse, depth)
            elif isinstance(node, ast.Try):
                walk(node.body, depth)
                walk(node.orelse, depth)
                walk(node.finalbody, depth)
                for handler in node.handlers:
                    walk(handler.body, depth)

    walk(ast.parse(text).body, 0)
    return found


def locate(stdlib: Path, question: Question) -> Location:
    if question.path not in FILES:
        raise SystemExit(f"{question.path} (of {question.name}) is not in the corpus")
    path = (stdlib / question.path).resolve()
    lines = definition_lines(path.read_text(encoding="utf-8"), question.name)
    if not lines:
        raise SystemExit(f"{question.path}: no definition of {question.name}")
    return Location(path.as_posix(), tuple(lines))


def holds_answer(passage: Mapping[str, Any], where: Location) -> bool:
    """Whether a passage is of the answer's file and its line range holds the definition."""
    return passage["source"] == where.source and any(
        passage["line_start"] <= line <= passage["line_end"] for line in where.lines
    )


# --- setup ------------------------------------------------------------------------------------


async def ingest(pool: dbpool.Pool, stdlib: Path) -> documents.IngestReport:
    paths = [stdlib / name for name in FILES]
    missing = [p.as_posix() for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"not in this interpreter's standard library: {', '.join(missing)}")
    return await documents.add_documents(pool, tenant_id=TENANT, collection=COLLECTION, paths=paths)


async def define_agent(pool: dbpool.Pool, top_k: int, token_budget: int) -> None:
    definition = definitions.Definition(
        name=AGENT,
        persona=PERSONA,
        model=MODEL,
        tools=(),
        max_tokens=MAX_TOKENS,
        max_turns=1,
        retrieval=definitions.Retrieval(
            collections=(COLLECTION,), top_k=top_k, token_budget=token_budget
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
    seconds: float


async def run_appliance(
    pool: dbpool.Pool,
    dsn: str,
    api: messages_api.Server,
    questions: Sequence[Question],
    where: Sequence[Location],
) -> ApplianceRun:
    """Each question as an agent.run task through a Worker, one after another."""
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
    first_request = len(api.requests_to("/v1/messages"))
    task_ids: list[int] = []
    started = time.perf_counter()
    try:
        for question in questions:
            api.script(messages_api.TextReply(ANSWER))
            sub = await submission.submit(
                pool,
                registry.registry,
                engine,
                tenant_id=TENANT,
                workflow=loop.WORKFLOW,
                task_input={"agent": AGENT, "prompt": question.text},
                actor="bench",
            )
            outcome = await waiting.setdefault(sub.task_id, loop_.create_future())
            if outcome != "succeeded":
                task = await dbtasks.get_task(pool, sub.task_id)
                raise SystemExit(f"task {sub.task_id} {outcome}: {task and task.error}")
            task_ids.append(sub.task_id)
    finally:
        elapsed = time.perf_counter() - started
        await work.stop()
        await runner
        await model.close()
    rows = {row.task_id: row for row in await costs.cost_report(pool, by="task")}
    requests = api.requests_to("/v1/messages")[first_request:]
    if len(requests) != len(task_ids):
        raise SystemExit(f"{len(requests)} model calls for {len(task_ids)} tasks")
    hits: list[bool] = []
    context_tokens: list[int] = []
    context_estimate: list[int] = []
    for task_id, location, request in zip(task_ids, where, requests, strict=True):
        steps = {step.name: step.output for step in await dbtasks.list_steps(pool, task_id)}
        passages: list[dict[str, Any]] = steps["retrieve"]
        hits.append(any(holds_answer(p, location) for p in passages))
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
        seconds=elapsed,
    )


# --- (a) naive --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NaiveRun:
    usd: list[Decimal]
    input: list[int]
    cache: list[int]
    output: list[int]
    hits: list[bool]
    seconds: float


async def top_files(pool: dbpool.Pool, query: str, count: int) -> list[str]:
    """The `count` files whose passages rank best for `query` (the product's retrieval)."""
    found = await search.retrieve(
        pool,
        tenant_id=TENANT,
        collections=[COLLECTION],
        query=query,
        top_k=NAIVE_CANDIDATES,
        token_budget=10**9,
    )
    return list(dict.fromkeys(passage.source for passage in found))[:count]


async def retrieval_latency(
    pool: dbpool.Pool, questions: Sequence[Question], top_k: int, token_budget: int
) -> list[float]:
    """Seconds `retrieve` takes for each question at the appliance's settings."""
    seconds = []
    for question in questions:
        started = time.perf_counter()
        await search.retrieve(
            pool,
            tenant_id=TENANT,
            collections=[COLLECTION],
            query=question.text,
            top_k=top_k,
            token_budget=token_budget,
        )
        seconds.append(time.perf_counter() - started)
    return seconds


async def run_naive(
    pool: dbpool.Pool,
    api: messages_api.Server,
    questions: Sequence[Question],
    where: Sequence[Location],
) -> NaiveRun:
    """Each question with the whole text of its top files, no cache markers, one raw call."""
    prices = await costs.price_of(pool, MODEL)
    sdk = anthropic.AsyncAnthropic(api_key=api.api_key, base_url=api.base_url, max_retries=2)
    texts: dict[str, str] = {}
    run = NaiveRun([], [], [], [], [], 0.0)
    started = time.perf_counter()
    try:
        for question, location in zip(questions, where, strict=True):
            files = await top_files(pool, question.text, NAIVE_DOCUMENTS)
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
                            {"type": "text", "text": question.text},
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
            run.hits.append(location.source in files)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=len(QUESTIONS), help="questions to ask")
    parser.add_argument("--top-k", type=int, default=TOP_K)
    parser.add_argument("--token-budget", type=int, default=TOKEN_BUDGET)
    parser.add_argument(
        "--no-tradeoff", action="store_true", help="skip the runs at other retrieval settings"
    )
    args = parser.parse_args()
    questions = QUESTIONS[: args.tasks]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    where = [locate(stdlib, question) for question in questions]
    tradeoff: list[tuple[int, int, ApplianceRun]] = []
    async with (
        postgres.server() as server,
        postgres.fresh_database(server, "tokens") as dsn,
        messages_api.running_server() as api,
    ):
        pool = await dbpool.create_pool(dsn, min_size=2, max_size=8)
        try:
            await dbtenants.create_tenant(pool, tenant_id=TENANT, name=TENANT, actor="bench")
            started = time.perf_counter()
            report = await ingest(pool, stdlib)
            ingest_s = time.perf_counter() - started
            [collection] = await dbdocuments.list_collections(pool, tenant_id=TENANT)
            print(
                f"corpus: {len(report.added)} stdlib files ({stdlib}), {report.passages} "
                f"passages, {collection.tokens:,} tokens, {report.vectors:,} vectors of "
                f"{report.model or 'no embedding model (words only)'}; split, embedded and "
                f"stored in {ingest_s:.1f} s"
            )
            latency = await retrieval_latency(pool, questions, args.top_k, args.token_budget)
            print(
                f"retrieval: {statistics.median(latency) * 1000:.1f} ms median, "
                f"{quantile(latency, 0.9) * 1000:.1f} ms p90 per call (top_k {args.top_k} "
                f"within {args.token_budget} tokens)"
            )
            await define_agent(pool, args.top_k, args.token_budget)
            prefix = prompt.estimate_tokens(prompt.PREAMBLE) + prompt.estimate_tokens(PERSONA)
            print(
                f"agent: {MODEL}, stable prefix ~{prefix:,} tokens (minimum cacheable "
                f"{prompt.min_cacheable(MODEL):,}), max_tokens {MAX_TOKENS}, retrieval "
                f"top_k {args.top_k} within {args.token_budget} tokens; {len(questions)} tasks"
            )
            naive = await run_naive(pool, api, questions, where)
            appliance = await run_appliance(pool, dsn, api, questions, where)
            for top_k, budget in () if args.no_tradeoff else TRADEOFF:
                await define_agent(pool, top_k, budget)
                run = await run_appliance(pool, dsn, api, questions, where)
                tradeoff.append((top_k, budget, run))
        finally:
            await pool.close()

    tasks = len(questions)
    naive_usd = mean(naive.usd)
    appliance_usd = mean(appliance.usd)
    reduction = 1 - appliance_usd / naive_usd if naive_usd else 0.0
    naive_input = mean([i + c for i, c in zip(naive.input, naive.cache, strict=True)])
    input_total = [
        u + w + r
        for u, w, r in zip(
            appliance.uncached_input, appliance.cache_write, appliance.cache_read, strict=True
        )
    ]
    print(
        f"(a) naive: ${naive_usd:.5f}/task; {naive_input:,.0f} input tokens/call (all uncached; "
        f"whole text of the top {NAIVE_DOCUMENTS} files), {mean(naive.output):.0f} output; "
        f"recall {share(naive.hits):.3f} (answer file among the {NAIVE_DOCUMENTS}); "
        f"{naive.seconds:.1f} s"
    )
    print(
        f"(b) appliance: ${appliance_usd:.5f}/task; {mean(input_total):,.0f} input tokens/call = "
        f"{mean(appliance.uncached_input):,.0f} uncached + {mean(appliance.cache_read):,.0f} "
        f"cache read + {mean(appliance.cache_write):,.0f} cache write (the first task writes "
        f"{appliance.cache_write[0]:,}); context {mean(appliance.context_tokens):,.0f} tokens "
        f"as billed ({mean(appliance.context_estimate):,.0f} by the retrieval's estimate); "
        f"{mean(appliance.output):.0f} output; recall {share(appliance.hits):.3f}; "
        f"{appliance.seconds:.1f} s"
    )
    misses = [q for q, hit in zip(questions, appliance.hits, strict=True) if not hit]
    for question in misses:
        print(f"  missed: {question.path} {question.name}: {question.text}")
    print(
        f"reduction: {reduction:.1%} (1 - appliance/naive) at recall "
        f"{share(appliance.hits):.3f} vs naive recall {share(naive.hits):.3f}, {tasks} tasks"
    )
    curve: list[dict[str, Any]] = []
    for top_k, budget, run in tradeoff:
        usd = mean(run.usd)
        point = {
            "top_k": top_k,
            "token_budget": budget,
            "usd_per_task": round(usd, 6),
            "reduction": round(1 - usd / naive_usd, 4) if naive_usd else 0.0,
            "recall": round(share(run.hits), 4),
            "avg_context_tokens": round(mean(run.context_tokens), 1),
        }
        curve.append(point)
        print(
            f"tradeoff: top_k {top_k} within {budget} tokens: ${usd:.5f}/task, reduction "
            f"{point['reduction']:.1%}, recall {share(run.hits):.3f}, context "
            f"{mean(run.context_tokens):,.0f} tokens"
        )
    figures = {
        "tasks": tasks,
        "model": MODEL,
        "top_k": args.top_k,
        "token_budget": args.token_budget,
        "naive_usd_per_task": round(naive_usd, 6),
        "appliance_usd_per_task": round(appliance_usd, 6),
        "reduction": round(reduction, 4),
        "recall": round(share(appliance.hits), 4),
        "naive_recall": round(share(naive.hits), 4),
        "avg_input_tokens_naive": round(naive_input, 1),
        "avg_input_tokens_appliance": round(mean(input_total), 1),
        "avg_uncached_input_tokens_appliance": round(mean(appliance.uncached_input), 1),
        "avg_context_tokens_appliance": round(mean(appliance.context_tokens), 1),
        "avg_context_tokens_estimate": round(mean(appliance.context_estimate), 1),
        "cache_read_tokens_per_task": round(mean(appliance.cache_read), 1),
        "cache_write_tokens_per_task": round(mean(appliance.cache_write), 1),
        "output_tokens_per_task": round(mean(appliance.output), 1),
        "corpus_files": len(report.added),
        "corpus_passages": report.passages,
        "corpus_tokens": collection.tokens,
        "corpus_vectors": report.vectors,
        "embedding_model": report.model,
        "ingest_seconds": round(ingest_s, 1),
        "retrieval_ms_p50": round(statistics.median(latency) * 1000, 1),
        "retrieval_ms_p90": round(quantile(latency, 0.9) * 1000, 1),
        "stable_prefix_tokens": prefix,
        "tradeoff": curve,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
