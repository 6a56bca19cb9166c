"""Compiles every kernels/*.cu with NVRTC (no GPU needed) and writes the PTX.

NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc-cu12` (pinned in tests/requirements.txt),
loaded with ctypes by full path from site-packages/nvidia/cuda_nvrtc/lib/. Its builtins
library (libnvrtc-builtins.so.*) is preloaded first with RTLD_GLOBAL so that libnvrtc finds it
without LD_LIBRARY_PATH.

Each source is compiled for every architecture in ARCHS with the options the Rust launcher
will use (`-std=c++17 --fmad=false`); `#include "common.cuh"` is served from memory (the
kernels/common.cuh text), so no include path is needed.

Usage: nvrtc_compile.py OUT_DIR
  writes OUT_DIR/<stem>.<arch>.ptx and prints a JSON summary on stdout:
  {"nvrtc": "12.4", "ptx": {"<stem>": {"<arch>": "<path>"}}}
Exits 1 (with the compile log on stderr) when NVRTC is missing or a kernel fails to compile.
"""

import ctypes
import glob
import json
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "kernels")
ARCHS = ["compute_70", "compute_90"]
OPTIONS = ["-std=c++17", "--fmad=false"]
HEADERS = ["common.cuh"]

NVRTC_SUCCESS = 0


def fail(message):
    print(f"nvrtc_compile: {message}", file=sys.stderr)
    sys.exit(1)


def find_nvrtc():
    """The wheel's lib directory under one of the interpreter's site-packages."""
    candidates = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            candidates.append(os.path.join(path, "nvidia", "cuda_nvrtc", "lib"))
    for directory in candidates:
        main = sorted(glob.glob(os.path.join(directory, "libnvrtc.so*")))
        builtins = sorted(glob.glob(os.path.join(directory, "libnvrtc-builtins.so*")))
        if main and builtins:
            return main[0], builtins[0]
    fail(
        "libnvrtc not found (looked in "
        + ", ".join(candidates)
        + "): install nvidia-cuda-nvrtc-cu12 (tests/requirements.txt; scripts/bootstrap.sh)"
    )


def load_nvrtc():
    main, builtins = find_nvrtc()
    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(main, mode=ctypes.RTLD_GLOBAL)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcCreateProgram.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_char_p),
    ]
    lib.nvrtcCompileProgram.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
    ]
    lib.nvrtcGetProgramLogSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetProgramLog.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcGetPTXSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetPTX.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return lib


def check(lib, result, what):
    if result != NVRTC_SUCCESS:
        fail(f"{what}: {lib.nvrtcGetErrorString(result).decode()}")


def c_strings(items):
    array = (ctypes.c_char_p * len(items))()
    array[:] = [s.encode() for s in items]
    return array


def compile_source(lib, name, source, headers, arch):
    """Returns (ptx or None, log)."""
    prog = ctypes.c_void_p()
    header_names = list(headers)
    check(
        lib,
        lib.nvrtcCreateProgram(
            ctypes.byref(prog),
            source.encode(),
            name.encode(),
            len(header_names),
            c_strings([headers[h] for h in header_names]),
            c_strings(header_names),
        ),
        f"nvrtcCreateProgram({name})",
    )
    try:
        options = [f"--gpu-architecture={arch}"] + OPTIONS
        result = lib.nvrtcCompileProgram(prog, len(options), c_strings(options))
        size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        log = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetProgramLog(prog, log), "log")
        log = log.value.decode(errors="replace")
        if result != NVRTC_SUCCESS:
            return None, f"{lib.nvrtcGetErrorString(result).decode()}\n{log}"
        check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
        ptx = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, ptx), "PTX")
        return ptx.value.decode(), log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main():
    if len(sys.argv) != 2:
        fail("usage: nvrtc_compile.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    lib = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")

    headers = {}
    for header in HEADERS:
        with open(os.path.join(KERNELS, header), encoding="utf-8") as f:
            headers[header] = f.read()
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.cu")))
    if not sources:
        fail(f"no kernels/*.cu under {KERNELS}")

    summary = {"nvrtc": f"{major.value}.{minor.value}", "ptx": {}}
    failures = []
    for path in sources:
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            source = f.read()
        summary["ptx"][stem] = {}
        for arch in ARCHS:
            ptx, log = compile_source(lib, os.path.basename(path), source, headers, arch)
            if ptx is None:
                failures.append(f"--- {os.path.basename(path)} ({arch}) failed:\n{log}")
                continue
            if log.strip():
                print(f"--- {os.path.basename(path)} ({arch}) log:\n{log}", file=sys.stderr)
            out = os.path.join(out_dir, f"{stem}.{arch}.ptx")
            with open(out, "w", encoding="utf-8") as f:
                f.write(ptx)
            summary["ptx"][stem][arch] = out
    if failures:
        for failure in failures:
            print(failure, file=sys.stderr)
        fail(f"{len(failures)} compilation(s) failed")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
