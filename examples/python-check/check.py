"""A tiny check: is the NVR well formed? Returns ResultYAML (no PyYAML needed)."""
import os
import re


def run(nvr, artifactsdir):
    ok = re.match(r"^.+-[^-]+-[^-]+$", nvr) is not None
    log = os.path.join(artifactsdir, "python-check.log")
    with open(log, "w") as f:
        f.write("nvr %s well formed: %s\n" % (nvr, ok))
    print("checked", nvr, "->", "PASSED" if ok else "FAILED")
    return (
        "results:\n"
        "  - item: %s\n"
        "    type: koji_build\n"
        "    checkname: nvr_format\n"
        "    outcome: %s\n"
        "    note: checked by python-check\n"
        "    artifact: python-check.log\n" % (nvr, "PASSED" if ok else "FAILED")
    )
