"""``teellm generate``: one generation from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from teellm.errors import TeellmError


def register(app: typer.Typer) -> None:
    """Add this component's commands to the ``teellm`` app."""
    app.command("generate")(generate)


def generate(
    model: Path = typer.Argument(..., help="A model directory or a sealed bundle directory."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt text."),
    chat: bool = typer.Option(False, "--chat", help="Send the prompt as a user chat message."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int | None = typer.Option(None, "--seed"),
    precision: str = typer.Option("bfloat16", "--precision", help="float32, bfloat16 or int8."),
    key: Path | None = typer.Option(None, "--key", help="Content key file (sealed bundles)."),
    trusted_publisher: list[Path] = typer.Option(  # noqa: B006
        [], "--trusted-publisher", help="Publisher public key (PEM) trusted for bundles."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate text from MODEL (greedy when the temperature is 0), like llama-cli."""
    from teellm.engine import Engine, GenerationRequest, ModelSource, SamplingParams
    from teellm.settings import ModelSettings

    try:
        settings = ModelSettings(batch_size=1, precision=precision)  # type: ignore[arg-type]
        sampling = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[0]) from exc
    loaded: Any = None
    try:
        if key is not None:
            loaded = _open_bundle(model, key, trusted_publisher)
            source = ModelSource.from_bundle(loaded)
        elif (model / "config.json").is_file():
            source = ModelSource.from_dir(model)
        else:
            _fail(
                "MODEL has no config.json; for a sealed bundle pass --key and --trusted-publisher"
            )
        engine = Engine(source, settings, model_id=source.name)
        request = GenerationRequest(
            request_id="cli",
            prompt=None if chat else prompt,
            messages=[{"role": "user", "content": prompt}] if chat else None,
            sampling=sampling,
        )
        with engine:
            if as_json:
                result = engine.generate(request)
                out = {
                    "text": result.text,
                    "token_ids": result.token_ids,
                    "finish_reason": result.finish_reason,
                    "usage": {
                        "prompt_tokens": result.usage.prompt_tokens,
                        "completion_tokens": result.usage.completion_tokens,
                        "total_tokens": result.usage.total_tokens,
                    },
                }
                typer.echo(json.dumps(out, ensure_ascii=False))
            else:
                _stream_to_stdout(engine, request)
    except TeellmError as exc:
        _fail(f"{exc.code}: {exc}")
    finally:
        if loaded is not None:
            loaded.close()


def _stream_to_stdout(engine: Any, request: Any) -> None:
    import asyncio

    async def run() -> None:
        async for delta in engine.stream(request):
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")

    asyncio.run(run())


def _open_bundle(bundle: Path, key: Path, publishers: list[Path]) -> Any:
    from teellm.bundle.keys import load_public_key, read_content_key
    from teellm.bundle.loader import load_bundle
    from teellm.memory import harden_process

    if not publishers:
        _fail("a sealed bundle needs at least one --trusted-publisher")
    harden_process()  # no core dump or ptrace of a process holding plaintext weights
    content_key = read_content_key(key)
    return load_bundle(
        bundle,
        content_key=content_key,
        trusted_publishers=[load_public_key(p) for p in publishers],
    )


def _fail(message: str) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)
