"""Start and stop a real one-node SLURM cluster on localhost for the tests.

Debian's ``slurm-wlm`` (slurmctld + slurmd) and ``munge`` are started as foreground child processes
with a generated ``slurm.conf`` in a private temporary folder: free TCP ports, a private munge
socket (``AuthInfo=socket=...``) and key, no accounting database, one node that advertises up to
four fake GPUs (``gres.conf``: one ``Name=gpu`` line each on ``/dev/null``, ``/dev/zero``, ...).
slurmd runs *configless* (it fetches the configuration from slurmctld), because the SLURM jobstep
plugin of Snakemake strips ``SLURM_CONF`` inside jobs; slurmd then caches the configuration under
``/run/slurm/conf``, which client commands inside jobs read. A configless slurmd authenticates
before it has a configuration, so munged must listen on its default socket
``/run/munge/munge.socket.2`` (with a fresh key in the private folder; an already running munged is
used as is). Nothing under ``/etc`` is written; ``/run/slurm`` and ``/run/munge`` are removed again
if this module created them. Every daemon is stopped by the PID of the process this module started.

Typical use::

    cluster = LocalSlurm.start(cpus=16, memory_mb=128000, gpus=1)
    try:
        env = cluster.env()          # SLURM_CONF for sbatch/squeue/scancel on the host
        ...
    finally:
        cluster.stop()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_PACKAGES = ("slurm-wlm", "munge")
#: character devices standing in for GPUs in gres.conf (one line each; SLURM only needs a file)
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scancel")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started here (not root, no apt, install failed...); the reason says why."""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def ensure_installed(timeout: float = 600) -> None:
    """Install Debian's slurm-wlm and munge with apt-get when a program is missing.

    Raises:
        SlurmUnavailable: not root, no apt-get, or the installation failed.
    """
    if not missing_programs():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM programs missing ({missing_programs()}) and not root")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM programs missing ({missing_programs()}) and no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=timeout)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or missing_programs():
        raise SlurmUnavailable(
            f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed (rc={proc.returncode}): "
            f"{proc.stderr[-2000:]}"
        )


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on 127.0.0.1 right now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def slurm_conf(
    *,
    root: Path,
    node: str,
    ctld_port: int,
    slurmd_port: int,
    cpus: int,
    memory_mb: int,
    gpus: int,
    min_job_age: int = 300,
) -> str:
    """Text of a one-node slurm.conf for a container (no cgroups, no accounting database).

    ``SlurmdParameters=config_overrides`` makes SLURM trust the configured CPUs/memory instead of
    the hardware's, so the real profile's requests (e.g. 8 CPUs per GPU, 64 GB) are schedulable
    on a small CI machine; ``DefMemPerCPU`` keeps jobs without ``--mem`` from taking the whole node.
    """
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
ClusterName=vtntest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge={min_job_age}
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
DefMemPerCPU=256
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    """A running one-node cluster; ``stop()`` ends the daemons it started (by PID)."""

    root: Path
    conf: Path
    node: str
    procs: dict = field(default_factory=dict)  # name -> subprocess.Popen
    created_run_dir: bool = False
    created_munge_dir: bool = False

    @classmethod
    def start(cls, cpus: int = 16, memory_mb: int = 128000, gpus: int = 1,
              min_job_age: int = 300, timeout: float = 60) -> "LocalSlurm":
        """Generate the configuration, start munged, slurmctld and slurmd, wait for an idle node.

        Args:
            cpus: CPUs the node advertises (may exceed the hardware: config_overrides).
            memory_mb: memory the node advertises, MB.
            gpus: fake GPUs (GRES on /dev/null, /dev/zero, ...); jobs see
                ``CUDA_VISIBLE_DEVICES``.
            min_job_age: seconds a finished job stays visible to ``squeue`` (the Snakemake
                plugin needs ``--slurm-status-command squeue`` without accounting).
            timeout: seconds to wait for the node to become idle.

        Raises:
            SlurmUnavailable: not root, or programs missing (call ``ensure_installed`` first).
            RuntimeError: a daemon exited or the node did not come up; the logs are quoted.
        """
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmctld/slurmd/munged needs root")
        if missing_programs():
            raise SlurmUnavailable(f"SLURM programs missing: {missing_programs()}")
        # /tmp/pytest-of-root is 0700: munged (munge user) could not reach a folder below it.
        root = Path(tempfile.mkdtemp(prefix="vtn-slurm-", dir="/tmp"))
        os.chmod(root, 0o755)
        node = socket.gethostname().split(".")[0]
        cluster = cls(root=root, conf=root / "slurm.conf", node=node,
                      created_run_dir=not Path("/run/slurm").exists())
        try:
            cluster._start(cpus, memory_mb, gpus, min_job_age, timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, cpus, memory_mb, gpus, min_job_age, timeout):
        root = self.root
        munge_user = pwd.getpwnam("munge")
        mdir = root / "munge"
        mdir.mkdir(mode=0o755)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for p in (mdir, key):
            os.chown(p, munge_user.pw_uid, munge_user.pw_gid)
        for d in ("state", "spool"):
            (root / d).mkdir()
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(slurm_conf(
            root=root, node=self.node, ctld_port=ctld_port, slurmd_port=slurmd_port,
            cpus=cpus, memory_mb=memory_mb, gpus=gpus,
            min_job_age=min_job_age))
        if gpus > len(FAKE_GPU_FILES):
            raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs, got {gpus}")
        (root / "gres.conf").write_text("".join(
            f"NodeName={self.node} Name=gpu File={dev}\n" for dev in FAKE_GPU_FILES[:gpus]))

        if not _munge_alive():
            self._start_munged(munge_user, mdir, key)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self._run(["sinfo", "-h"]).returncode == 0, timeout, "slurmctld")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node,
                               "--conf-server", f"127.0.0.1:{ctld_port}"])
        self._wait(lambda: self._node_state() in ("idle", "mixed"), timeout, "idle node")

    def _start_munged(self, munge_user, mdir, key):
        run = MUNGE_SOCKET.parent
        if not run.exists():
            run.mkdir(parents=True, mode=0o755)
            os.chown(run, munge_user.pw_uid, munge_user.pw_gid)
            self.created_munge_dir = True
        self._spawn("munged", [
            "setpriv", f"--reuid={munge_user.pw_uid}", f"--regid={munge_user.pw_gid}",
            "--clear-groups", "munged", "--foreground", "--force",
            f"--socket={MUNGE_SOCKET}", f"--key-file={key}", f"--log-file={mdir}/munged.log",
            f"--pid-file={mdir}/munged.pid", f"--seed-file={mdir}/munged.seed",
        ])
        self._wait(_munge_alive, 10, "munged socket")

    def env(self) -> dict:
        """Environment for client commands (sbatch, squeue, snakemake) on the host."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _run(self, cmd, **kw):
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30, **kw)

    def _node_state(self) -> str:
        proc = self._run(["sinfo", "-h", "-N", "-o", "%T"])
        return proc.stdout.strip().rstrip("*") if proc.returncode == 0 else ""

    def _spawn(self, name, cmd):
        log = open(self.root / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env(), start_new_session=True)
        log.close()

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while waiting for "
                                       f"{what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        """The daemons' logs (for failure messages)."""
        out = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stdout")) + \
                sorted(self.root.glob("munge/*.log")):
            try:
                out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
            except OSError:
                pass
        return "\n".join(out)

    def stop(self, timeout: float = 10) -> None:
        """Cancel remaining jobs, stop slurmd, slurmctld, munged (by PID), remove the files."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Jobs first: slurmstepd processes outlive slurmd; cancel, wait until none is left.
            try:
                self._run(["scancel", "--full", "-w", self.node])
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._run(
                        ["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING"]).stdout.strip():
                    time.sleep(0.3)
            except Exception:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        if self.created_munge_dir:
            shutil.rmtree(MUNGE_SOCKET.parent, ignore_errors=True)
        if self.created_run_dir:
            shutil.rmtree("/run/slurm", ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]



def _munge_alive() -> bool:
    """Whether a munged answers on the default socket."""
    if not MUNGE_SOCKET.exists():
        return False
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(MUNGE_SOCKET))
        return True
    except OSError:
        return False
    finally:
        s.close()
