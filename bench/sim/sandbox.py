"""An Android-looking root for the emulated phone's shell commands and file transfers.

The root is a folder (under the sim's state dir) with /data/local/tmp (writable, executable),
/system/bin shims (getprop, dumpsys, logcat), a /sys tree of plain files the physics loop keeps
current, and the host's /usr, /etc (read-only) and /dev bound in; /proc is its own where the host
allows. A long-lived holder process owns an unprivileged user + mount (+ PID) namespace with those
binds; each command enters it with nsenter and chroots into the root, so commands see Android
paths and nothing of the host outside the sandbox is written."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .physics import PhoneState
from .render import battery_uevent, dumpsys_battery, dumpsys_thermalservice, getprop, status_word

# `bench capture` file -> where the sandbox keeps it
REPLAY_FILES = {"getprop.txt": "sim/state/getprop.txt", "dumpsys_battery.txt": "sim/state/dumpsys_battery.txt",
                "dumpsys_thermalservice.txt": "sim/state/dumpsys_thermalservice.txt",
                "proc_meminfo.txt": "sim/replay/proc_meminfo.txt"}
SHELL_CANDIDATES = ("/usr/bin/mksh", "/bin/mksh", "/usr/bin/bash", "/bin/bash")
ENV = {
    "PATH": "/system/bin:/system/xbin:/vendor/bin:/usr/bin:/bin",
    "HOME": "/",
    "TMPDIR": "/data/local/tmp",  # mksh writes here-documents there; Android has no /tmp
    "ANDROID_DATA": "/data",
    "ANDROID_ROOT": "/system",
    "LANG": "C.UTF-8",
}

_GETPROP = r"""#!/system/bin/sh
# getprop [KEY]: all properties as "[key]: [value]", or one value
if [ $# -eq 0 ]; then exec cat /sim/state/getprop.txt; fi
while IFS= read -r line; do
  case "$line" in "[$1]: ["*) v=${line#*]: [}; echo "${v%]}"; exit 0;; esac
done < /sim/state/getprop.txt
echo
"""

_DUMPSYS = r"""#!/system/bin/sh
# dumpsys SERVICE [ARGS]: battery (with unplug/reset/set), thermalservice, meminfo PID, power
service=$1; [ $# -gt 0 ] && shift
case "$service" in
  battery)
    if [ $# -eq 0 ]; then exec cat /sim/state/dumpsys_battery.txt; fi
    # Hand the arguments to the physics loop and wait until it has applied them, as
    # BatteryService does synchronously.
    id=$$.${RANDOM:-0}
    printf '%s\n' "$*" > /sim/control/.$id.tmp && mv /sim/control/.$id.tmp /sim/control/$id.cmd
    n=0
    while [ -e /sim/control/$id.cmd ] && [ $n -lt 100 ]; do sleep 0.02; n=$((n+1)); done
    [ -f /sim/control/$id.out ] && cat /sim/control/$id.out && rm -f /sim/control/$id.out
    exit 0;;
  thermalservice) exec cat /sim/state/dumpsys_thermalservice.txt;;
  meminfo)
    pid=$1
    if [ -z "$pid" ] || [ ! -r /proc/$pid/status ]; then echo "No process found for: $pid"; exit 0; fi
    rss=0; swap=0; name=?
    while IFS= read -r line; do
      set -- $line
      case "$1" in Name:) name=$2;; VmRSS:) rss=$2;; VmSwap:) swap=$2;; esac
    done < /proc/$pid/status
    echo "Applications Memory Usage (in Kilobytes):"
    echo "Uptime: 0 Realtime: 0"
    echo "                   Pss  Private  Private     Swap      Rss     Heap     Heap     Heap"
    echo "                 Total    Dirty    Clean    Dirty    Total     Size    Alloc     Free"
    echo "                ------   ------   ------   ------   ------   ------   ------   ------"
    printf '        TOTAL %8d %8d %8d %8d %8d %8d %8d %8d\n' $rss $rss 0 $swap $rss 0 0 0
    exit 0;;
  power) exec cat /sim/state/dumpsys_power.txt;;
  android.hardware.power.stats.IPowerStats/default)
    [ -r /sim/state/power_stats.txt ] || { echo "Can't find service: $service"; exit 0; }
    if [ -r /sim/state/rail_glitch ]; then
      read -r glitches < /sim/state/rail_glitch
      if [ "${glitches:-0}" -gt 0 ]; then
        echo $((glitches - 1)) > /sim/state/rail_glitch
        echo "Error: the HAL did not answer (binder transaction failed)"; exit 255
      fi
    fi
    # The PowerStats HAL's energy meter dump (Pixel format); "delta" adds the change since the
    # previous delta dump, as the HAL does.
    now=${EPOCHREALTIME:-0}
    echo
    echo "============= PowerStats HAL 2.0 energy meter =============="
    if [ "$1" = delta ]; then
      awk -v now="$now" -v prevfile=/sim/state/power_stats.prev 'BEGIN {
            while ((getline line < prevfile) > 0) { split(line, f, " "); if (f[1] == "T") then_ = f[2]; else prev[f[1]] = f[2] }
            if (then_ == "") then_ = now
            printf "Elapsed time: %d ms  %32s   %18s (%14s)\n", (now - then_) * 1000, "Channel", "Cumulative Energy", "Delta   " }
          { d = ($1 in prev) ? $2 - prev[$1] : 0; printf "  %32s   %14.2f mWs (%14.2f)\n", $1, $2 / 1000, d / 1000 }' /sim/state/power_stats.txt
      { echo "T $now"; cat /sim/state/power_stats.txt; } > /sim/state/.power_stats.prev.$$ && mv /sim/state/.power_stats.prev.$$ /sim/state/power_stats.prev
    else
      awk 'BEGIN { printf "  %32s   %18s\n", "Channel", "Cumulative Energy" } { printf "  %32s   %14.2f mWs\n", $1, $2 / 1000 }' /sim/state/power_stats.txt
    fi
    echo "========== End of PowerStats HAL 2.0 energy meter =========="
    exit 0;;
  *) echo "Can't find service: $service"; exit 0;;
esac
"""

_CMD = r"""#!/system/bin/sh
# cmd SERVICE ...: what the sim models: power set-fixed-performance-mode-enabled true|false
if [ "$1" = power ] && [ "$2" = set-fixed-performance-mode-enabled ]; then
  if [ "$3" = false ] && [ -r /sim/state/performance_stuck ]; then
    read -r stuck < /sim/state/performance_stuck
    if [ "${stuck:-0}" -gt 0 ]; then
      echo $((stuck - 1)) > /sim/state/performance_stuck
      echo "Error: the power HAL did not answer (binder transaction failed)"; exit 255
    fi
  fi
  id=$$.${RANDOM:-0}
  printf 'cmd %s\n' "$*" > /sim/control/.$id.tmp && mv /sim/control/.$id.tmp /sim/control/$id.cmd
  n=0
  while [ -e /sim/control/$id.cmd ] && [ $n -lt 100 ]; do sleep 0.02; n=$((n+1)); done
  if [ -f /sim/control/$id.out ]; then cat /sim/control/$id.out; rm -f /sim/control/$id.out; exit 255; fi
  exit 0
fi
echo "cmd: Can't find service: $1"
exit 20
"""

_LOGCAT = r"""#!/system/bin/sh
# logcat [-c] [-d] [-v FORMAT] [-b BUFFERS] [-t N] [FILTERSPEC...]: the sim keeps one buffer,
# /sim/state/logcat.txt (threadtime lines). -c clears it, -d or -t N prints and exits, and without
# them logcat follows the buffer until it is stopped, as on a phone.
buffer=/sim/state/logcat.txt; dump=; clear=; last=
while [ $# -gt 0 ]; do
  case "$1" in
    -c) clear=1;;
    -d) dump=1;;
    -t) shift; last=$1; dump=1;;
    -v|-b|-T|-e|-m|-n|-r|-f|-G|--pid) shift;;
    -v*|-b*|-t*|-s|-D|-B|-S|-g|-L) ;;
    -*) echo "logcat: unknown option $1" >&2; exit 1;;
  esac
  shift
done
if [ -n "$clear" ]; then : > $buffer; exit 0; fi
if [ -n "$dump" ]; then
  if [ -n "$last" ]; then exec tail -n "$last" $buffer; fi
  exec cat $buffer
fi
exec tail -n +1 -F $buffer 2>/dev/null
"""

_LOG = r"""#!/system/bin/sh
# log [-p PRIORITY] [-t TAG] MESSAGE...: one line into the logcat buffer
priority=I; tag=log
while [ $# -gt 0 ]; do
  case "$1" in
    -p) shift; priority=$(printf '%s' "$1" | cut -c1 | tr a-z A-Z);;
    -t) shift; tag=$1;;
    --) shift; break;;
    *) break;;
  esac
  shift
done
printf '%s %5d %5d %s %s: %s\n' "$(date +'%m-%d %H:%M:%S.000')" $$ $$ "$priority" "$tag" "$*" >> /sim/state/logcat.txt
"""

# The adb shell's identity on a phone (toybox id): uid 2000 (shell), or root inside su. The sim's
# processes really run as the sandbox's root; what they are told is what a phone tells them.
_ID = r"""#!/system/bin/sh
if [ -n "$SIM_SU" ]; then u=0 n=root; else u=2000 n=shell; fi
case "$1" in
  -u) echo $u;;
  -un) echo $n;;
  *) echo "uid=$u($n) gid=$u($n) groups=$u($n),1004(input),1007(log),1011(adb),1015(sdcard_rw),3003(inet)";;
esac
"""

# su of a rooted phone (Magisk's forms: su 0 CMD..., su -c 'CMD'): root for the command. The one
# root effect the harness asks for, dropping the page cache, the sim carries out itself (synchronously,
# as the kernel does): /proc/sys/vm/drop_caches is the sim's own file.
_SU = r"""#!/system/bin/sh
case "$1" in 0|root) shift;; esac
[ "$1" = "-c" ] && shift
: > /sim/state/drop_caches
if [ $# -eq 1 ]; then SIM_SU=1 sh -c "$1"; else SIM_SU=1 "$@"; fi
code=$?
if [ -s /sim/state/drop_caches ]; then
  id=$$.${RANDOM:-0}
  printf 'drop_caches
' > /sim/control/.$id.tmp && mv /sim/control/.$id.tmp /sim/control/$id.cmd
  n=0
  while [ -e /sim/control/$id.cmd ] && [ $n -lt 250 ]; do sleep 0.02; n=$((n+1)); done
fi
exit $code
"""

# a retail phone: no su at all
_NO_SU = r"""#!/system/bin/sh
echo "/system/bin/sh: su: inaccessible or not found" >&2
exit 127
"""

_DF = r"""#!/system/bin/sh
# df: with a storage quota the sim's /data is that big; otherwise the host's df
if [ -r /sim/state/data_quota_kb ]; then
  read -r quota < /sim/state/data_quota_kb
  set -- $(du -sk /data 2>/dev/null); used=${1:-0}
  avail=$((quota - used)); [ $avail -lt 0 ] && avail=0
  echo "Filesystem     1K-blocks    Used Available Use% Mounted on"
  echo "/dev/block/dm-5 $quota $used $avail $((used * 100 / (quota > 0 ? quota : 1)))% /data"
  exit 0
fi
exec /usr/bin/df "$@"
"""

# binfmt_misc entry for aarch64 ELF executables (the magic and mask of qemu's own scripts); the
# kernel itself decodes the \x escapes. F opens the interpreter now, so it works in the chroot.
QEMU_AARCH64_MAGIC = (r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
                      r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff")
QEMU_CANDIDATES = ("qemu-aarch64-static", "qemu-aarch64")

_SETUP = r"""
set -e
R="$1"
if [ -n "$2" ]; then
  # arm64 profile: binfmt_misc of this user namespace only (Linux 6.7+); the host's stays untouched
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  printf '%s' "$2" > /proc/sys/fs/binfmt_misc/register
fi
mount --rbind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
mount --rbind /etc "$R/etc"; mount -o remount,bind,ro "$R/etc"
mount --rbind /dev "$R/dev"
if [ "$3" = pid ]; then
  # the phone's own process table: /proc shows this PID namespace alone, so `ps -A` on one sim
  # lists its processes and no other sim's (a phone's ps shows the phone)
  mount -t proc proc "$R/proc"
else
  mount --rbind /proc "$R/proc"
fi
if [ -f "$R/sim/replay/proc_meminfo.txt" ]; then mount --bind "$R/sim/replay/proc_meminfo.txt" "$R/proc/meminfo"; fi
if [ -f "$R/sim/state/cpuinfo" ]; then mount --bind "$R/sim/state/cpuinfo" "$R/proc/cpuinfo"; fi
# the sim's own drop_caches: nothing inside reaches the host's page cache (the sim runs as root)
mount --bind "$R/sim/state/drop_caches" "$R/proc/sys/vm/drop_caches"
: > "$R/sim/ready"
if [ "$3" = pid ]; then
  # PID 1 of the phone: it reaps the processes whose parents exit (a backgrounded llama-server
  # would otherwise stay a zombie that `kill -0` calls alive), and ends on SIGTERM, which takes
  # every process of the namespace with it
  exec "$4" -c "$5"
fi
exec sleep 2147483647
"""

_INIT = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


# /proc/cpuinfo "Features" of the CPUs qemu-user emulates for an arm64 sim: what a phone with that
# core lists (Cortex-A76: Pixel 6's mid cores, Snapdragon 865/888's: dotprod, no i8mm).
QEMU_CPU_FEATURES = {
    "cortex-a76": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs",
    "cortex-a55": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    "cortex-a53": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
    "max": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 "
           "sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb dcpodp sve2 sveaes svepmull svebitperm "
           "svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti",
}


def arm_cpuinfo(qemu_cpu: str, cpus: int) -> str:
    features = QEMU_CPU_FEATURES.get(qemu_cpu, QEMU_CPU_FEATURES["max"])
    return "".join(f"processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
                   for n in range(cpus))


def find_shell() -> str:
    for candidate in SHELL_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no mksh or bash on this machine (apt-get install mksh)")


class Sandbox:
    def __init__(self, root: Path, cpus: int, replay: Path | None = None, data_quota_bytes: int | None = None,
                 abi: str = "x86_64", qemu_cpu: str | None = None, su: bool = False, vulkan: str = "none"):
        self.root, self.cpus, self.replay, self.su = root, cpus, replay, su
        self.vulkan = vulkan
        self.data_quota_bytes = data_quota_bytes
        self.abi, self.qemu_cpu = abi, qemu_cpu
        self.binfmt = self._binfmt_entry()
        self.shell = find_shell()
        self.holder: subprocess.Popen | None = None
        self.init_pid: int | None = None  # PID 1 of the phone's processes (the holder itself without a PID namespace)
        self.pid_namespace = False
        self.mount_ns: str | None = None
        self.replayed: set[str] = set()  # sandbox paths whose text comes from the replay DIR
        self.missing_replay: list[str] = []
        self.throttle_published = False  # first_throttle_epoch written
        self.clock_env: dict[str, str] = {}  # set by adjustable_clock()

    def _binfmt_entry(self) -> str:
        """The binfmt_misc registration an arm64 sim needs on a non-arm64 host ("" when none)."""
        if self.abi != "arm64-v8a" or platform.machine() in ("aarch64", "arm64"):
            return ""
        qemu = next((found for name in QEMU_CANDIDATES if (found := shutil.which(name))), None)
        if qemu is None:
            raise RuntimeError("the arm64 profile runs aarch64 binaries under qemu-user, and none is installed "
                               "(apt-get install qemu-user-static)")
        magic, mask = QEMU_AARCH64_MAGIC
        return f":bench-qemu-aarch64:M::{magic}:{mask}:{qemu}:F"

    # -- set-up --------------------------------------------------------------------------------
    def create(self) -> None:
        root = self.root
        if root.exists():
            shutil.rmtree(root)
        for folder in ("usr", "etc", "dev", "proc", "data/local/tmp", "system/bin", "system/xbin", "vendor/bin",
                       "sim/state", "sim/control", "sim/replay", "sys/class/thermal", "sys/class/power_supply/battery",
                       "sys/class/power_supply/usb",
                       "sys/devices/system/cpu"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
            (root / link).symlink_to(target)
        os.chmod(root / "data/local/tmp", 0o777)
        # shared storage as Android lays it out: /sdcard -> /storage/self/primary -> /storage/emulated/0
        # (relative links: they resolve inside the root from the host too)
        (root / "storage/emulated/0").mkdir(parents=True, exist_ok=True)
        os.chmod(root / "storage/emulated/0", 0o777)
        (root / "storage/self").mkdir(parents=True, exist_ok=True)
        (root / "storage/self/primary").symlink_to("../emulated/0")
        (root / "sdcard").symlink_to("storage/self/primary")
        (root / "system/bin/sh").symlink_to(self.shell)
        for name, text in (("getprop", _GETPROP), ("dumpsys", _DUMPSYS), ("logcat", _LOGCAT), ("log", _LOG), ("df", _DF),
                           ("cmd", _CMD), ("id", _ID), ("su", _SU if self.su else _NO_SU)):
            path = root / "system/bin" / name
            path.write_text(text)
            path.chmod(0o755)
        self._write("sim/state/logcat.txt", "")
        self._write("sim/state/drop_caches", "")
        self._write("sim/state/dumpsys_power.txt", "POWER MANAGER (dumpsys power)\n  mWakefulness=Asleep\n  mIsPowered=true\n")
        for cpu in range(self.cpus):
            base = f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            self._write(f"{base}/related_cpus", " ".join(str(c) for c in range(self.cpus)) + "\n")
        self._write("sys/devices/system/cpu/possible", f"0-{self.cpus - 1}\n")
        self._write("sys/devices/system/cpu/present", f"0-{self.cpus - 1}\n")
        if self.vulkan == "lavapipe":
            self._install_lavapipe()
        if self.binfmt:
            self._write("sim/state/cpuinfo", arm_cpuinfo(self.qemu_cpu or "max", self.cpus))
        if self.replay is not None:
            self._load_replay(self.replay)

    def _load_replay(self, replay: Path) -> None:
        for name, target in REPLAY_FILES.items():
            source = replay / name
            if source.is_file():
                shutil.copyfile(source, self.root / target)
                self.replayed.add(target)
            else:
                self.missing_replay.append(name)
        sys_tree = replay / "sys"
        if sys_tree.is_dir():
            for path in sys_tree.rglob("*"):
                if path.is_file():
                    relative = "sys/" + str(path.relative_to(sys_tree))
                    destination = self.root / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, destination)
                    self.replayed.add(relative)
        else:
            self.missing_replay.append("sys/")

    def start(self, pid_namespace: bool = True) -> None:
        """The namespaces, with a PID namespace of the phone's own where this host lets a user
        namespace mount a /proc (a container whose /proc has masked paths does not): else the
        sandbox shares the host's process table."""
        if pid_namespace:
            try:
                self._start(pid_namespace=True)
                return
            except RuntimeError:
                self.stop()
        self._start(pid_namespace=False)

    def _start(self, pid_namespace: bool) -> None:
        (self.root / "sim/ready").unlink(missing_ok=True)
        pid_flags = ["--pid", "--fork", "--kill-child"] if pid_namespace else []
        self.holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", *pid_flags,
             "sh", "-c", _SETUP, "setup", str(self.root), self.binfmt, "pid" if pid_namespace else "",
             sys.executable, _INIT],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (self.root / "sim/ready").exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                error = self.holder.stderr.read().decode(errors="replace").strip() if self.holder.poll() is not None else "timeout"
                raise RuntimeError(f"sandbox namespace could not be set up: {error}")
            time.sleep(0.02)
        self.init_pid = self._forked_child(self.holder.pid) if pid_namespace else self.holder.pid
        self.pid_namespace = pid_namespace
        self.mount_ns = os.readlink(f"/proc/{self.init_pid}/ns/mnt")

    @staticmethod
    def _forked_child(pid: int) -> int:
        """unshare --fork's child: PID 1 of the new namespace (the only child unshare has)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.02)
        raise RuntimeError("sandbox namespace could not be set up: unshare started no child")

    @property
    def own_pids(self) -> set[int]:
        """The sandbox's own processes (the holder, and PID 1 of its namespace): never the phone's
        apps, so never counted, throttled or killed as theirs."""
        return {pid for pid in (self.holder.pid if self.holder else None, self.init_pid) if pid}

    def argv(self, command: str | None) -> list[str]:
        """The host command that runs `command` (or an interactive shell) inside the sandbox."""
        # through /system/bin/sh (a link to the shell): $0 is what a phone's shell says
        inner = ["/system/bin/sh"] if command is None else ["/system/bin/sh", "-c", command]
        env = {**ENV, **({"QEMU_CPU": self.qemu_cpu} if self.binfmt and self.qemu_cpu else {}), **self.clock_env,
               # lavapipe is a CPU-type Vulkan device, which ggml-vulkan uses only when named
               **({"GGML_VK_VISIBLE_DEVICES": "0"} if self.vulkan == "lavapipe" else {})}
        pid_flag = ["--pid"] if self.pid_namespace else []
        return ["nsenter", f"--target={self.init_pid}", "--user", "--mount", *pid_flag, "--preserve-credentials", "--",
                "chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *inner]

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            # unshare --fork ignores SIGTERM and waits for its child: PID 1 takes it, and the
            # namespace's processes go with it
            os.kill(self.init_pid or self.holder.pid, signal.SIGTERM)
            try:
                self.holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(timeout=5)

    # -- files ---------------------------------------------------------------------------------
    def _write(self, relative: str, text: str) -> None:
        if relative in self.replayed:
            return
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(text)
        os.replace(temp, path)

    def host_path(self, device_path: str) -> Path | None:
        """Where a device path lives on the host, or None when it leaves the sandbox's own files
        (bound host folders, links pointing out): sync never reaches the host through the sim."""
        if not device_path.startswith("/"):
            device_path = "/data/local/tmp/" + device_path
        candidate = Path(os.path.realpath(self.root / device_path.lstrip("/")))
        root = Path(os.path.realpath(self.root))
        if candidate != root and root not in candidate.parents:
            return None
        for bound in ("usr", "etc", "dev", "proc", "sim"):
            if candidate == root / bound or (root / bound) in candidate.parents:
                return None
        return candidate

    def publish(self, state: PhoneState) -> None:
        """Render the phone's state into the files the shims and sysfs readers see."""
        props = dict(state.profile.props)
        self._write("sim/state/getprop.txt", getprop(props))
        view = state.view()
        self._write("sim/state/dumpsys_battery.txt", dumpsys_battery(view))
        zones = [(z.name, z.type, state.temps[z.name]) for z in state.profile.zones]
        self._write("sim/state/dumpsys_thermalservice.txt", dumpsys_thermalservice(zones, state.thermal_status))
        for index, zone in enumerate(state.profile.zones):
            self._write(f"sys/class/thermal/thermal_zone{index}/type", zone.name + "\n")
            self._write(f"sys/class/thermal/thermal_zone{index}/temp", f"{int(state.temps[zone.name] * 1000)}\n")
        battery = "sys/class/power_supply/battery"
        current_ua = int(state.current_a * 1e6)  # Pixel convention: + charging, - discharging, in uA
        voltage_uv = int(state.voltage_v * 1e6)
        temp_dc = int(round(state.temps.get("battery", state.profile.ambient_c) * 10))
        level = int(round(state.level_pct))
        for name, value in (("capacity", level), ("status", status_word(state.hardware_status)),
                            ("current_now", current_ua), ("voltage_now", voltage_uv),
                            ("charge_counter", state.charge_counter_uah), ("temp", temp_dc)):
            self._write(f"{battery}/{name}", f"{value}\n")
        self._write(f"{battery}/uevent", battery_uevent(
            capacity=level, status=state.hardware_status, current_ua=current_ua, voltage_uv=voltage_uv,
            charge_counter_uah=state.charge_counter_uah, temp_dc=temp_dc,
            charge_full_uah=int(state.profile.capacity_mah * 1000)))
        self._publish_rails(state)
        self._publish_gpu(state)
        self._write("sim/state/fixed_performance.txt", f"{str(state.fixed_performance).lower()}\n")
        # The hardware's view: `dumpsys battery unplug` fakes BatteryService, not this file.
        self._write("sys/class/power_supply/usb/type", "USB\n")
        self._write("sys/class/power_supply/usb/online", f"{int(state.usb_plugged)}\n")
        cur = state.cur_khz
        for cpu in range(self.cpus):
            base = f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            self._write(f"{base}/scaling_cur_freq", f"{cur}\n")
            self._write(f"{base}/cpuinfo_max_freq", f"{state.profile.max_khz}\n")
            self._write(f"{base}/cpuinfo_min_freq", f"{state.profile.min_khz}\n")
            self._write(f"{base}/scaling_max_freq", f"{int(state.profile.max_khz * (1 - state.duty))}\n")
        # the truth energy figures are held to: the phone's cumulative energy at each step (host epoch)
        with (self.root / "sim/state/energy_log.txt").open("a") as log:
            log.write(f"{time.time():.6f} {state.energy_j:.6f}\n")
        if state.duty > 0 and not self.throttle_published:
            # the truth a test holds detection to: when the phone first showed a capped CPU (host epoch)
            self.throttle_published = True
            self.write_state("first_throttle_epoch", f"{time.time():.6f}\n")

    def _install_lavapipe(self) -> None:
        """The phone's Vulkan driver where Android's loader looks for it (hw/vulkan.<name>.so): a link
        to Mesa's lavapipe, which the host's loader (under /usr, bound in) runs."""
        import json

        if self.abi != "x86_64":
            raise RuntimeError("[gpu] vulkan = lavapipe needs the x86_64 profile (the arm64 sim runs under qemu-user)")
        icd = next(iter(sorted(Path("/usr/share/vulkan/icd.d").glob("lvp_icd.*.json"))), None)
        if icd is None:
            raise RuntimeError("[gpu] vulkan = lavapipe needs Mesa's lavapipe (apt-get install mesa-vulkan-drivers)")
        library = json.loads(icd.read_text())["ICD"]["library_path"]
        (self.root / "vendor/lib64/hw").mkdir(parents=True, exist_ok=True)
        (self.root / "vendor/lib64/hw/vulkan.lavapipe.so").symlink_to(library)

    def _publish_gpu(self, state: PhoneState) -> None:
        """The GPU as the profile's phone shows it: kgsl-3d0 (Adreno) or a devfreq GPU (Mali). Its busy
        share is lavapipe's work where lavapipe plays it ([gpu] vulkan; see PhysicsLoop), else 0 (the
        runtimes run on the CPU); it runs at the highest clock allowed while busy, else the lowest. Its thermal power
        level follows the SoC's mitigation as the CPU cap does: the highest clock allowed steps down."""
        profile = state.profile
        if profile.gpu == "none" or not profile.gpu_frequencies_hz:
            return
        levels = sorted(profile.gpu_frequencies_hz, reverse=True)  # kgsl's power level 0 is the fastest
        level = 0 if not profile.max_duty else round(state.duty / profile.max_duty * (len(levels) - 1))
        busy = state.gpu_busy_pct
        cap = levels[level]
        clock = cap if busy > 0 else levels[-1]
        listed = " ".join(str(hz) for hz in sorted(levels))
        if profile.gpu == "devfreq":
            base = "sys/class/devfreq/13000000.mali"
            for name, value in (("cur_freq", clock), ("max_freq", cap), ("available_frequencies", listed)):
                self._write(f"{base}/{name}", f"{value}\n")
            return
        base = "sys/class/kgsl/kgsl-3d0"
        for name, value in (("gpu_model", profile.gpu_model), ("gpu_busy_percentage", f"{round(busy)} %"),
                            ("gpubusy", f"{round(busy * 1000):7d} {100000 if busy else 0:7d}"), ("gpuclk", clock),
                            ("max_gpuclk", cap),
                            ("thermal_pwrlevel", level), ("gpu_available_frequencies", listed),
                            ("devfreq/cur_freq", clock), ("devfreq/max_freq", cap),
                            ("devfreq/available_frequencies", listed)):
            self._write(f"{base}/{name}", f"{value}\n")

    def _publish_rails(self, state: PhoneState) -> None:
        """The energy meter as the profile's phone shows it: an AIDL HAL's "[RAIL]:Subsystem" names,
        an older HAL's plain rail names, or also the power monitor's iio file (Pixel 6+), whose time
        stamps are ms since boot; "none": no meter at all."""
        form = state.profile.rails
        if form == "none":
            return
        plain = form != "hal"
        rows = [(name.partition("]:")[0].lstrip("[") if plain else name, uws) for name, uws in state.rail_uws.items()]
        self._write("sim/state/power_stats.txt", "".join(f"{name} {uws:.0f}\n" for name, uws in rows))
        if form == "iio":
            now_ms = int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)
            self._write("sys/bus/iio/devices/iio:device0/energy_value", f"t={now_ms}\n" + "".join(
                f"CH{index}(T={now_ms})[{name}], {uws:.0f}\n" for index, (name, uws) in enumerate(rows)))

    def adjustable_clock(self) -> None:
        """Every later shell sees the wall clock through libfaketime, offset by what
        /sim/state/clock_offset says ("+0" until a `clock-jump` fault): a phone whose clock network
        time or a user moves. Monotonic clocks stay real, as on a phone."""
        found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
        if not found:
            raise RuntimeError("clock.adjustable needs libfaketime (apt-get install libfaketime)")
        self.write_state("clock_offset", "+0\n")
        self.clock_env = {"LD_PRELOAD": str(found[0]), "FAKETIME_TIMESTAMP_FILE": "/sim/state/clock_offset",
                          "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def jump_clock(self, seconds: float) -> None:
        offset = float(self.read_state("clock_offset", "+0").strip() or 0) + seconds
        self.write_state("clock_offset", f"{offset:+.3f}\n")

    def read_state(self, name: str, default: str = "") -> str:
        try:
            return (self.root / "sim/state" / name).read_text()
        except OSError:
            return default

    def write_state(self, name: str, text: str) -> None:
        """A file under /sim/state that the shims read (faults the tests inject)."""
        self._write(f"sim/state/{name}", text)

    def data_used_bytes(self) -> int:
        total = 0
        for folder, _, files in os.walk(self.root / "data"):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        return total

    def set_quota(self, quota_bytes: int | None) -> None:
        self.data_quota_bytes = quota_bytes
        path = self.root / "sim/state/data_quota_kb"
        if quota_bytes is None:
            path.unlink(missing_ok=True)
        else:
            self._write("sim/state/data_quota_kb", f"{quota_bytes // 1024}\n")

    def append_log(self, tag: str, message: str) -> None:
        """One line into the logcat buffer the `logcat -d` shim prints (the sim's lmkd writes here)."""
        stamp = time.strftime("%m-%d %H:%M:%S.000")
        with (self.root / "sim/state/logcat.txt").open("a") as handle:
            handle.write(f"{stamp}   321   321 I {tag}: {message}\n")

    def clear_log(self) -> None:
        self._write("sim/state/logcat.txt", "")

    def drop_page_cache(self) -> int:
        """What `echo 1 > /proc/sys/vm/drop_caches` does for the phone's files: every file under
        /data and /storage out of the host's page cache (posix_fadvise DONTNEED). Returns how many."""
        dropped = 0
        for top in ("data", "storage"):
            for path in (self.root / top).rglob("*"):
                if path.is_file() and not path.is_symlink():
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except OSError:
                        continue
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        dropped += 1
                    finally:
                        os.close(fd)
        (self.root / "sim/state/drop_caches").write_text("")
        return dropped

    def take_commands(self) -> list[tuple[Path, list[str]]]:
        control = self.root / "sim/control"
        return [(path, path.read_text().split()) for path in sorted(control.glob("*.cmd"))]
