"""The architecture, pinned: each layer imports only what it may."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ipcgw

PACKAGE = Path(ipcgw.__file__).parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "ipcgw":  # from ipcgw import x: a module of the package
                names |= {f"ipcgw.{alias.name}" for alias in node.names}
    return names


def test_framing_and_codecs_are_sans_io():
    codecs = {"ipcgw.messages", "ipcgw.sspi", "ipcgw.sspi2", "ipcgw.jsonl"}
    for module in ("framing.py", "messages.py", "sspi.py", "sspi2.py", "jsonl.py", "codecs.py",
                   "errors.py"):
        found = imports_of(PACKAGE / module)
        io = {n for n in found if n.split(".")[0] in {"os", "socket", "select", "sysv_ipc",
                                                     "posix_ipc", "mmap", "subprocess"}}
        assert not io, f"{module} does I/O: {io}"
        inner = {n for n in found if n.startswith("ipcgw.")}
        allowed = {"ipcgw.errors", "ipcgw.messages", "ipcgw._cobs"}  # _cobs: framing's C half
        if module == "codecs.py":  # the registry of the codec modules
            allowed |= codecs
        assert inner <= allowed, f"{module} reaches across: {inner}"


def test_transports_know_nothing_of_messages_or_sessions():
    for path in (PACKAGE / "transports").glob("*.py"):
        inner = {n for n in imports_of(path) if n.startswith("ipcgw.")}
        outside = {n for n in inner if n != "ipcgw.transports"
                   and not n.startswith("ipcgw.transports.")}  # its own helpers are fine
        assert outside <= {"ipcgw.errors", "ipcgw.url"}, f"{path.name}: {outside}"


def test_core_package_never_imports_ns3_side_bench_or_ns():
    code = (
        "import importlib, pkgutil, sys, ipcgw\n"
        "for m in pkgutil.walk_packages(ipcgw.__path__, 'ipcgw.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ns3_side', 'bench', 'ns', 'cppyy'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_surface_is_importable_from_the_top():
    for name in ipcgw.__all__:
        assert hasattr(ipcgw, name), name


def test_the_lazy_top_level_exports_exactly_what_it_lists():
    assert sorted(ipcgw.__all__) == sorted(ipcgw._EXPORTS)


def test_transports_and_urls_load_no_codec_or_session():
    """Transports move bytes: importing one (or parsing a URL) loads neither msgpack nor
    the messages, client or server modules."""
    code = (
        "import sys, ipcgw.url\n"
        "from ipcgw.transports import TRANSPORTS\n"
        "import importlib\n"
        "for target in TRANSPORTS.values():\n"
        "    importlib.import_module(target.partition(':')[0])\n"
        "importlib.import_module('ipcgw.transports.legacy_fifo')\n"
        "ipcgw.url.parse_url('unix:///tmp/x.sock?codec=json&framing=delimited:lf')\n"
        "bad = sorted(m for m in ('msgpack', 'ipcgw.messages', 'ipcgw.client', 'ipcgw.server', "
        "'ipcgw.channel') if m in sys.modules)\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_codec_entries_agree_with_their_modules():
    import importlib

    from ipcgw.codecs import CODECS

    assert CODECS["sspi2"].default_framing == f"read:{importlib.import_module('ipcgw.sspi2').MESSAGE_SIZE}"
    for codec in CODECS.values():
        module = importlib.import_module(codec.module)
        assert callable(module.encode) and callable(module.decode)
