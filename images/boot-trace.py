#!/usr/bin/env python3
"""Boot an image with plain qemu (no libvirt) and print every console line with the host time since
qemu was started, to see where a boot spends its time (images/README.md, "Boot tuning").

    images/boot-trace.py <variant> [--machine pc] [--cpu qemu64] [--memory 512] [--append ARGS]
                         [--qemu-arg ARG]... [--seed-agent PATH]

The seed volume carries a stub `minion-agent` that prints a marker and powers off (or PATH). The
kernel's own messages are shown (loglevel=8 overrides the manifest's `quiet`) unless --quiet.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

IMAGES = os.environ.get("MINION_IMAGES", "/var/cache/minion/images")
STUB = """#!/bin/sh
echo MINION-TRACE-MARKER > /dev/console
if [ $$ = 1 ]; then
    [ -x /bin/busybox ] && /bin/busybox poweroff -f
    exec python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'
else
    systemctl poweroff --no-block
fi
sleep 60
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant")
    ap.add_argument("--machine", default="q35")
    ap.add_argument("--cpu", default="qemu64")
    ap.add_argument("--memory", default="512")
    ap.add_argument("--append", default="", help="appended to the manifest's cmdline")
    ap.add_argument("--quiet", action="store_true", help="keep the manifest's quiet")
    ap.add_argument("--qemu-arg", action="append", default=[])
    ap.add_argument("--seed-agent", help="binary to put on the seed as minion-agent")
    ap.add_argument("--no-rng", action="store_true", help="no virtio-rng device")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    img = os.path.join(IMAGES, a.variant)
    with open(os.path.join(img, "manifest.json")) as f:
        m = json.load(f)
    work = tempfile.mkdtemp(prefix="minion-trace.")
    try:
        seed = os.path.join(work, "seed")
        os.mkdir(seed)
        agent = os.path.join(seed, "minion-agent")
        if a.seed_agent:
            shutil.copy(a.seed_agent, agent)
        else:
            with open(agent, "w") as f:
                f.write(STUB)
        os.chmod(agent, 0o755)
        with open(os.path.join(seed, "meta-data"), "w") as f:
            f.write("instance-id: trace\nlocal-hostname: minion\n")
        with open(os.path.join(seed, "user-data"), "w") as f:
            f.write("#cloud-config\n{}\n")
        iso = os.path.join(work, "seed.iso")
        subprocess.run(["genisoimage", "-quiet", "-V", "cidata", "-J", "-r", "-o", iso, seed], check=True)
        overlay = os.path.join(work, "overlay.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(img, m["disk"]),
                        "-F", "qcow2", overlay], check=True)
        cmdline = m["cmdline"] + ("" if a.quiet else " loglevel=8") + (" " + a.append if a.append else "")
        if a.machine.startswith("microvm"):
            bus = "device"
            serial = ["virtio-serial-device"]
        else:
            bus = "pci"
            serial = ["virtio-serial-pci"]
        argv = ["qemu-system-x86_64", "-machine", a.machine, "-accel", "tcg", "-cpu", a.cpu,
                "-m", a.memory, "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-serial", "stdio",
                "-kernel", os.path.join(img, m["kernel"]), "-append", cmdline,
                "-blockdev", f"driver=qcow2,node-name=root,file.driver=file,file.filename={overlay}",
                "-device", f"virtio-blk-{bus},drive=root",
                "-blockdev", f"driver=raw,node-name=seed,read-only=on,file.driver=file,file.filename={iso}",
                "-device", f"virtio-blk-{bus},drive=seed",
                "-device", serial[0] + ",id=vser",
                "-chardev", f"socket,id=ch0,path={work}/channel.sock,server=on,wait=off",
                "-device", "virtserialport,bus=vser.0,chardev=ch0,name=org.minion.agent.0"]
        if not a.no_rng:
            argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                     "-device", f"virtio-rng-{bus},rng=rng0"]
        if m.get("initrd"):
            argv += ["-initrd", os.path.join(img, m["initrd"])]
        argv += a.qemu_arg
        print("# " + " ".join(argv), flush=True)
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        marker = None
        buf = b""
        assert p.stdout is not None
        while True:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                t = time.monotonic() - t0
                text = line.decode(errors="replace").rstrip("\r")
                print(f"{t:7.3f} {text}", flush=True)
                if marker is None and "MINION-TRACE-MARKER" in text:
                    marker = t
            if time.monotonic() - t0 > a.timeout:
                p.kill()
                break
        p.wait()
        end = time.monotonic() - t0
        print(f"# qemu start → marker {marker if marker is None else f'{marker:.3f}'} s, → exit {end:.3f} s")
        return 0 if marker is not None else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
