"""Endpoint URLs: typos and impossible combinations are refused when the URL is parsed (#14.5, #14.2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipcgw.url import COMMON_PARAMS, SCHEME_PARAMS, parse_url


@pytest.mark.parametrize(("url", "words"), [
    ("unix:///tmp/x.sock?framng=length:4", "parameter 'framng' for unix: did you mean 'framing'?"),
    ("shm:///x?rnig=65536", "did you mean 'ring'?"),
    ("posixmq:///x?msgsze=100", "did you mean 'msgsize'?"),
    ("fifo:///tmp/d?pipesize=4096", "did you mean 'pipe_size'?"),
    ("tcp://127.0.0.1:1?tokn=x", "did you mean 'token'?"),
    ("tcp://127.0.0.1:1?ring=4096", "unknown URL parameter 'ring' for tcp"),
    ("unix:///x?codec=json&codec=msgpack", "given twice"),
    ("unix:///x?framing=delimited:lf&codec=msgpack", "msgpack cannot ride framing=delimited:lf.*codec=json"),
    ("unix:///x?framing=delimited:lf&codec=sspi", "cannot ride"),
])
def test_bad_urls_are_one_clear_line(url, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_url(url)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("url", [
    "shm:///x?ring=65536&spin_us=0", "posixmq:///x?maxmsg=10&msgsize=8192", "fifo:///tmp/d?pipe_size=65536",
    "unix:///x?server_uid=0", "tcp://127.0.0.1:1?token_file=/etc/t", "sysv://0x1234?mode=0660&max_frame=100",
])
def test_known_keys_pass(url):
    parse_url(url)


def test_text_framing_defaults_to_json_and_json_to_text_framing():
    assert parse_url("unix:///x?framing=delimited:lf").codec == "json"
    assert parse_url("unix:///x?codec=json").framing == "delimited:lf"
    assert parse_url("unix:///x?codec=json&framing=length:4").framing == "length:4"
    assert parse_url("unix:///x").codec == "msgpack"


def test_every_param_a_transport_reads_is_declared():
    """Each ``endpoint.params`` key read in ipcgw/ must be in SCHEME_PARAMS (or common)."""
    root = Path(__file__).resolve().parents[1] / "ipcgw"
    declared = set(COMMON_PARAMS).union(*SCHEME_PARAMS.values())
    read: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r"params\.get\(\s*[\"'](\w+)[\"']", text))
        read |= set(re.findall(r"_param\(\s*endpoint,\s*[\"'](\w+)[\"']", text))
    assert read and read <= declared, read - declared
