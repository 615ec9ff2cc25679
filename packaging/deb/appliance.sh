#!/bin/sh
# /usr/bin/appliance: operator commands on the packaged box run as the service user (the
# database role of the same name, through peer authentication) with the vault key the service
# gets (its systemd credential), whoever calls them: as root, through a transient systemd unit;
# as another user, directly. Values are read from stdin or from files the user appliance can
# read. The daemon itself is /usr/lib/appliance/venv/bin/appliance (appliance.service).
set -eu
EXE=/usr/lib/appliance/venv/bin/appliance
CREDENTIAL=/etc/credstore.encrypted/appliance-vault-key

if [ "$(id -u)" != 0 ]; then
	exec "$EXE" "$@"
fi
if [ -d /run/systemd/system ]; then
	set -- --quiet --wait --pipe --collect --service-type=exec \
		--uid=appliance --gid=appliance \
		--property=WorkingDirectory=-"$PWD" \
		--setenv=SUDO_USER="${SUDO_USER:-root}" \
		-- "$EXE" "$@"
	if [ -e "$CREDENTIAL" ]; then
		set -- --property=LoadCredentialEncrypted=appliance-vault-key:"$CREDENTIAL" "$@"
	fi
	for name in $(env | sed -n 's/^\(APPLIANCE_[A-Za-z0-9_]*\)=.*/\1/p'); do
		set -- --setenv="$name" "$@"
	done
	exec systemd-run "$@"
fi
exec runuser -u appliance -- "$EXE" "$@"
