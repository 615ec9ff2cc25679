"""appliance: durable, multi-tenant AI-agent tasks on one box, with Postgres as the only store."""

import importlib.metadata

try:  # the version is pyproject.toml's, as installed (packaging/deb/build.sh reads it too)
    __version__ = importlib.metadata.version("appliance")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
