#!/bin/sh
# /usr/lib/appliance/setup: creates what the appliance daemon needs and cannot create itself,
# where it is missing, and never replaces what exists; safe to run again. Run as root by the
# package's postinst and, at boot, by appliance-setup.service (for a package installed while
# PostgreSQL was not running, e.g. into an image).
#
# 1. the system user `appliance` and its state directory /var/lib/appliance (0700);
# 2. the vault master key: 32 random bytes encrypted as the systemd credential
#    /etc/credstore.encrypted/appliance-vault-key (TPM2 and/or the host key); where
#    systemd-creds cannot encrypt, a 0600 key file plus a drop-in that makes the daemon read it;
# 3. PostgreSQL: no TCP listener for the cluster on port 5432 (conf.d/50-appliance.conf), the
#    role `appliance` (peer authentication: the OS user of the same name, no password), the
#    role `appliance_tenant` granted to it (row-level security), the database `appliance`;
# 4. `appliance init`: the schema (migrations), the vault's key record, the default tenant.
set -eu

NAME=appliance
STATE=/var/lib/appliance
CREDENTIAL=/etc/credstore.encrypted/appliance-vault-key
KEY_FILE=$STATE/vault.key
DROP_IN=/etc/systemd/system/appliance.service.d/50-vault-key-file.conf
PG_PORT=5432
PG_CONF=50-appliance.conf

say() { echo "appliance-setup: $*" >&2; }

systemd_runs() { [ -d /run/systemd/system ]; }

ensure_user() {
	if ! getent passwd "$NAME" >/dev/null; then
		adduser --system --group --home "$STATE" --no-create-home --quiet "$NAME"
		say "created the system user $NAME"
	fi
	install -d -o "$NAME" -g "$NAME" -m 0700 "$STATE" "$STATE/backups"
}

ensure_vault_key() {
	if [ -e "$CREDENTIAL" ] || [ -e "$KEY_FILE" ]; then
		return 0
	fi
	install -d -m 0700 "$(dirname "$CREDENTIAL")"
	# The key exists only in this pipe and, encrypted, in the credential.
	if head -c 32 /dev/urandom |
		systemd-creds encrypt --name="$NAME-vault-key" --with-key=auto - "$CREDENTIAL.new" 2>/dev/null; then
		chmod 0600 "$CREDENTIAL.new"
		mv "$CREDENTIAL.new" "$CREDENTIAL"
		say "vault key: new systemd credential $CREDENTIAL"
		return 0
	fi
	rm -f "$CREDENTIAL.new"
	(umask 077 && head -c 32 /dev/urandom >"$KEY_FILE.new")
	chown "$NAME:$NAME" "$KEY_FILE.new"
	mv "$KEY_FILE.new" "$KEY_FILE"
	install -d -m 0755 "$(dirname "$DROP_IN")"
	cat >"$DROP_IN" <<'CONF'
# Written by /usr/lib/appliance/setup: systemd-creds could not encrypt on this host, so the
# vault key is the 0600 file /var/lib/appliance/vault.key instead of a credential.
[Service]
LoadCredentialEncrypted=
Environment=APPLIANCE_VAULT__SOURCE=file
CONF
	if systemd_runs; then
		systemctl daemon-reload
	fi
	say "vault key: systemd-creds cannot encrypt here; new key file $KEY_FILE (mode 0600)"
}

# Prints "<version> <cluster> <status>" of the cluster on $PG_PORT, or nothing.
pg_cluster() {
	pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

ensure_database() {
	if ! command -v pg_lsclusters >/dev/null 2>&1; then
		say "PostgreSQL is not installed: apt-get install postgresql, then run $0"
		return 1
	fi
	cluster=$(pg_cluster)
	if [ -z "$cluster" ]; then
		say "no PostgreSQL cluster on port $PG_PORT (pg_lsclusters); create one: pg_createcluster --start 15 main"
		return 1
	fi
	# shellcheck disable=SC2086 # three words: version, cluster name, status
	set -- $cluster
	version=$1 name=$2 status=$3
	conf=/etc/postgresql/$version/$name/conf.d/$PG_CONF
	restart=no
	if [ ! -e "$conf" ]; then
		printf "%s\n%s\n" "# Written by /usr/lib/appliance/setup: unix socket only, no TCP port." \
			"listen_addresses = ''" >"$conf"
		restart=yes
		say "PostgreSQL $version/$name: no TCP listener ($conf)"
	fi
	if [ "$status" != online ] && ! systemd_runs; then
		say "PostgreSQL is not running: appliance-setup.service creates the database at boot"
		return 2
	fi
	if [ "$status" != online ] || [ "$restart" = yes ]; then
		if systemd_runs; then
			systemctl restart "postgresql@$version-$name.service"
		else
			pg_ctlcluster "$version" "$name" restart
		fi
	fi
	runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SELECT 'CREATE ROLE appliance LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'appliance') \gexec
SELECT 'CREATE ROLE appliance_tenant NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'appliance_tenant') \gexec
SELECT 'GRANT appliance_tenant TO appliance'
 WHERE NOT pg_has_role('appliance', 'appliance_tenant', 'MEMBER') \gexec
SELECT 'CREATE DATABASE appliance OWNER appliance'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'appliance') \gexec
SQL
}

ensure_user
ensure_vault_key
database=0
ensure_database || database=$?
case $database in
0) /usr/bin/appliance init >&2 ;;
2) exit 0 ;;
*) exit 1 ;;
esac
