#!/usr/bin/env python3
"""An mtree-style listing of a directory tree, to compare two unpackings of one image.

One line per entry, sorted by path:
  PATH type=T mode=OOOO uid=U gid=G [size=N sha256=H] [link=TARGET] [rdev=MAJ,MIN]
       [mtime=S] [xattr.NAME=SHA256-OF-VALUE ...] [hardlink=FIRST-PATH]
Directories' times are left out with --no-dir-times (whiteouts change them); hardlink= names
the first path (in sorted order) of the same inode, so link groups compare across trees.
Names are written with backslash escapes for anything outside printable ASCII.
"""
import argparse
import hashlib
import os
import stat
import sys

TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link",
         stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
         stat.S_IFSOCK: "socket"}


def esc(b):
    out = []
    for c in b:
        if 0x21 <= c < 0x7F and c != 0x5C:
            out.append(chr(c))
        else:
            out.append("\\%03o" % c)
    return "".join(out)


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def xattrs(path):
    out = []
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in sorted(names):
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
        out.append("xattr.%s=%s" % (n, hashlib.sha256(v).hexdigest()[:16]))
    return out


def walk(root):
    root = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), full


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--no-dir-times", action="store_true")
    args = p.parse_args()
    entries = sorted(walk(args.root))
    first_of_inode = {}
    lines = []
    for rel, full in entries:
        st = os.lstat(full)
        kind = TYPES.get(stat.S_IFMT(st.st_mode), "other")
        f = ["type=" + kind, "mode=%04o" % stat.S_IMODE(st.st_mode), "uid=%d" % st.st_uid,
             "gid=%d" % st.st_gid]
        if kind == "file":
            f += ["size=%d" % st.st_size, "sha256=" + digest(full)]
        elif kind == "link":
            f.append("link=" + esc(os.readlink(full)))
        elif kind in ("char", "block"):
            f.append("rdev=%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        if kind != "dir" or not args.no_dir_times:
            f.append("mtime=%d" % int(st.st_mtime))
        f += xattrs(full)
        if kind != "dir" and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = first_of_inode.setdefault(key, rel)
            if first != rel:
                f.append("hardlink=" + esc(first))
        lines.append(esc(rel) + " " + " ".join(f))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
