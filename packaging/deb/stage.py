"""Fix-ups and checks of the staged package tree, for packaging/deb/build.sh (stdlib only).

    stage.py relocate STAGE VENV   scripts of STAGE/VENV/bin start with #!VENV/bin/python and
                                   their RECORD entries match; pyvenv.cfg names no STAGE path
    stage.py elf STAGE             refuses an ELF file that asks for an executable stack (it
                                   breaks under MemoryDenyWriteExecute=); prints the highest
                                   GLIBC_2.N any of them needs (the package's libc6 dependency)
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import sys
from pathlib import Path

_GLIBC = re.compile(rb"GLIBC_2\.(\d+)")
_PT_GNU_STACK = 0x6474E551
_PF_X = 1


def relocate(stage: Path, venv: str) -> None:
    """Point the console scripts at the installed interpreter and keep RECORD truthful."""
    root = stage / venv.lstrip("/")
    staged = f"#!{root}/bin/python".encode()
    changed: dict[str, bytes] = {}
    for script in sorted((root / "bin").iterdir()):
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        first, newline, rest = data.partition(b"\n")
        if first.startswith(staged):
            data = f"#!{venv}/bin/python".encode() + newline + rest
            script.write_bytes(data)
            changed[script.name] = data
    for record in sorted(root.glob("lib/python3*/site-packages/*.dist-info/RECORD")):
        lines = record.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            path, _, _ = line.partition(",")
            name = path.rsplit("/", 1)[-1]
            if path.startswith("../../../bin/") and name in changed:
                data = changed[name]
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                lines[index] = f"{path},sha256={digest.decode()},{len(data)}"
        record.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = root / "pyvenv.cfg"
    config.write_text(config.read_text(encoding="utf-8").replace(str(stage), ""), "utf-8")


def _executable_stack(data: bytes) -> bool:
    """True when a 64-bit little-endian ELF has a PT_GNU_STACK header with PF_X (or none)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        kind, flags = struct.unpack_from("<II", data, phoff + index * phentsize)
        if kind == _PT_GNU_STACK:
            return bool(flags & _PF_X)
    return True  # no header: the loader gives an executable stack


def elf(stage: Path) -> int:
    """Exit 1 naming each ELF file with an executable stack; print the GLIBC version needed."""
    highest = 0
    bad = []
    for path in sorted(stage.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as file:
            if file.read(4) != b"\x7fELF":
                continue
        data = path.read_bytes()
        if _executable_stack(data):
            bad.append(str(path.relative_to(stage)))
        highest = max([highest, *(int(m) for m in _GLIBC.findall(data))])
    if bad:
        print("executable stack (breaks MemoryDenyWriteExecute=): " + ", ".join(bad), file=sys.stderr)
        return 1
    print(f"2.{highest}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "relocate":
        relocate(Path(argv[1]), argv[2])
        return 0
    if len(argv) == 2 and argv[0] == "elf":
        return elf(Path(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
