"""The daemon under launchd (macOS), which cannot tell one exit status from another.

launchd restarts a KeepAlive job by whether it exited 0 (`KeepAlive {SuccessfulExit: false}`),
never by which status it exited with. A misconfigured daemon exits 78, and systemd leaves it
stopped (`RestartPreventExitStatus=78`); launchd would restart it every ThrottleInterval
forever. So under the job launchd/com.appliance.daemon.plist, which sets
`APPLIANCE_SUPERVISOR=launchd`, exit 78 becomes exit 0, after a line that says so: launchd
leaves the daemon stopped, `launchctl print system/com.appliance.daemon` shows last exit code
0, and the log's last lines name the setting to fix. Every other status is kept, so a crash or
an unreachable Postgres (69) is restarted as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from appliance import errors

SUPERVISOR = "APPLIANCE_SUPERVISOR"
LABEL = "com.appliance.daemon"


def exit_code(code: int, environ: Mapping[str, str] | None = None) -> int:
    """The status to exit with: 0 for a configuration error under launchd, else `code`."""
    env = os.environ if environ is None else environ
    if code != errors.ConfigError.exit_code or env.get(SUPERVISOR) != "launchd":
        return code
    sys.stderr.write(
        f"appliance: stopped for good (exit 0, not {code}, so that launchd does not restart "
        f"a misconfigured daemon): fix the configuration, then run "
        f"`sudo launchctl kickstart -k system/{LABEL}`\n"
    )
    return 0
