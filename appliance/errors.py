"""The error tree of the appliance.

Each class's docstring is its default message; each carries the CLI exit code (STYLE.md) and
the HTTP status the web layer answers with, and whether it is `permanent`: raised by a workflow,
a permanent error fails its task at once (another attempt cannot fix it), where any other
error is retried up to the task's max_attempts. Subclasses that carry data of their module (the
command a CLI ran, the sockets that failed the gate) live in that module, marked below.

    ApplianceError                      70  500  a bug
    ├── UsageError                       2  400  the command line is wrong
    ├── ConfigError                     78  500  the config file or an override is invalid
    │   ├── mesh.exposure.ExposureError 78       a socket is reachable from outside the tailnet
    │   ├── engine.nodes.NodeNameHeldError 78    another live process holds this node name
    │   ├── db.tls.DatabaseTlsError     78       the client refused Postgres over TLS (its
    │   │                                        certificate, the host it names, no TLS)
    │   ├── MissingSecretError          78       the config names a vault secret that is not set
    │   ├── ConfinementError            78       a tool process cannot be confined on this host
    │   ├── DuplicateNameError          78       two workflows or two tools under one name
    │   ├── plugins.PluginError         78       an installed plugin's entry point does not load
    │   └── vault.InsecureKeyStoreError, MasterKeyMissingError, KeyMismatchError,
    │       VaultNotInitialisedError    78       the master key cannot be trusted or found
    ├── InputError                      65  400  bad input data (permanent)
    │   ├── UnknownWorkflowError        65  404
    │   ├── UnknownTenantError          65  404
    │   ├── UnknownAgentError           65  404
    │   ├── UnknownToolError            65  404
    │   ├── MissingInputError           65  400  also a KeyError: a key the task input lacks
    │   ├── ReadOnlyInputError          65  400  also a TypeError: a workflow changed its input
    │   ├── IdempotencyConflictError    65  409
    │   ├── backup.BackupIntegrityError 65       a backup file is damaged or not a backup
    │   ├── provisioning.ProvisioningFileError 65  a provisioning file cannot be used (nothing
    │   │                                        consumed)
    │   └── ingress.signatures.MalformedDeliveryError 65 400
    ├── NotFoundError                    1  404  the thing asked for does not exist
    ├── StateError                       1  409  the answer is no in the thing's current state
    │   ├── health.NotReadyError          1       the daemon answers, but is not ready
    │   └── ReplayMismatchError          1  409  the workflow's code no longer makes the steps
    │                                            a replay would reuse
    ├── DependencyError                 69  503  something we depend on is down
    │   ├── DatabaseUnavailableError    69  503
    │   └── PostgresBinariesMissingError 69 503
    ├── mesh.tailscale.TailscaleError   70  500  the tailscale CLI failed; also one of:
    │   ├── TailscaleUnavailableError, TailscaleCommandError, TailscaleTimeoutError
    │   │                               69  503  (DependencyError)
    │   ├── TailscaleStateError          1  409  (StateError)
    │   └── PeerNotFoundError            1  404  (NotFoundError)
    ├── ingress.signatures.SignatureError 77 401 not signed by the source, or out of its window
    ├── vault.SecretIntegrityError       1  500  a secret does not decrypt in its scope
    ├── isolation.channel.ChannelError  70  500  a tool process broke the channel's protocol
    ├── isolation.supervisor.ToolProcessError  70 500  a tool's process crashed or hit a limit
    ├── isolation.supervisor.ToolFailedError    1 500  the tool raised an error in its process
    ├── LockedError                     75  503  try again later
    ├── NotAllowedError                 77  403
    │   ├── RunAsRootError              77  403
    │   ├── leases.LeaseRefusedError    77  403  a lease spent, expired, or outside its call's scope
    │   ├── DeniedError                 77  403  a step was denied and the policy fails the task
    │   │                                        (permanent)
    │   └── TenantIsolationError        77  403  a row of another tenant, in a tenant's context
    │                                            (permanent)
    ├── SchemaError                     78  500  migrations drifted or are missing
    ├── AuditChainError                  1  500  the audit chain does not verify
    │   └── AuditReplayError             1  500  a task's audit entries do not rebuild its
    │                                            checkpoints
    └── EngineError                     70  500
        ├── NonDeterminismError         70  500  (permanent)
        ├── LeaseLostError              75  409
        ├── ChainContentionError        75  409
        ├── StepFailedError             70  500
        └── WaitError                   75  409
            ├── BudgetExceededError     75  402
            └── ApprovalPendingError    75  409
"""

from __future__ import annotations


class ApplianceError(Exception):
    """An unexpected error inside the appliance."""

    exit_code: int = 70
    http_status: int = 500
    permanent: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(ApplianceError):
    """The command line is not valid."""

    exit_code = 2
    http_status = 400


class ConfigError(ApplianceError):
    """The configuration is not valid."""

    exit_code = 78


class MissingSecretError(ConfigError):
    """The configuration names a secret that is not in the vault."""


class ConfinementError(ConfigError):
    """A tool process cannot be confined as configured (`isolation.confinement`)."""


class DuplicateNameError(ConfigError):
    """Two workflows, or two tools, are registered under one name."""


class InputError(ApplianceError):
    """The input data is not valid."""

    exit_code = 65
    http_status = 400
    permanent = True


class UnknownWorkflowError(InputError):
    """No workflow is registered under that name."""

    http_status = 404


class UnknownTenantError(InputError):
    """No tenant exists with that id."""

    http_status = 404


class UnknownAgentError(InputError):
    """No agent is defined under that name."""

    http_status = 404


class UnknownToolError(InputError):
    """No tool is registered under that name."""

    http_status = 404


class MissingInputError(InputError, KeyError):
    """The task input lacks a key the workflow needs.

    Also a KeyError, so a workflow's `except KeyError` around `task_input[key]` still works.
    """

    def __str__(self) -> str:
        return self.message  # not KeyError's repr of it


class ReadOnlyInputError(InputError, TypeError):
    """A workflow tried to change its task input, which is the same on every attempt."""


class IdempotencyConflictError(InputError):
    """That idempotency key was already used for a different request."""

    http_status = 409


class NotFoundError(ApplianceError):
    """The thing asked for does not exist."""

    exit_code = 1
    http_status = 404


class StateError(ApplianceError):
    """That is not possible in the current state."""

    exit_code = 1
    http_status = 409


class ReplayMismatchError(StateError):
    """The workflow's code no longer produces the steps the replay would reuse."""


class DependencyError(ApplianceError):
    """A service the appliance depends on is unavailable."""

    exit_code = 69
    http_status = 503


class DatabaseUnavailableError(DependencyError):
    """Postgres cannot be reached."""


class PostgresBinariesMissingError(DependencyError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed."""


class LockedError(ApplianceError):
    """Another process holds the lock; try again later."""

    exit_code = 75
    http_status = 503


class NotAllowedError(ApplianceError):
    """That is not allowed."""

    exit_code = 77
    http_status = 403


class RunAsRootError(NotAllowedError):
    """PostgreSQL refuses to run as root."""


class DeniedError(NotAllowedError):
    """A step was denied (by people or a timeout) and the policy says the task fails."""

    permanent = True


class TenantIsolationError(NotAllowedError):
    """The row belongs to another tenant than the transaction's (row-level security)."""

    permanent = True


class SchemaError(ApplianceError):
    """The database schema does not match the migrations shipped with this version."""

    exit_code = 78


class AuditChainError(ApplianceError):
    """The audit chain does not verify."""

    exit_code = 1


class AuditReplayError(AuditChainError):
    """The task's audit entries do not rebuild its checkpoints."""


class EngineError(ApplianceError):
    """The task engine hit an internal error."""


class NonDeterminismError(EngineError):
    """A workflow replayed a different step than the one checkpointed at that position."""

    permanent = True


class LeaseLostError(EngineError):
    """This worker no longer holds the task's lease; another worker has taken it over."""

    exit_code = 75
    http_status = 409


class ChainContentionError(EngineError):
    """Another writer appended to the same audit chain at the same moment; retry the write."""

    exit_code = 75
    http_status = 409


class StepFailedError(EngineError):
    """A step failed; replayed from its checkpoint when its own exception type is not at hand."""


class WaitError(EngineError):
    """The task cannot go on until something outside it changes; it waits (state `waiting`).

    `reason` is stored as the task's wait_reason, visible in `appliance task show`; its prefix
    (up to the first ':') names what resumes it.
    """

    exit_code = 75
    http_status = 409

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExceededError(WaitError):
    """A model call could exceed a budget; the task waits until the budget is raised."""

    http_status = 402


class ApprovalPendingError(WaitError):
    """A step waits for a person's approval; the task waits until the request is decided."""
