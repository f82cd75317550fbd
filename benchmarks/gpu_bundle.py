"""Carry TensorFlow to a GPU machine that has neither it nor CUDA 12, within a 64 MiB-per-call transfer.

    python benchmarks/gpu_bundle.py --out .gpu [--arch 90] [--part-mib 60]

The device machine this project is sometimes lent (an H200) runs Python 3.12 with CUDA 13 libraries only,
cannot reach the internet, and takes at most 64 MiB of files per call, each call counting against 15 minutes.
TensorFlow 2.21's wheel is 546 MiB and it loads CUDA 12's libraries (cuBLAS alone is 347 MiB), so the
pipeline's GPU path cannot be measured there as packaged. This script makes it fit:

* the pinned wheels the deep stage imports (``constraints.txt``'s versions, cp312) are unpacked into one
  site folder, TensorFlow without its C++ headers;
* the GPU code in TensorFlow's and cuBLAS's shared libraries is a fat binary per kernel family, one cubin
  per architecture (sm_50 … sm_90) plus PTX. Every cubin for another architecture than ``--arch`` is
  overwritten with zeros in place (the sizes, offsets and headers stay, so the CUDA runtime still finds
  the ``--arch`` cubin it would have picked; PTX is kept) and compresses to nothing;
* TensorFlow checks at start-up that it can dlopen cuFFT, cuSOLVER and cuSPARSE, which the deep network
  never calls: empty libraries with those sonames stand in (a call into one would fail loudly, not
  silently: TensorFlow resolves each symbol when it is first used). cuDNN 9 is the machine's own;
* the folder is tarred, xz-compressed and split into ``--part-mib`` parts, carried one call each into
  ``/tmp/gpu`` there by ``benchmarks/gpu_run.sh receive`` and unpacked by ``benchmarks/gpu_run.sh run``.

This is transport only: the network, its code and its data are the pipeline's own (``benchmarks/
deep_training.py``, unchanged). Prints the sizes and writes ``OUT/bundle.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the deep stage imports beyond what the device's Python has, at the versions of constraints.txt
WHEELS = (
    "tensorflow keras optree namex astunparse gast google-pasta termcolor opt_einsum ml_dtypes protobuf absl-py "
    "flatbuffers wrapt h5py optuna colorlog SQLAlchemy alembic Mako greenlet pandas"
).split()
CUDA12 = ("nvidia-cublas-cu12==12.5.3.2", "nvidia-cuda-runtime-cu12==12.5.82")  # TensorFlow 2.21's floor
STUBS = {"cufft": "11", "cusolver": "11", "cusparse": "12"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
FATBIN_MAGIC = 0xBA55ED50
CUBIN = 2  # an entry's kind: 1 PTX, 2 ELF (cubin)


def pinned(names: list[str]) -> list[str]:
    """``name==version`` for each name, from constraints.txt (names compared case- and dash-insensitively)."""
    norm = lambda s: s.lower().replace("_", "-")  # noqa: E731
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name.strip())] = version.split(";")[0].strip()
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise SystemExit(f"not pinned in constraints.txt: {missing}")
    return [f"{n}=={pins[norm(n)]}" for n in names]


def fatbin_section(path: Path) -> tuple[int, int] | None:
    """(file offset, size) of the ELF's .nv_fatbin section, or None."""
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if " .nv_fatbin " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    return None


def fatbin_entries(buf, offset: int, size: int):
    """(kind, sm, payload offset, payload size) of every entry of every fat binary in buf[offset:offset+size].
    Each fat binary: a 16-byte header (magic, version, header size, size of its entries), then entries of a
    header (kind, version, header size, padded payload size, ..., sm at byte 28) and the payload."""
    pos, end = offset, offset + size
    while pos + 16 <= end:
        magic, _version, header, total = struct.unpack_from("<IHHQ", buf, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # the fat binaries are 8-byte aligned
            continue
        entry, stop = pos + header, pos + header + total
        while entry < stop:
            kind, _v, entry_header, padded = struct.unpack_from("<HHII", buf, entry)
            sm = struct.unpack_from("<I", buf, entry + 28)[0]
            yield kind, sm, entry + entry_header, padded
            entry += entry_header + padded
        pos = stop


def keep_one_arch(path: Path, arch: int) -> dict:
    """Zero every cubin of another architecture than ``arch`` in the library's fat binaries, in place."""
    section = fatbin_section(path)
    if section is None:
        return {}
    buf = bytearray(path.read_bytes())
    found, zeroed = set(), 0
    for kind, sm, start, size in fatbin_entries(buf, *section):
        found.add(f"{'cubin' if kind == CUBIN else 'ptx'}_sm{sm}")
        if kind == CUBIN and sm != arch:
            buf[start : start + size] = bytes(size)
            zeroed += size
    if f"cubin_sm{arch}" not in found:
        raise SystemExit(f"{path.name}: no sm_{arch} cubin in its fat binaries ({sorted(found)}): nothing would run")
    path.write_bytes(bytes(buf))
    kept = sorted(f for f in found if f.startswith("ptx") or f == f"cubin_sm{arch}")
    return {"file": path.name, "section_mb": section[1] / 1e6, "zeroed_mb": zeroed / 1e6, "kept": kept}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu", help="where the parts go (keep it git-ignored)")
    ap.add_argument("--arch", type=int, default=90, help="the device's compute capability (H200: 90)")
    ap.add_argument("--part-mib", type=int, default=60, help="size of each part (a call carries 64 MiB in all)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("part.*"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        site = Path(tmp) / "site"
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary=:all:"]
        pip += ["--python-version", "3.12", "--implementation", "cp", "--target", str(site)]
        for p in PLATFORMS:
            pip += ["--platform", p]
        subprocess.run(pip + pinned(WHEELS) + list(CUDA12), check=True)
        shutil.rmtree(site / "tensorflow" / "include")
        shutil.rmtree(site / "bin", ignore_errors=True)
        (site / "nvidia" / "cublas" / "lib" / "libnvblas.so.12").unlink(missing_ok=True)
        zeroed = [r for lib in sorted(site.rglob("*.so*")) if lib.is_file() if (r := keep_one_arch(lib, args.arch))]
        src = Path(tmp) / "stub.c"
        src.write_text("int assoc_gpu_bundle_stub(void) { return 0; }\n")
        for name, version in STUBS.items():
            lib = site / "nvidia" / name / "lib" / f"lib{name}.so.{version}"
            lib.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{lib.name}", "-o", str(lib), str(src)], check=True)
        unpacked = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        pack = f"tar -C {shlex.quote(str(site))} -cf - . | xz -T0 -6 -c | split -b {args.part_mib}M -d -a 2 - "
        subprocess.run(["bash", "-o", "pipefail", "-c", pack + shlex.quote(str(args.out / "part."))], check=True)
    parts = sorted(args.out.glob("part.*"))
    report = {
        "arch": args.arch,
        "unpacked_mb": unpacked / 1e6,
        "compressed_mb": sum(p.stat().st_size for p in parts) / 1e6,
        "parts": [p.name for p in parts],
        "part_mib": args.part_mib,
        "fat_binaries": zeroed,
        "stubs": [f"lib{n}.so.{v}" for n, v in STUBS.items()],
        "wheels": pinned(WHEELS) + list(CUDA12),
    }
    (args.out / "bundle.json").write_text(json.dumps(report, indent=2))
    print(f"{len(parts)} parts of {args.part_mib} MiB: {report['compressed_mb']:.0f} MB from {unpacked / 1e6:.0f} MB")
    for z in zeroed:
        print(f"  {z['file']}: {z['zeroed_mb']:.0f} of {z['section_mb']:.0f} MB of GPU code zeroed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
