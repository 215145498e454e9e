"""The shm transport against a hostile peer: every word it can write in shared memory is untrusted.

A client owns half of its ring pair, so it can store anything into the
segment: ring counters, flags, the geometry in the header. The server must
bound each by the ring size before use and end that session alone on a
violation (issue #19): before this, one 8-byte store of a bogus head made the
server copy past the ring and the mapping (segfault of a root server) or echo
bytes from beyond the segment. The hostile programs here speak the rendezvous
themselves (stdlib only, so the ``attacker`` user can run them too) and map
their segment through /dev/shm, as any local program could.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LocalUser, require_netns, require_shm_c
from gateway_helpers import ServerProcess

import ipcgw
from ipcgw.errors import TransportError
from ipcgw.transports import listen
from ipcgw.transports.base import Connection, ServerLock

# A peer that does the rendezvous by hand, maps its segment and then writes
# what argv says into it. Word indexes as in shm.py: c2s head 16, c2s tail 48,
# s2c head 80, s2c tail 112; W_RING 1; flags on the 16-word lines between.
HOSTILE = r"""
import mmap, os, random, re, select, socket, struct, sys, time
name, action, seconds, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
HEADER = 4096
def session():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(f"/dev/shm/{name}.sock")
    line, fds = b"", []
    while not line.endswith(b"\n"):
        chunk, got, _, _ = socket.recv_fds(s, 128, 8)
        fds += got
        if not chunk:
            raise SystemExit("server refused the rendezvous")
        line += chunk
    cid, ring = re.fullmatch(rb"IPCGW-SHM \d+ (\S+) (\d+)\n", line).groups()
    ring = int(ring)
    mm = mmap.mmap(fds[0], HEADER + 2 * ring)
    return s, mm, memoryview(mm).cast("Q"), ring, fds
def close(s, mm, q, ring, fds):
    q.release()
    mm.close()
    for fd in fds:
        os.close(fd)
    s.close()
def gone(s):
    return bool(select.select([s], [], [], 0)[0])
if action.startswith("head:"):
    s, mm, q, ring, fds = session()
    q[16] = (q[48] + int(action[5:])) % (1 << 64)  # one 8-byte store
    print("STORED", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not gone(s):
        time.sleep(0.02)
    print("CLOSED" if gone(s) else "OPEN", flush=True)
elif action == "truncate":  # the server's accesses past a shrunk file would be SIGBUS
    s, mm, q, ring, fds = session()
    for fd in fds[:1]:
        try:
            os.ftruncate(fd, 0)
            print("TRUNCATED", flush=True)
        except OSError as exc:
            print("REFUSED", exc.errno, flush=True)
    time.sleep(seconds)
elif action == "fuzz":
    rng = random.Random(seed)
    words = [1, 2, 3, 4, 5, 16, 32, 48, 64, 80, 96, 112, 128]
    stores = sessions = ended = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s, mm, q, ring, fds = session()
        sessions += 1
        while time.monotonic() < end and not gone(s):
            w = rng.choice(words)
            base = q[48] if w in (16, 48) else q[112]
            q[w] = rng.choice([
                rng.getrandbits(64), (base + rng.randrange(-3, 3)) % (1 << 64),
                (base + ring + rng.randrange(-2, 3)) % (1 << 64),
                (base + rng.randrange(0, 4 * ring)) % (1 << 64), (base - 1) % (1 << 64),
                1 << 63, (1 << 64) - 1, 0, 1, rng.randrange(ring)])
            stores += 1
            if rng.random() < 0.3:
                off = rng.randrange(2 * ring)
                mm[HEADER + off:HEADER + off + 8] = rng.randbytes(8)
            if rng.random() < 0.1:  # the wake-up counters: fill one, or steal its posts
                fd = rng.choice(fds[1:])
                try:
                    if rng.random() < 0.5:
                        os.eventfd_write(fd, rng.choice([1, (1 << 64) - 2]))
                    else:
                        os.eventfd_read(fd)
                except OSError:
                    pass
            time.sleep(rng.choice([0, 0, 0.0005, 0.003]))
        ended += gone(s)
        close(s, mm, q, ring, fds)
    print(f"STORES {stores} SESSIONS {sessions} ENDED {ended}", flush=True)
"""


@pytest.fixture(params=["c", "python"])
def rings(request: pytest.FixtureRequest) -> str:
    """The server's data path: the C rings, or their Python twin."""
    if request.param == "c":
        require_shm_c()
    return str(request.param)


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh shm server name; every /dev/shm name under it is removed afterwards."""
    nm = f"ipcgwsec{uuid.uuid4().hex[:8]}"
    try:
        yield nm
    finally:
        for left in os.listdir("/dev/shm"):
            if left.startswith((f"{nm}.", f"sem.{nm}.")):
                with contextlib.suppress(OSError):
                    os.unlink(f"/dev/shm/{left}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ServerLock("shm", nm).path)


@contextlib.contextmanager
def server(name: str, rings: str, tmp: Path, query: str = "ring=65536") -> Iterator[ServerProcess]:
    require_netns()  # root: the server usually is
    srv = ServerProcess([f"shm:///{name}?{query}"], tmp, env={"IPCGW_SHM_RINGS": rings})
    try:
        yield srv
    finally:
        srv.kill()


def hostile(name: str, action: str, seconds: float, seed: int = 0,
            user: LocalUser | None = None) -> subprocess.Popen[str]:
    args = [name, action, str(seconds), str(seed)]
    if user is not None:
        return user.popen_python(HOSTILE, *args)
    return subprocess.Popen([sys.executable, "-I", "-c", HOSTILE, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out


def pongs_exact(client: ipcgw.Client, rng: random.Random, n: int) -> None:
    for _ in range(n):
        payload = rng.randbytes(rng.randrange(0, 20000))
        assert client.ping(payload, timeout=10) == payload


# 64 MiB past the tail: the old code allocated that much and copied it from past the
# 128 KiB mapping (SIGSEGV, C) or returned the rest of the mapping (Python);
# ring + 1: one byte more than the ring can hold; 2**63: far past anything.
@pytest.mark.parametrize("delta", [64 << 20, 65536 + 1, 1 << 63, -1])
def test_bogus_head_ends_that_session_only(name: str, rings: str, tmp_path: Path, delta: int) -> None:
    with server(name, rings, tmp_path) as srv, ipcgw.connect(srv.url, timeout=5) as legit:
        rng = random.Random(delta)
        pongs_exact(legit, rng, 5)
        out = finish(hostile(name, f"head:{delta}", 5))
        assert out.split() == ["STORED", "CLOSED"], out  # the server ended that session
        assert srv.alive(), srv.log()
        pongs_exact(legit, rng, 20)
        with ipcgw.connect(srv.url, timeout=5) as other:
            pongs_exact(other, rng, 5)
        assert "shm peer corrupted the ring" in srv.log()
        srv.stop_ok()


def test_another_user_cannot_crash_a_widened_server(name: str, rings: str, tmp_path: Path,
                                                    attacker: LocalUser) -> None:
    with server(name, rings, tmp_path, "ring=65536&mode=0666") as srv, \
            ipcgw.connect(srv.url, timeout=5) as legit:
        out = finish(hostile(name, f"head:{64 << 20}", 5, user=attacker))
        assert out.split() == ["STORED", "CLOSED"], out
        assert srv.alive(), srv.log()
        pongs_exact(legit, random.Random(1), 10)
        srv.stop_ok()


def test_a_peer_cannot_shrink_the_segment_under_the_server(name: str, rings: str, tmp_path: Path) -> None:
    """ftruncate of a mapped file makes the server's next access to it SIGBUS (it killed
    the server with layout 2's named segments and semaphores): the segment is sealed."""
    with server(name, rings, tmp_path) as srv, ipcgw.connect(srv.url, timeout=5) as legit:
        out = finish(hostile(name, "truncate", 1))
        assert out.split() == ["REFUSED", str(errno.EPERM)], out
        assert srv.alive(), srv.log()
        pongs_exact(legit, random.Random(2), 10)
        srv.stop_ok()


def test_fuzzed_shared_words_never_hurt_the_server_or_other_clients(
        name: str, rings: str, tmp_path: Path) -> None:
    seconds = 4.0
    with server(name, rings, tmp_path) as srv, ipcgw.connect(srv.url, timeout=5) as legit:
        procs = [hostile(name, "fuzz", seconds, seed) for seed in (1, 2)]
        rng, pings = random.Random(7), 0
        end = time.monotonic() + seconds + 0.5
        while time.monotonic() < end:
            pongs_exact(legit, rng, 1)
            pings += 1
        stats = [finish(p).split() for p in procs]
        assert srv.alive(), srv.log()
        pongs_exact(legit, rng, 10)
        stores = sum(int(s[1]) for s in stats)
        sessions = sum(int(s[3]) for s in stats)
        print(f"fuzz ({rings}): {stores} stores over {sessions} hostile sessions, "
              f"{pings} exact pongs meanwhile")
        assert stores > 1000 and sessions > 1 and pings > 20
        assert "bug while serving" not in srv.log() and "Traceback" not in srv.log(), srv.log()
        srv.stop_ok()


def test_the_server_side_connection_names_another_users_uid(name: str, attacker: LocalUser) -> None:
    lst = listen(f"shm:///{name}?mode=0666")
    try:
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(lst.accept()), daemon=True)
        thread.start()
        proc = hostile(name, "head:0", 3, user=attacker)  # a no-op store, then it waits
        thread.join(5)
        conn = got[0]
        assert isinstance(conn, Connection)
        assert (conn.peer_uid, conn.peer_gid) == (attacker.uid, attacker.gid)
        assert f"uid {attacker.uid}" in conn.peer
        conn.close()
        assert finish(proc).split() == ["STORED", "CLOSED"]
    finally:
        lst.close()


def _squat(attacker: LocalUser, path: str) -> None:
    done = attacker.run_python("import sys; open(sys.argv[1], 'x').close()", path)
    assert done.returncode == 0, done.stderr


def test_a_name_another_user_took_is_refused_not_removed(name: str, attacker: LocalUser) -> None:
    path = f"/dev/shm/{name}.sock"
    _squat(attacker, path)
    with pytest.raises(TransportError, match=f"belongs to uid {attacker.uid}"):
        listen(f"shm:///{name}")
    assert os.stat(path).st_uid == attacker.uid  # still there: not ours to remove


def test_the_sweep_leaves_another_users_names_alone(name: str, attacker: LocalUser) -> None:
    theirs = f"/dev/shm/{name}.c1-0123abcd.seg"
    _squat(attacker, theirs)
    listen(f"shm:///{name}").close()
    assert os.stat(theirs).st_uid == attacker.uid


def test_a_rendezvous_name_replaced_by_another_user_is_not_taken_over(
        name: str, rings: str, tmp_path: Path, attacker: LocalUser) -> None:
    path = f"/dev/shm/{name}.sock"
    with server(name, rings, tmp_path) as srv, ipcgw.connect(srv.url, timeout=5) as old:
        os.unlink(path)
        _squat(attacker, path)
        time.sleep(2.5)  # two checks at least
        assert os.stat(path).st_uid == attacker.uid
        assert srv.log().count("cannot recreate it") == 1, srv.log()  # one line, not one a second
        assert old.ping(b"still") == b"still"
        os.unlink(path)  # the squatter's file goes (as an admin would remove it): the server heals
        start = time.monotonic()
        while not os.path.exists(path) or os.stat(path).st_uid != os.geteuid():
            assert time.monotonic() - start < 5.0, srv.log()
            time.sleep(0.1)
        with ipcgw.connect(srv.url, timeout=5) as new:
            assert new.ping(b"new") == b"new"
        srv.stop_ok()
