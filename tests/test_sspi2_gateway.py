"""The original plugin's later protocol end to end: a C program writes 256-byte
``struct sspi_message`` records exactly as that plugin's ns-3 program does (and the
plugin header's own short ``echo -en`` form), ``ipcgw serve`` reads them from the
FIFO in a namespace, and the kernel's endpoint 2 flips; read back with iproute2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gateway_helpers import ServerProcess
from netns_helpers import testbeds, wait_until

from ipcgw.testbed import Testbed

__all__ = ["testbeds"]

SSPI2_WRITER = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* As in the plugin's include/mptcpd/mptcp_ns3.h (later revision). */
struct sspi_message { unsigned char type; char data[255]; };
struct sspi_cmd_message { unsigned char cmd; int cmd_value; };
struct sspi_data_message { int rssi; };

/* writer PATH cmd CMD VALUE | rssi DBM ... : one 256-byte write per message */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY);
    if (fd < 0) return 2;
    for (int i = 2; i < argc; ) {
        struct sspi_message msg;
        memset(&msg, 0x5a, sizeof msg);           /* junk, as a stack buffer holds */
        if (strcmp(argv[i], "cmd") == 0 && i + 2 < argc) {
            struct sspi_cmd_message cmd = { (unsigned char)atoi(argv[i + 1]), atoi(argv[i + 2]) };
            msg.type = 0x01;
            memcpy(msg.data, &cmd, sizeof cmd);
            i += 3;
        } else if (strcmp(argv[i], "rssi") == 0 && i + 1 < argc) {
            struct sspi_data_message data = { atoi(argv[i + 1]) };
            msg.type = 0x02;
            memcpy(msg.data, &data, sizeof data);
            i += 2;
        } else {
            return 4;
        }
        if (write(fd, &msg, sizeof msg) != sizeof msg) return 3;
        usleep(20000);  /* the plugin reads one message per read(): do not coalesce */
    }
    close(fd);
    return 0;
}
"""

BACKUP_FLAG_ON, CLEAR_FLAGS = 3, 4  # the later revision's renumbered commands


@pytest.fixture(scope="module")
def sspi2_writer(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("cc2")
    (folder / "writer.c").write_text(SSPI2_WRITER)
    exe = str(folder / "writer")
    subprocess.run(["cc", "-O1", "-o", exe, str(folder / "writer.c")], check=True)
    return exe


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    made: list[ServerProcess] = []
    yield made
    for s in made:
        s.kill()


def backup(netns: str, id: int) -> bool:
    out = subprocess.run(["ip", "-n", netns, "-j", "mptcp", "endpoint", "show"], check=True,
                         capture_output=True, text=True).stdout
    return any(e["id"] == id and e.get("backup") for e in json.loads(out))


def test_later_sspi_revision_flips_endpoint_2_through_ipcgw_serve(
        tmp_path: Path, testbeds: Callable[..., Testbed], servers: list[ServerProcess],
        sspi2_writer: str) -> None:
    tb = testbeds(client_endpoints=[])
    fifo = tmp_path / "mptcp-ns3-fifo"
    servers.append(ServerProcess([f"fifo://{fifo}?codec=sspi2"], tmp_path, netns=tb.client,
                                 extra=["--handler", "mptcp",
                                        "--policy", "ipcgw.mptcp.policy:RssiPolicy"]))
    for path, id in ((1, 1), (2, 2)):
        subprocess.run(["ip", "-n", tb.client, "mptcp", "endpoint", "add", tb.client_addr(path),
                        "id", str(id), "subflow"], check=True)

    subprocess.run([sspi2_writer, str(fifo), "cmd", str(BACKUP_FLAG_ON), "2"], check=True, timeout=10)
    wait_until(lambda: backup(tb.client, 2))
    assert not backup(tb.client, 1)
    subprocess.run([sspi2_writer, str(fifo), "cmd", str(CLEAR_FLAGS), "2"], check=True, timeout=10)
    wait_until(lambda: not backup(tb.client, 2))

    # The plugin header's own example form: a 6-byte write, echo -en "\01\03\00\00\00\02"
    subprocess.run(["sh", "-c", f"printf '\\001\\003\\000\\000\\000\\002' > {fifo}"], check=True,
                   timeout=10)
    wait_until(lambda: backup(tb.client, 2))
    subprocess.run([sspi2_writer, str(fifo), "cmd", str(CLEAR_FLAGS), "2"], check=True, timeout=10)
    wait_until(lambda: not backup(tb.client, 2))

    # RSSI data messages become Reports on the WLAN path: the RSSI policy acts on them
    subprocess.run([sspi2_writer, str(fifo), *[w for _ in range(15) for w in ("rssi", "-95")]],
                   check=True, timeout=20)
    wait_until(lambda: backup(tb.client, 2))
    assert not backup(tb.client, 1)
    assert servers[0].alive()
    assert servers[0].stop() == 0
