#!/usr/bin/env python3
"""Cuts a distroless-like root filesystem out of a Debian minbase tree.

Usage: base-rootfs.py DEBOOTSTRAP_DIR OUT.tar

Keeps only what gcr.io/distroless/cc-debian12 holds and botfleet needs at run
time: glibc and libgcc (the binaries' only shared libraries, see `ldd`), the CA
certificates, os-release, /etc/services and /etc/protocols, and a passwd/group
with root, nobody and nonroot (65532), the user the image runs as. No shell, no
package manager, no coreutils. Entries are owned by root (the home directory by
nonroot) and carry the tree's modes; timestamps are fixed so the same tree gives
the same archive. Layout reference:
https://github.com/GoogleContainerTools/distroless/blob/main/base/README.md
"""

import io
import os
import stat
import sys
import tarfile

# Debian packages whose files are kept (from dpkg's lists in the tree).
PACKAGES = ["libc6", "libgcc-s1", "base-files", "netbase", "ca-certificates"]
# Parts of those packages nobody needs in a container.
DROP_PREFIXES = ("usr/share/doc/", "usr/share/lintian/", "usr/share/man/", "usr/share/info/",
                 "usr/share/base-files/", "usr/share/common-licenses/", "usr/sbin/", "usr/bin/",
                 "usr/share/ca-certificates/", "etc/profile", "etc/dot.", "etc/skel",
                 "etc/update-motd.d", "etc/issue", "etc/motd", "etc/ld.so.conf", "etc/bash",
                 "var/lib/dpkg/")
MTIME = 0
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                  "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    "etc/group": "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
DIRS = {"tmp": 0o1777, "root": 0o700, "home/nonroot": 0o700, "etc/ssl/certs": 0o755,
        "usr/local/bin": 0o755, "var/tmp": 0o1777}


def resolve(root: str, rel: str) -> str:
    """`rel` with every symlink in its parent directories followed inside `root`
    (Debian 12 is merged-/usr: dpkg lists /lib/x86_64-linux-gnu/libc.so.6, which
    lives in usr/lib/...)."""
    parent, name = os.path.split(rel)
    real_parent = os.path.realpath(os.path.join(root, parent))
    out = os.path.relpath(os.path.join(real_parent, name), root)
    if out.startswith(".."):
        raise SystemExit(f"{rel} resolves outside the tree")
    return out


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    root, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    keep: set[str] = set()
    for pkg in PACKAGES:
        listing = os.path.join(root, "var/lib/dpkg/info", f"{pkg}:amd64.list")
        if not os.path.exists(listing):
            listing = os.path.join(root, "var/lib/dpkg/info", f"{pkg}.list")
        with open(listing, encoding="utf-8") as f:
            for line in f:
                rel = line.strip().lstrip("/")
                if not rel or rel == ".":
                    continue
                path = resolve(root, rel)
                if path.startswith(DROP_PREFIXES):
                    continue
                if os.path.lexists(os.path.join(root, path)):
                    keep.add(path)
    # update-ca-certificates writes the bundle; dpkg does not list it. The
    # per-certificate links point into usr/share/ca-certificates, left out.
    keep.add("etc/ssl/certs/ca-certificates.crt")
    # The merged-/usr links at the top (lib, lib64, bin, sbin -> usr/...).
    for name in os.listdir(root):
        if os.path.islink(os.path.join(root, name)):
            keep.add(name)
    # Every parent directory of a kept entry.
    for path in list(keep):
        parent = os.path.dirname(path)
        while parent:
            keep.add(parent)
            parent = os.path.dirname(parent)
    keep -= set(FILES) | set(DIRS)

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name: str, mode: int, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.uid, info.gid = tarfile.DIRTYPE, mode, MTIME, uid, uid
            tar.addfile(info)

        for path in sorted(keep):
            full = os.path.join(root, path)
            st = os.lstat(full)
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid = stat.S_IMODE(st.st_mode), MTIME, 0, 0
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
        for name, mode in sorted(DIRS.items()):
            add_dir(name, mode, 65532 if name == "home/nonroot" else 0)
        for name, text in sorted(FILES.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
    print(f"{out}: {len(keep) + len(FILES) + len(DIRS)} entries")


if __name__ == "__main__":
    main()
