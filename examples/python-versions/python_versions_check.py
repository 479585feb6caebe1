"""Finds binary packages that require both Python 2 and Python 3 (what python-versions checks).

Reads each RPM's header with rpm's own Python bindings and returns ResultYAML.
"""
import os

import rpm


def requires(path):
    ts = rpm.TransactionSet()
    # Test and scratch builds are unsigned: read the header without checking signatures.
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    with open(path, "rb") as f:
        hdr = ts.hdrFromFdno(f.fileno())
    names = [r.decode() if isinstance(r, bytes) else r for r in hdr[rpm.RPMTAG_REQUIRENAME]]
    versions = [v.decode() if isinstance(v, bytes) else v for v in hdr[rpm.RPMTAG_REQUIREVERSION]]
    name = hdr[rpm.RPMTAG_NAME]
    return (name.decode() if isinstance(name, bytes) else name), list(zip(names, versions))


def pythons(reqs):
    found = set()
    for name, version in reqs:
        if name == "python(abi)" and version:
            found.add(version.split(".")[0])
        elif name.startswith("python2") or name == "/usr/bin/python2":
            found.add("2")
        elif name.startswith("python3") or name == "/usr/bin/python3":
            found.add("3")
    return found


def run(koji_build, rpms, artifactsdir):
    lines = []
    both = []
    checked = 0
    for path in sorted(rpms["downloaded_rpms"]):
        if path.endswith(".src.rpm"):
            continue
        name, reqs = requires(path)
        found = pythons(reqs)
        checked += 1
        lines.append("%s: python %s" % (name, ", ".join(sorted(found)) or "none"))
        if found >= {"2", "3"}:
            both.append(name)
    log = os.path.join(artifactsdir, "python-versions.log")
    with open(log, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    outcome = "FAILED" if both else "PASSED"
    note = "requires both Python 2 and 3: %s" % ", ".join(both) if both else "%d package(s) checked" % checked
    return (
        "results:\n"
        "  - item: %s\n"
        "    type: koji_build\n"
        "    checkname: python-versions\n"
        "    outcome: %s\n"
        "    note: '%s'\n"
        "    artifact: %s\n"
        "    packages_checked: %d\n" % (koji_build, outcome, note, log, checked)
    )
