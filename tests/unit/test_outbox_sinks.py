"""The built-in outbox sinks: JSON lines on a stream and in a file."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest

from appliance import models, outbox, settings


def message(seq: int, **payload: Any) -> dict[str, Any]:
    """A message of the shape the relay ships."""
    return models.OutboxEvent(
        event_seq=seq,
        event_id=f"00000000-0000-4000-8000-{seq:012d}",
        tenant_id="acme",
        task_id=7,
        type="task.submitted",
        payload={"task_id": 7, **payload},
        created_at=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        attempts=0,
    ).as_message()


class TestStdoutSink:
    async def test_writes_one_compact_sorted_line_per_message(self) -> None:
        """Each message becomes one JSON line with sorted keys and no spaces."""
        stream = io.StringIO()

        await outbox.StdoutSink(stream).deliver([message(1), message(2, note="ü")])

        lines = stream.getvalue().splitlines()
        assert [json.loads(line) for line in lines] == [message(1), message(2, note="ü")]
        assert lines[0] == json.dumps(message(1), separators=(",", ":"), sort_keys=True)

    async def test_defaults_to_standard_output(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a stream, the lines go to sys.stdout as it is when the batch is written."""
        await outbox.StdoutSink().deliver([message(1)])

        assert json.loads(capsys.readouterr().out) == message(1)


class TestFileSink:
    async def test_appends_one_parseable_line_per_event(self, tmp_path: Path) -> None:
        """Batches are appended to the file, one JSON object per line, in order."""
        path = tmp_path / "events.jsonl"
        sink = outbox.FileSink(path)

        await sink.deliver([message(1), message(2)])
        await sink.deliver([message(3)])

        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]

    async def test_missing_directory_refuses_the_batch(self, tmp_path: Path) -> None:
        """A file that cannot be opened raises, so the relay keeps the events pending."""
        sink = outbox.FileSink(tmp_path / "missing" / "events.jsonl")

        with pytest.raises(FileNotFoundError):
            await sink.deliver([message(1)])


class TestBuildSinks:
    def test_builds_the_configured_sinks_in_order(self, tmp_path: Path) -> None:
        """`sinks = ["file", "stdout"]` gives a file sink on file_path, then a stdout sink."""
        config = settings.OutboxSettings(sinks=("file", "stdout"), file_path=tmp_path / "e.jsonl")

        sinks = outbox.build_sinks(config)

        assert [sink.name for sink in sinks] == ["file", "stdout"]
        assert isinstance(sinks[0], outbox.FileSink)
        assert sinks[0].path == tmp_path / "e.jsonl"

    def test_default_is_stdout(self) -> None:
        """The default configuration ships to stdout only."""
        sinks = outbox.build_sinks(settings.OutboxSettings())

        assert [type(sink) for sink in sinks] == [outbox.StdoutSink]
