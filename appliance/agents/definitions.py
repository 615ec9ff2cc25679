"""Agent definitions: a TOML file per agent, applied as a new version when its content changes.

name = "support-triage"
model = "claude-sonnet-4-5"
persona = \"\"\"You triage support tickets ...\"\"\"
tools = ["search_documents"]
max_tokens = 1024
max_turns = 8

[retrieval]
collections = ["handbook"]
top_k = 6
token_budget = 1500
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Literal

import pydantic

from appliance import errors, models
from appliance.db import agents as dbagents
from appliance.db import pool as dbpool


class Retrieval(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    collections: tuple[str, ...] = ()
    top_k: int = pydantic.Field(default=6, ge=1, le=50)
    token_budget: int = pydantic.Field(default=1500, ge=50)
    # "auto": per call, the cheaper of retrieval and the whole collection in the cached prompt
    # (agents/context_choice.py); "retrieval" or "collection" to always use one.
    context: Literal["auto", "retrieval", "collection"] = "auto"


class Definition(pydantic.BaseModel):
    """What a person writes in the agent's TOML file."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = pydantic.Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    persona: str = pydantic.Field(min_length=1)
    model: str = pydantic.Field(min_length=1)
    tools: tuple[str, ...] = ()
    max_tokens: int = pydantic.Field(default=1024, ge=1, le=64_000)
    max_turns: int = pydantic.Field(default=8, ge=1, le=100)
    retrieval: Retrieval = pydantic.Field(default_factory=Retrieval)

    def content_hash(self) -> str:
        """SHA-256 of the canonical definition: the same content is the same version."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def load(path: Path) -> Definition:
    """Parse and validate an agent file; InputError names the file, key and reason."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.InputError(f"{path}: cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise errors.InputError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Definition.model_validate(data)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        raise errors.InputError(f"{path}: invalid agent definition: {reasons}") from exc


async def apply(
    pool: dbpool.Pool, definition: Definition, *, tenant_id: str, actor: str
) -> tuple[int, bool]:
    """Store the definition as the agent's next version unless unchanged: (version, created)."""
    return await dbagents.insert_agent_version(
        pool,
        tenant_id=tenant_id,
        name=definition.name,
        persona=definition.persona,
        model=definition.model,
        tools=list(definition.tools),
        max_tokens=definition.max_tokens,
        max_turns=definition.max_turns,
        retrieval=definition.retrieval.model_dump(mode="json"),
        content_hash=definition.content_hash(),
        created_by=actor,
    )


def retrieval_of(agent: models.AgentVersion) -> Retrieval:
    """The stored retrieval settings as their model."""
    return Retrieval.model_validate(agent.retrieval)
