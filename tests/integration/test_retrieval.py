"""Ingesting documents and retrieving passages against the real Postgres: BM25 in SQL, the
words' side of the retrieval (test_retrieval_meaning.py: the meaning's)."""

from __future__ import annotations

import asyncio
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from appliance import errors
from appliance.db import documents as dbdocuments
from appliance.db import pool as dbpool
from appliance.db import tenants as dbtenants
from appliance.retrieval import documents, search
from tests.support import postgres
from tests.unit.test_formats import pdf

pytestmark = pytest.mark.asyncio(loop_scope="session")

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# A small handbook: each question below is answered by one sentence in one known file.
HANDBOOK = {
    "backups.md": """# Backups

## Schedule

The appliance takes a snapshot of the Postgres cluster every night at 02:00 local time, when
the task queue is usually at its quietest. The snapshot is written to the attached USB disk
first and copied to the offsite bucket once the upload window opens at 03:00, so a slow uplink
never delays the local copy.

A snapshot that fails is retried three times, ten minutes apart. If the third attempt fails
too, the on-call engineer is paged with the error and the name of the last good snapshot, and
the next scheduled run still happens as usual the following night.

## Restoring

To restore, stop the daemon and run `appliance restore --from <snapshot>`. The command checks
the snapshot's checksum before it touches anything, then replaces the data directory and
starts Postgres again in recovery mode until the snapshot has been replayed.

Restoring a snapshot taken by an older schema version is refused, because migrations only run
forward; restore it on a spare machine with the matching release instead and copy the rows you
need across. After a restore, the audit chain is verified end to end before the daemon accepts
new tasks.

## Retention

Nightly snapshots are kept for fourteen days, weekly snapshots for eight weeks and monthly
snapshots for one year. Expired snapshots are pruned by the same job that takes the new one,
after the new snapshot has been verified, so a broken run never deletes the last good copy.

The offsite bucket has its own lifecycle rule that mirrors these periods, with object lock
enabled so that nobody, not even an administrator with the bucket credentials, can delete a
snapshot before its retention period is over.

## Monitoring

Each snapshot reports its size, its duration and the result of its verification to the
metrics endpoint. The console shows the age of the newest verified snapshot, and an alert
fires when it is older than thirty hours, which catches a schedule that silently stopped.

## Testing restores

Once a quarter, an operator restores the newest monthly snapshot onto a spare machine and runs
the acceptance suite against it. The result, with the time the restore took, is recorded in the
operations log; a restore drill that fails counts as a severity two incident.
""",
    "network.md": """# Network

## Firewall

Only one port is open to the internet: the webhook listener on TCP 8443. Every other listener,
the console and the metrics endpoint included, binds to the tailnet address of the machine.
The boot fails if anything else listens on a wildcard address, and the installer runs the same
exposure check before it reports success.

Outbound traffic is limited to the model provider's API, the package mirror and the offsite
backup bucket. Any other destination is dropped and logged, which makes an unexpected
dependency show up in the journal long before it becomes an incident.

## Tailnet

The appliance joins the tailnet with a pre-authorised key that is kept in the vault and used
exactly once, at enrolment. Console access is limited to people in the operators group, and
every console request is attributed to a person through tailscale whois, so the audit log
names who approved or cancelled a task.

If the tailnet is down, the console is unreachable but tasks keep running; webhooks still
arrive on the public port. Operators can then use the command line over a local terminal.

## Time

Clocks are kept right with chrony against the regional pool servers. Webhook signatures carry
a timestamp, and a request whose timestamp is more than five minutes away from the local clock
is rejected, which blocks replayed requests as well as senders with a broken clock.

A clock that drifts by more than a second raises a warning on the console, because lease
expiry and schedule times both depend on it and a large jump can make workers give up leases
they still hold.

## DNS

The appliance resolves names through the tailnet's resolver first and the local network's
resolver second. Webhook senders reach it through a public name whose record points at the
office's fixed address; the record has a short time to live so that moving the box is quick.

## Proxies

Where a corporate proxy is mandatory, set its address in the config file; the model client
and the package mirror use it, while Postgres and the tailnet never do. Proxy credentials are
stored in the vault like any other secret.
""",
    "billing.txt": """Invoices are issued on the first working day of each month, for the month
that has just ended, and are payable within thirty days by bank transfer or card. Each invoice lists
the model tokens used per tenant, split into input, output and cache reads, next to the fixed
fee of the plan. Customers can download every invoice as a PDF from the billing page.

Refunds: a customer may ask for a full refund within fourteen days of the first purchase,
without giving a reason. After that, refunds are paid pro rata for the unused whole months of
an annual plan, and monthly plans can be cancelled at the end of any month. A refund is paid to
the card or account the payment came from and usually arrives within ten working days.

Prices are quoted in euros. Customers outside the eurozone are charged in their own currency at
the exchange rate published by the central bank on the invoice date, and the rate used is
printed on the invoice. Value added tax is added where it applies; business customers in the
union who give a valid tax number are invoiced under the reverse charge rule instead.

Discounts: non-profit organisations and schools get forty percent off every plan, and annual
plans cost the price of ten months. Discounts cannot be combined; the larger one applies.

Unpaid invoices: a reminder is sent seven days after the due date and a second one after
fourteen days. Service is suspended thirty days after the due date, but no data is deleted
until ninety days have passed, and paying the invoice restores the service within the hour.
""",
    "people.md": """# People

## Leave

Everyone gets twenty-five days of paid holiday a year, plus the public holidays of the place
they work from. Unused days, up to five of them, carry over into the first quarter of the next
year; anything beyond that lapses unless your manager agreed otherwise in writing.

Book leave in the team calendar at least two weeks ahead for anything longer than three days,
and make sure your on-call shifts are swapped before you go. Sick days are not taken from your
holiday allowance; tell your manager on the first morning you are unwell.

## Equipment

New starters receive a laptop on their first day. It is enrolled in device management and has
full-disk encryption switched on before it is handed over, and the recovery key is escrowed
with the security team.

A lost or stolen laptop must be reported to security within one hour, by phone if you cannot
reach the chat. Security then wipes the device remotely and revokes its certificates, so report
it even if you think the laptop will turn up again.

## Expenses

Travel, hotels and meals on work trips are reimbursed against receipts submitted through the
expenses form by the fifth of the following month. Trains are preferred over flights for any
journey under five hours, and economy class is the rule for flights.

Claims above five hundred euros need your manager's approval before you book. Reimbursements
are paid with the next salary run after the claim is approved.

## Training

Each person has a yearly training budget of one thousand five hundred euros for courses,
conferences and books. Ask your manager before you book anything over three hundred euros,
and share what you learned at a Friday lunch talk afterwards.

## Working from home

You can work from home on any day you like, as long as you attend the team's Tuesday planning
in person. The company pays for a desk, a chair and a monitor for your home office once every
four years.
""",
    "incidents.md": """# Incidents

## Severity

A severity one incident means customers cannot run tasks at all, or data may have been lost or
exposed. Severity two means a degraded service that customers notice, such as webhooks arriving
minutes late or the console failing to load. Severity three covers everything else that needs
a fix but no immediate response.

The first responder picks the severity and may change it as more is learned; when in doubt,
pick the higher one, since downgrading is cheap and a late escalation is not.

## Paging

The on-call rotation changes every Monday at 10:00, with a handover call between the outgoing
and incoming engineer. A severity one page must be acknowledged within five minutes, otherwise
it escalates to the secondary and then to the engineering manager.

Pages for severity two are sent during working hours only, unless a customer with an enterprise
plan is affected. Acknowledging a page means you are working on it, not that it is fixed.

## Postmortems

Every severity one or two incident gets a blameless postmortem, written within five working
days of the incident being resolved and reviewed at the Thursday operations meeting. It
describes the timeline, the impact, what went well and what did not.

Action items from the postmortem are filed as tickets with an owner and a due date, and the
operations meeting checks on them every week until they are closed.

## Status page

During a severity one or two incident, the incident lead posts an update on the public status
page within fifteen minutes and then at least every thirty minutes until the incident is
resolved. Updates say what customers see and what we are doing, never who is to blame.

## Communication

Incident chatter happens in a dedicated channel named after the incident number. The incident
lead keeps the timeline in the channel topic, and anyone who joins reads the topic before
asking questions, so that the people fixing the problem are not interrupted.
""",
}

# (question, file holding the answer, a phrase of the answer)
QUESTIONS = [
    ("How long are nightly snapshots kept?", "backups.md", "kept for fourteen days"),
    ("At what time does the nightly backup start?", "backups.md", "every night at 02:00"),
    ("How do I restore the appliance from a snapshot?", "backups.md", "appliance restore --from"),
    ("Which port is open to the internet?", "network.md", "TCP 8443"),
    ("How does the appliance join the tailnet?", "network.md", "pre-authorised key"),
    ("When are invoices issued?", "billing.txt", "first working day of each month"),
    ("Can a customer get a refund after buying a plan?", "billing.txt", "full refund"),
    ("How many days of paid holiday does everyone get?", "people.md", "twenty-five days"),
    ("What must I do if my laptop is stolen?", "people.md", "reported to security within one"),
    ("How quickly must a severity one page be acknowledged?", "incidents.md", "within five min"),
    ("When is the postmortem of an incident written?", "incidents.md", "blameless postmortem"),
    ("How often is the status page updated during an incident?", "incidents.md", "thirty minutes"),
]

# Which statistics disagree with the passages they summarise (none, when kept exact).
STATISTICS_DRIFT = """
WITH actual AS (
    SELECT p.collection, u.lexeme, count(*)::integer AS passages
      FROM appliance.passages p
           CROSS JOIN LATERAL unnest(tsvector_to_array(p.tsv)) AS u (lexeme)
     WHERE p.tenant_id = $1
     GROUP BY p.collection, u.lexeme
), kept AS (
    SELECT t.collection, t.lexeme, t.passages FROM appliance.collection_terms t
     WHERE t.tenant_id = $1
), totals AS (
    SELECT c.collection
      FROM appliance.collections c
           CROSS JOIN LATERAL (
               SELECT count(*) AS passages, coalesce(sum(p.tokens), 0) AS tokens,
                      coalesce(sum(p.keyword_tokens), 0) AS keyword_tokens
                 FROM appliance.passages p
                WHERE p.tenant_id = c.tenant_id AND p.collection = c.collection
           ) AS a
     WHERE c.tenant_id = $1
       AND (c.passages <> a.passages OR c.tokens <> a.tokens
            OR c.keyword_tokens <> a.keyword_tokens)
)
SELECT (SELECT count(*) FROM (SELECT * FROM actual EXCEPT SELECT * FROM kept) a)
     + (SELECT count(*) FROM (SELECT * FROM kept EXCEPT SELECT * FROM actual) k)
     + (SELECT count(*) FROM totals)
"""

# The best passage by Postgres's own ts_rank (no corpus-wide idf), for comparison with BM25.
TS_RANK_FIRST = """
WITH query AS (
    SELECT replace(plainto_tsquery('english', $2)::text, ' & ', ' | ')::tsquery AS q
)
SELECT d.source
  FROM query, appliance.passages p JOIN appliance.documents d ON d.document_id = p.document_id
 WHERE p.tenant_id = $1 AND p.tsv @@ query.q
 ORDER BY ts_rank(p.tsv, query.q) DESC
 LIMIT 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    """Write one file of the corpus; returns its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def source_of(path: Path) -> str:
    """The source a stored document is known by."""
    return path.resolve().as_posix()


async def ingest(
    db: dbpool.Pool,
    paths: list[Path],
    *,
    tenant_id: str = "default",
    collection: str = "handbook",
) -> documents.IngestReport:
    return await documents.add_documents(
        db, tenant_id=tenant_id, collection=collection, paths=paths
    )


async def ask(
    db: dbpool.Pool,
    query: str,
    *,
    tenant_id: str = "default",
    collections: tuple[str, ...] = ("handbook",),
    top_k: int = 5,
    token_budget: int = 4000,
) -> list[search.Passage]:
    return await search.retrieve(
        db,
        tenant_id=tenant_id,
        collections=collections,
        query=query,
        top_k=top_k,
        token_budget=token_budget,
    )


async def handbook(db: dbpool.Pool, folder: Path) -> Path:
    """The handbook written under `folder` and ingested into `default`/`handbook`."""
    root = folder / "handbook"
    for name, text in HANDBOOK.items():
        write(root, name, text)
    await ingest(db, [root])
    return root


async def drift(db: dbpool.Pool, tenant_id: str = "default") -> int:
    count: int = await db.fetchval(STATISTICS_DRIFT, tenant_id)
    return count


class TestIngest:
    async def test_new_files_are_added_as_passages(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Every file of a walked directory is added, split into several passages."""
        root = tmp_path / "handbook"
        for name, text in HANDBOOK.items():
            write(root, name, text)

        report = await ingest(db, [root])

        assert sorted(Path(s).name for s in report.added) == sorted(HANDBOOK)
        assert report.passages > len(HANDBOOK)
        [collection] = await dbdocuments.list_collections(db, tenant_id="default")
        assert (collection.documents, collection.passages) == (len(HANDBOOK), report.passages)
        assert await drift(db) == 0

    async def test_an_unchanged_file_is_skipped(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Ingesting the same content again writes nothing: same passages, same rows."""
        path = write(tmp_path, "backups.md", HANDBOOK["backups.md"])
        await ingest(db, [path])
        before = await db.fetch("SELECT passage_id, text FROM appliance.passages ORDER BY 1")

        report = await ingest(db, [path])

        assert report.unchanged == (source_of(path),)
        assert (report.added, report.replaced, report.passages) == ((), (), 0)
        assert (
            await db.fetch("SELECT passage_id, text FROM appliance.passages ORDER BY 1") == before
        )

    async def test_a_changed_file_replaces_its_passages(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """New content replaces every old passage; none is left behind, statistics stay exact."""
        path = write(tmp_path, "backups.md", HANDBOOK["backups.md"])
        other = write(tmp_path, "network.md", HANDBOOK["network.md"])
        await ingest(db, [path, other])
        changed = HANDBOOK["backups.md"].replace("fourteen days", "twenty zanzibar days")
        path.write_text(changed)

        report = await ingest(db, [path, other])

        assert report.replaced == (source_of(path),)
        assert report.unchanged == (source_of(other),)
        expected = documents.split(changed, name="backups.md", kind="markdown")
        stored = await db.fetch(
            "SELECT p.position, p.text FROM appliance.passages p "
            "JOIN appliance.documents d ON d.document_id = p.document_id "
            "WHERE d.source = $1 ORDER BY p.position",
            source_of(path),
        )
        assert [(r["position"], r["text"]) for r in stored] == [
            (p.position, p.text) for p in expected
        ]
        assert await drift(db) == 0
        assert [p.source for p in await ask(db, "zanzibar")] == [source_of(path)]
        assert not [p for p in await ask(db, "snapshots kept fourteen") if "fourteen" in p.text]

    async def test_statistics_stay_exact_when_a_file_shrinks_to_nothing(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Emptying a file removes its passages and takes its lexemes off the frequencies."""
        path = write(tmp_path, "people.md", HANDBOOK["people.md"])
        await ingest(db, [path])
        path.write_text("\n")

        report = await ingest(db, [path])

        assert report.replaced == (source_of(path),)
        assert await db.fetchval("SELECT count(*) FROM appliance.passages") == 0
        assert await db.fetchval("SELECT count(*) FROM appliance.collection_terms") == 0
        assert await drift(db) == 0

    async def test_unreadable_binary_and_unknown_files_are_skipped_with_a_reason(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Binary, non-UTF-8, unknown and missing files are reported, not ingested."""
        write(tmp_path, "notes.txt", "Plain words that are fine to ingest.")
        (tmp_path / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
        (tmp_path / "photo.png").write_bytes(b"\x89PNG")
        missing = tmp_path / "missing.md"

        report = await ingest(db, [tmp_path, missing])

        assert [Path(s).name for s in report.added] == ["notes.txt"]
        reasons = {Path(source).name: reason for source, reason in report.skipped}
        assert reasons == {
            "image.md": "binary",
            "latin1.txt": "binary or not UTF-8",
            "photo.png": "not a text, Markdown or source file",
            "missing.md": "no such file or directory",
        }

    async def test_a_pdf_is_read_by_its_text_and_a_broken_one_skipped(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A PDF's text layer becomes passages titled by page; a damaged PDF is skipped with
        the reason."""
        (tmp_path / "manual.pdf").write_bytes(pdf("Refunds take five days.", "Badges are red."))
        (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 and then nothing")

        report = await ingest(db, [tmp_path])
        found = await ask(db, "refunds")

        assert [Path(s).name for s in report.added] == ["manual.pdf"]
        [(source, reason)] = report.skipped
        assert Path(source).name == "broken.pdf"
        assert reason.startswith("not a readable PDF")
        assert found[0].title.startswith("Page 1")
        assert "Refunds take five days." in found[0].text

    async def test_hidden_directories_are_not_walked(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Files under `.git`, `__pycache__` and other hidden folders are left out."""
        write(tmp_path, "docs/guide.md", "# Guide\n\nRead me.")
        write(tmp_path, "docs/.git/HEAD.txt", "ref: refs/heads/main")
        write(tmp_path, "docs/__pycache__/mod.py", "x = 1")

        report = await ingest(db, [tmp_path / "docs"])

        assert [Path(s).name for s in report.added] == ["guide.md"]
        assert report.skipped == ()

    async def test_concurrent_ingests_of_one_collection_keep_statistics_exact(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Writers of one collection queue on it: overlapping ingests leave exact counts."""
        paths = [write(tmp_path, name, text) for name, text in HANDBOOK.items()]

        reports = await asyncio.gather(
            ingest(db, paths), ingest(db, paths[::-1]), ingest(db, paths[:2]), ingest(db, paths)
        )

        assert sorted(s for r in reports for s in r.added) == sorted(map(source_of, paths))
        assert await db.fetchval("SELECT count(*) FROM appliance.documents") == len(paths)
        assert await drift(db) == 0

    async def test_an_unknown_tenant_is_refused(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """Documents of a tenant that does not exist are refused as bad input."""
        path = write(tmp_path, "a.md", "# A\n\nText.")

        with pytest.raises(errors.InputError):
            await ingest(db, [path], tenant_id="nobody")

    async def test_a_malformed_collection_name_is_refused(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A collection name must be letters, digits and a few separators."""
        with pytest.raises(errors.InputError, match="collection"):
            await ingest(db, [tmp_path], collection="has spaces")


class TestRetrieve:
    @pytest.mark.parametrize(
        ("question", "file_name", "phrase"), QUESTIONS, ids=[q for q, _, _ in QUESTIONS]
    )
    async def test_the_answering_passage_ranks_first(
        self, db: dbpool.Pool, tmp_path: Path, question: str, file_name: str, phrase: str
    ) -> None:
        """The passage holding the answer to each question is the best one."""
        root = await handbook(db, tmp_path)

        found = await ask(db, question)

        assert found[0].source == source_of(root / file_name)
        assert phrase in " ".join(found[0].text.split())

    async def test_a_camel_case_name_is_found_by_its_words(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """`DictReader` is indexed with its parts, so "dict reader" finds its definition."""
        root = await handbook(db, tmp_path)
        code = write(
            tmp_path / "code",
            "rows.py",
            'class DictReader:\n    """Rows as mappings keyed by the header."""\n\n'
            "    def __init__(self, f):\n        self.f = f\n",
        )
        await ingest(db, [root, code])

        found = await ask(db, "dict reader")
        by_words = await dbdocuments.search_passages(
            db, tenant_id="default", collections=["handbook"], query=search.search_query(
                "dict reader"), k1=search.K1, b=search.B, max_tokens=4000, limit=10
        )  # fmt: skip

        assert [p.source for p in by_words.values()] == [source_of(code)]
        assert found[0].source == source_of(code)
        assert found[0].title.startswith("class DictReader")

    async def test_a_file_name_match_ranks_that_files_passage_first(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A question naming a file (its stem or its folder) finds that file's passage first,
        though the word is nowhere in the file's text."""
        root = await handbook(db, tmp_path)
        other = write(tmp_path / "extra", "archive/zanzibar.md", "# Notes\n\nSnapshots kept.\n")
        await ingest(db, [root, other])

        assert (await ask(db, "zanzibar snapshots kept"))[0].source == source_of(other)
        assert (await ask(db, "archive snapshots kept"))[0].source == source_of(other)

    async def test_answers_are_passages_not_whole_files(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A Markdown file of the handbook is several passages, and only one is returned first."""
        root = await handbook(db, tmp_path)

        found = await ask(db, "How long are nightly snapshots kept?", top_k=1)

        assert len(found) == 1
        assert found[0].tokens < documents.count_tokens(HANDBOOK["backups.md"])
        assert found[0].title == "Backups > Retention; Monitoring; Testing restores"
        assert found[0].line_start > 1
        assert source_of(root / "backups.md") == found[0].source

    async def test_a_rare_term_outweighs_a_common_one(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """BM25's idf ranks the passage with the rare word first, where ts_rank does not."""
        for i in range(8):
            write(
                tmp_path,
                f"database-{i}.txt",
                f"Note {i}. The database is tuned weekly. Database backups run nightly; "
                "each database keeps its own database log for the database operators.",
            )
        rare = write(
            tmp_path,
            "failover.txt",
            "Runbook: promote the standby replica during a failover of the primary.",
        )
        await ingest(db, [tmp_path])
        query = "database failover"

        found = await ask(db, query)

        assert found[0].source == source_of(rare)
        assert await db.fetchval(TS_RANK_FIRST, "default", query) != source_of(rare)

    async def test_not_every_word_of_the_question_is_required(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Words the corpus never uses do not stop the others from matching."""
        await handbook(db, tmp_path)

        found = await ask(db, "quantum blockchain refund")

        assert found
        assert "full refund" in " ".join(found[0].text.split())

    async def test_a_question_of_stop_words_finds_nothing(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A question with no searchable word returns no passage, and no error."""
        await handbook(db, tmp_path)

        assert await ask(db, "what is the of and") == []
        assert await ask(db, "?!") == []

    async def test_the_token_budget_is_never_exceeded(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """The rendered context of the passages found fits in the budget."""
        await handbook(db, tmp_path)

        for budget in (250, 500, 900):
            found = await ask(db, "snapshot incident invoice laptop tailnet", top_k=10,
                              token_budget=budget)  # fmt: skip

            assert found
            assert documents.count_tokens(search.render_context(found)) <= budget
            assert sum(search.cost_of(p) for p in found) <= budget

    async def test_a_passage_that_would_overflow_is_skipped(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """When the best passage does not fit, a lesser one that fits is taken instead."""
        big = write(tmp_path, "big.md", "# Kiwi\n\n" + "The kiwi orchard grows kiwi fruit. " * 40)
        small = write(tmp_path, "small.txt", "A kiwi is mentioned here once.")
        await ingest(db, [big, small])
        everything = await ask(db, "kiwi")
        assert [p.source for p in everything] == [source_of(big), source_of(small)]

        found = await ask(db, "kiwi", token_budget=search.cost_of(everything[1]) + 10)

        assert [p.source for p in found] == [source_of(small)]

    async def test_top_k_limits_the_passages(self, db: dbpool.Pool, tmp_path: Path) -> None:
        """No more than top_k passages are returned, in descending score."""
        await handbook(db, tmp_path)

        found = await ask(db, "snapshot incident invoice laptop tailnet", top_k=3)

        assert len(found) == 3
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)

    async def test_only_the_collections_asked_for_are_searched(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Passages of other collections of the same tenant are not returned."""
        runbook = write(tmp_path / "ops", "restore.md", "# Restore\n\nRestore the snapshot.")
        await handbook(db, tmp_path)
        await ingest(db, [runbook], collection="runbooks")

        only_runbooks = await ask(db, "restore snapshot", collections=("runbooks",))
        both = await ask(db, "restore snapshot", collections=("runbooks", "handbook"), top_k=10)

        assert [p.source for p in only_runbooks] == [source_of(runbook)]
        assert {p.collection for p in both} == {"runbooks", "handbook"}

    async def test_a_tenant_never_sees_another_tenants_passages(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """acme and globex share a collection name and a word; each finds only its own."""
        acme = write(tmp_path / "acme", "plan.md", "# Plan\n\nThe acme merger codename is kiwi.")
        globex = write(tmp_path / "globex", "plan.md", "# Plan\n\nGlobex calls its kiwi project.")
        await ingest(db, [acme], tenant_id="acme", collection="shared")
        await ingest(db, [globex], tenant_id="globex", collection="shared")

        for_acme = await ask(db, "kiwi codename", tenant_id="acme", collections=("shared",))
        for_globex = await ask(db, "kiwi codename", tenant_id="globex", collections=("shared",))

        assert [p.source for p in for_acme] == [source_of(acme)]
        assert [p.source for p in for_globex] == [source_of(globex)]
        assert await ask(db, "kiwi", tenant_id="default", collections=("shared",)) == []

    async def test_the_context_cites_each_source_and_lines(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """Each passage in the context starts with `[source: path:lines]` and its title."""
        root = await handbook(db, tmp_path)

        found = await ask(db, "Which port is open to the internet?", top_k=2)
        context = search.render_context(found)

        first = found[0]
        assert context.startswith(
            f"[source: {source_of(root / 'network.md')}:{first.line_start}-{first.line_end}] "
            f"{first.title}\n{first.text}"
        )
        assert context.count("[source: ") == 2

    async def test_a_checkpointed_passage_renders_the_same(
        self, db: dbpool.Pool, tmp_path: Path
    ) -> None:
        """A passage turned into a dict (as checkpoints hold it) renders as the passage did."""
        await handbook(db, tmp_path)
        found = await ask(db, "refund", top_k=2)

        as_dicts = [
            {field: getattr(p, field) for field in search.Passage.__dataclass_fields__}
            for p in found
        ]

        assert search.render_context(as_dicts) == search.render_context(found)


@pytest_asyncio.fixture(loop_scope="session", scope="class")
async def stdlib_db(session_pool: dbpool.Pool) -> AsyncIterator[dbpool.Pool]:
    """The json package and the email package's architecture notes, ingested once for the
    class that asks about them (embedding them is the slow part); emptied tables first."""
    async with session_pool.acquire() as conn:
        await postgres.truncate(conn)
    await dbtenants.create_tenant(session_pool, tenant_id="default", name="default", actor="test")
    report = await ingest(
        session_pool, [STDLIB / "json", STDLIB / "email" / "architecture.rst"], collection="stdlib"
    )
    assert report.added
    yield session_pool


class TestRealCorpus:
    """The json package and the email package's architecture notes of the standard library."""

    @pytest.mark.parametrize(
        ("question", "file_name", "title"),
        [
            ("which function decodes JSON from a file", "__init__.py", "def load"),
            ("serialize an object as a JSON formatted stream to a file", "__init__.py",
             "def dump"),
            ("parse a JSON string into a Python object", "__init__.py", "def loads"),
            ("pretty print JSON from the command line", "tool.py", "def main"),
            ("exception raised when decoding fails, with the line and column", "decoder.py",
             "class JSONDecodeError"),
            ("escape non-ASCII characters in the output", "encoder.py", "class JSONEncoder"),
            ("how does the policy control headers during the message lifecycle",
             "architecture.rst", "Header Policy Control During Lifecycle"),
            ("handling binary data in email messages", "architecture.rst",
             "Handling Binary Data"),
        ],
    )  # fmt: skip
    async def test_the_answer_is_in_the_top_three(
        self, stdlib_db: dbpool.Pool, question: str, file_name: str, title: str
    ) -> None:
        """A question about the standard library finds the passage that answers it."""
        found = await ask(stdlib_db, question, collections=("stdlib",), top_k=3)

        assert any(Path(p.source).name == file_name and title in p.title for p in found), [
            (p.source, p.title) for p in found
        ]
