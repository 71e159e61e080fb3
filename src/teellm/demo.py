"""``make demo``: the whole main job on embedded defaults, unattended.

1. generate a small random Llama-family model (or take ``--model DIR``);
2. seal it as the publisher (encrypted, signed, version 1);
3. store its content key in the key broker (SQLite, temp dir) under a release
   policy, and start the broker (``teellm kbs serve``);
4. start the confidential server with the simulated TEE (``teellm serve``): it
   attests, has the broker release the key, opens the bundle into protected memory;
5. verify the server from the client (fresh nonce, evidence, model identity);
6. stream a chat answer through the end-to-end encrypted channel with the real
   ``openai`` package, and check the signed receipt;
7. print the verification report and shut everything down.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

DEFAULT_PROMPT = "Hello! What does a trusted execution environment protect?"


def _model_id(model_dir: Path | None) -> str:
    if model_dir is None:
        return "tiny-llama"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name).strip("-.")
    return name or "model"


def run(
    *,
    model_dir: Path | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 48,
    precision: str = "float32",
    console: Console | None = None,
) -> int:
    """Run the demo; 0 when every step succeeded."""
    import httpx

    from teellm.client.client import openai_client, session_of
    from teellm.client.report import render_report
    from teellm.crypto import receipts
    from teellm.server.stack import LocalStack

    out = console or Console()
    started = time.monotonic()
    model_id = _model_id(model_dir)
    with tempfile.TemporaryDirectory(prefix="teellm-demo-") as tmp:
        stack = LocalStack(
            Path(tmp),
            model_dir=model_dir,
            model_id=model_id,
            tenants={"demo": [model_id]},
            precision=precision,
        )
        out.print(Rule("1-3  publisher: model, seal, key broker"))
        stack.prepare()
        m = stack.manifest
        source = model_dir if model_dir is not None else "generated tiny random Llama model"
        out.print(f"model:    {source}")
        out.print(f"sealed:   {m.model_id} v{m.version}, manifest digest {m.digest_hex()}")
        out.print(f"          publisher key id {m.publisher_key_id}")
        out.print("broker:   content key stored (wrapped under the broker's master key)")
        try:
            out.print(Rule("4  confidential server (simulated TEE)"))
            stack.start()
            out.print(f"broker:   {stack.kbs_url}")
            out.print(f"server:   {stack.url}  (key released by the broker, bundle opened)")
            out.print(
                "[yellow]the server runs on the SIMULATED TEE: fine for a demo, "
                "no hardware protection[/yellow]"
            )

            out.print(Rule("5  client verifies the server before sending anything"))
            client = openai_client(stack.url, stack.client_policy(), api_key=stack.token("demo"))
            session = session_of(client)
            assert session.report is not None and session.pinned is not None
            out.print(
                f"verified: {'yes' if session.report.accepted else 'NO'} "
                f"(key id {session.pinned.key_id.hex()})"
            )

            out.print(Rule("6  chat, streamed through the end-to-end encrypted channel"))
            out.print(f"[bold]user:[/bold] {prompt}")
            out.print("[bold]assistant:[/bold] ", end="")
            stream = client.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.7,
                stream=True,
            )
            chunks = 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    out.print(chunk.choices[0].delta.content, end="", markup=False)
                    chunks += 1
            out.print()
            if model_dir is None:
                out.print(
                    "[dim](random weights: the words are gibberish, the channel is real)[/dim]"
                )
            receipt = session.last_receipt
            assert receipt is not None
            receipts.verify_receipt(
                receipt, session.pinned.signing, model_digest=stack.manifest.digest()
            )
            out.print(
                f"{chunks} chunks, each sealed and checked in order; receipt signed by the "
                f"attested key verified (response sha256 {receipt.response_hash[:16]}...)"
            )
            plain = httpx.post(
                stack.url + "/v1/chat/completions",
                json={"model": model_id, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {stack.token('demo')}"},
            )
            out.print(
                f"a plaintext request is refused: HTTP {plain.status_code} "
                f"{plain.json()['error']['code']}"
            )

            out.print(Rule("7  verification report"))
            render_report(session.report, out)
            client.close()
        finally:
            out.print(Rule("shutdown"))
            statuses = stack.stop()
        clean = all(code in (0, -15) for code in statuses.values())
        out.print(
            "stopped: "
            + ", ".join(
                f"{name} ({'clean' if code in (0, -15) else code})"
                for name, code in statuses.items()
            )
        )
    out.print(f"demo finished in {time.monotonic() - started:.1f} s")
    return 0 if clean and session.report.accepted else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m teellm.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, help="A Hugging Face Llama-family model directory.")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "int8"])
    args = parser.parse_args(argv)
    sys.exit(
        run(
            model_dir=args.model,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            precision=args.precision,
        )
    )


if __name__ == "__main__":
    main()
