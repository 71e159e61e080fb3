"""Sealed model loading vs plain safetensors loading, in one process run.

Seals a model of random bf16 tensors (~1 GiB; ``--quick``: 32 MiB), then times:
- plain load: read the safetensors file into memory and build tensors over it
  (``readinto`` + ``torch.frombuffer``, no copies);
- sealed load: check signature, key and ciphertext commitments, decrypt into
  protected memory (memfd_secret, and locked anonymous memory); "full_audit" also
  re-hashes the plaintext (what ``teellm verify`` does);
- seal.
Prints MiB/s and the ratios sealed/plain; ``--json`` prints one JSON object.
Files are read from the page cache (warm) in every case, so the figures compare the
work done in memory, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from teellm.bundle.keys import generate_signing_key
from teellm.bundle.loader import load_bundle
from teellm.bundle.seal import seal_model
from teellm.bundle.tensors import tensors_from_buffer
from teellm.memory import probe_buffer_protections

MIB = 1024 * 1024


def make_model(root: Path, total_mib: int, seed: int = 0) -> Path:
    model = root / "model"
    model.mkdir()
    gen = torch.Generator().manual_seed(seed)
    tensor_mib = min(64, total_mib)
    count = max(1, total_mib // tensor_mib)
    cols = 4096
    rows = tensor_mib * MIB // (2 * cols)
    tensors = {
        f"model.layers.{i}.mlp.weight": torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
        for i in range(count)
    }
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    return model


def plain_load(path: Path) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    buf = bytearray(size)
    with open(path, "rb", buffering=0) as fh:
        view = memoryview(buf)
        done = 0
        while done < size:
            done += fh.readinto(view[done:])
    return tensors_from_buffer(memoryview(buf), path.name)


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        close = getattr(out, "close", None)
        if close:
            close()
        del out
    return min(times), times


def components(mib: int) -> dict[str, float]:
    """GiB/s of the building blocks on one thread (to explain the totals)."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from teellm.memory import ProtectedBuffer

    n = mib * MIB
    data = os.urandom(n)
    key, nonce, aad = os.urandom(32), os.urandom(12), b"aad"
    aead = AESGCM(key)
    ct = aead.encrypt(nonce, data, aad)
    out = bytearray(n)

    def gcm_update_into() -> None:
        dec = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
        dec.authenticate_additional_data(aad)
        dec.update_into(memoryview(ct)[:-16], out)
        dec.finalize_with_tag(ct[-16:])

    def first_touch(secret: bool) -> Callable[[], None]:
        def go() -> None:
            with ProtectedBuffer(n, prefer_secret=secret) as buf:
                buf.view[:] = data

        return go

    blocks: dict[str, Callable[[], Any]] = {
        "aesgcm_decrypt_into": lambda: aead.decrypt_into(nonce, ct, aad, out),
        "aesgcm_decrypt_allocating": lambda: aead.decrypt(nonce, ct, aad),
        "cipher_gcm_update_into": gcm_update_into,
        "sha256": lambda: hashlib.sha256(data).digest(),
        "protected_fill_memfd_secret": first_touch(True),
        "protected_fill_locked": first_touch(False),
    }
    return {k: round(n / best_of(fn, 2)[0] / 2**30, 2) for k, fn in blocks.items()}


def run(total_mib: int, chunk_mib: int, repeat: int, workers: int | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="teellm-bench-"))
    try:
        model = make_model(root, total_mib)
        st_file = model / "model.safetensors"
        size = st_file.stat().st_size
        sk = generate_signing_key()

        bundles = iter(range(1000))

        def do_seal() -> Any:
            out = root / f"bundle{next(bundles)}"
            res = seal_model(
                model,
                out,
                model_id="bench",
                version=1,
                signing_key=sk,
                chunk_size=chunk_mib * MIB,
                workers=workers,
            )
            return res

        t_seal, _ = best_of(do_seal, 1)
        res = do_seal()
        bundle = res.bundle_dir
        pub = [sk.public_key()]

        def sealed(**kw: Any) -> Callable[[], Any]:
            return lambda: load_bundle(
                bundle, content_key=res.content_key, trusted_publishers=pub, workers=workers, **kw
            )

        # Warm the page cache for both inputs.
        plain_load(st_file)
        sealed(prefer_secret=False)().close()

        results: dict[str, float] = {}
        results["plain_read_frombuffer"], _ = best_of(lambda: plain_load(st_file), repeat)
        results["sealed_memfd_secret"], _ = best_of(sealed(), repeat)
        results["sealed_memfd_secret_full_audit"], _ = best_of(
            sealed(verify_plaintext=True), repeat
        )
        results["sealed_locked"], _ = best_of(sealed(prefer_secret=False), repeat)
        results["sealed_locked_full_audit"], _ = best_of(
            sealed(prefer_secret=False, verify_plaintext=True), repeat
        )
        results["seal"] = t_seal
        res.content_key.zeroize()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mibs = {k: size / MIB / v for k, v in results.items()}
    plain = results["plain_read_frombuffer"]
    ratios = {f"{k}_vs_plain": plain / v for k, v in results.items() if k.startswith("sealed_")}
    protections = probe_buffer_protections()
    return {
        "bench": "sealed_load",
        "size_bytes": size,
        "chunk_size": chunk_mib * MIB,
        "workers": workers or min(8, os.cpu_count() or 1),
        "cpus": os.cpu_count(),
        "memfd_secret_available": protections.memfd_secret,
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "mib_per_s": {k: round(v, 1) for k, v in mibs.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "components_gib_per_s": components(min(64, total_mib)),
        "note": "best of repeats; page cache warm",
        "repeat": repeat,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024)")
    ap.add_argument("--chunk-mib", type=int, default=1, help="chunk size in MiB (default 1)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="32 MiB, one repeat: a smoke run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    size, repeat = (32, 1) if args.quick else (args.size_mib, args.repeat)
    out = run(size, args.chunk_mib, repeat, args.workers)
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return
    print(
        f"sealed load bench: {out['size_bytes'] / MIB:.0f} MiB, chunk {args.chunk_mib} MiB, "
        f"{out['workers']} workers, {out['cpus']} CPUs, "
        f"memfd_secret {'available' if out['memfd_secret_available'] else 'unavailable'}"
    )
    for k, v in out["mib_per_s"].items():
        print(f"  {k:32s} {v:10.1f} MiB/s  ({out['seconds'][k]:.3f} s)")
    for k, v in out["ratios"].items():
        print(f"  ratio {k:44s} {v:6.2f}x")
    print("  one-thread building blocks:")
    for k, v in out["components_gib_per_s"].items():
        print(f"    {k:30s} {v:6.2f} GiB/s")


if __name__ == "__main__":
    main()
