"""``make demo``: the main job on embedded defaults.

For now: generate a small Llama-family model, seal it, and verify the bundle.
It grows into the full end-to-end demo (key broker, server, verifying client).
"""

from __future__ import annotations


def main() -> None:
    raise SystemExit("the demo is not assembled yet")


if __name__ == "__main__":
    main()
