"""benchmarks/gpu_bundle.py: the fat-binary surgery that lets TensorFlow travel to the lent GPU machine. A
shared library is built here with a hand-made .nv_fatbin section (two fat binaries, cubins for sm_80 and
sm_90 and PTX, laid out as the CUDA toolchain lays them out); after ``keep_one_arch(lib, 90)`` only the
sm_80 cubins' payloads are zeros and every other byte of the file is as it was."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from tests.conftest import load_benchmark

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") and shutil.which("readelf")), reason="needs a C compiler and readelf to build an ELF"
)


def _bench():
    return load_benchmark("gpu_bundle")


def _entry(kind: int, sm: int, payload: bytes) -> bytes:
    """One entry: a 64-byte header (kind, version, header size, padded payload size, ..., sm at byte 28)."""
    header = struct.pack("<HHII", kind, 0x0101, 64, len(payload)) + bytes(16) + struct.pack("<I", sm)
    return header + bytes(64 - len(header)) + payload


def _fatbin(entries: list[bytes]) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def _library(tmp_path, fatbins: list[bytes]):
    section = b"".join(fatbins)
    array = ", ".join(str(b) for b in section)
    src = tmp_path / "fat.c"
    src.write_text(
        f'__attribute__((section(".nv_fatbin"), used, aligned(8))) const unsigned char fat[{len(section)}] = '
        f"{{{array}}};\nint f(void) {{ return fat[0]; }}\n"
    )
    lib = tmp_path / "libfat.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, section


def test_other_architectures_cubins_are_zeroed_and_nothing_else_moves(tmp_path):
    bench = _bench()
    sm80_a, sm90_a, ptx_a = b"\x11" * 40, b"\x22" * 48, b"\x33" * 24
    sm80_b, sm90_b = b"\x44" * 16, b"\x55" * 32
    lib, section = _library(
        tmp_path,
        [
            _fatbin([_entry(2, 80, sm80_a), _entry(2, 90, sm90_a), _entry(1, 90, ptx_a)]),
            _fatbin([_entry(2, 90, sm90_b), _entry(2, 80, sm80_b)]),
        ],
    )
    before = lib.read_bytes()
    offset, size = bench.fatbin_section(lib)
    assert before[offset : offset + size] == section  # the section as written, found by readelf

    listed = [
        (kind, sm, before[start : start + n]) for kind, sm, start, n in bench.fatbin_entries(before, offset, size)
    ]
    assert listed == [(2, 80, sm80_a), (2, 90, sm90_a), (1, 90, ptx_a), (2, 90, sm90_b), (2, 80, sm80_b)]

    report = bench.keep_one_arch(lib, 90)
    after = lib.read_bytes()
    assert len(after) == len(before)
    assert report["zeroed_mb"] == pytest.approx((len(sm80_a) + len(sm80_b)) / 1e6)
    assert report["kept"] == ["cubin_sm90", "ptx_sm90"]
    expected = bytearray(before)
    for kind, sm, start, n in bench.fatbin_entries(before, offset, size):
        if kind == 2 and sm == 80:
            expected[start : start + n] = bytes(n)
    assert after == bytes(expected)  # the sm_80 payloads are zeros; headers, sm_90, PTX and the rest unchanged

    with pytest.raises(SystemExit, match="no sm_75 cubin"):  # an architecture the library lacks: refused
        bench.keep_one_arch(lib, 75)
    assert lib.read_bytes() == after


def test_a_library_without_gpu_code_is_left_alone(tmp_path):
    src = tmp_path / "plain.c"
    src.write_text("int f(void) { return 1; }\n")
    lib = tmp_path / "libplain.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    before = lib.read_bytes()
    assert _bench().keep_one_arch(lib, 90) == {}
    assert lib.read_bytes() == before
