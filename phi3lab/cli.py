"""The ``phi3lab`` command.

    phi3lab info [--model NAME]              hardware report and attention choice (and the model's info)
    phi3lab chat "What is 2 plus 3?" [--model NAME] [--image PATH ...] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3lab", description="Phi-3 research workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the hardware report and the attention choice with its reason")
    info.add_argument("--model", help="also load this model and print its info table")
    for p in (info,):
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")
        p.add_argument("--attn", default="auto")
    chat = sub.add_parser("chat", help="answer one prompt")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--model", default="tiny", help="embedded name, local folder or hub id (default: tiny)")
    chat.add_argument("--image", action="append", default=[], help="image file for <|image_N|> (vision models)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto")
    chat.add_argument("--attn", default="auto")
    chat.add_argument("--stats", action="store_true", help="print token counts and speed after the answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import phi3lab
    from phi3lab.attention_backend import AttentionRequestError
    from phi3lab.chat import ChatFormatError

    try:
        if args.command == "info":
            print(phi3lab.hardware_report())
            choice = phi3lab.select_attention(args.device, args.dtype, attn=args.attn)
            print(f"\nselected: {choice.summary()}")
            if args.model:
                lab = phi3lab.load(args.model, device=args.device, dtype=args.dtype, attn=args.attn, verbose=False)
                print("\n" + lab.info())
            return 0
        lab = phi3lab.load(args.model, device=args.device, dtype=args.dtype, attn=args.attn, verbose=False)
        prompt = args.prompt
        images = []
        if args.image:
            from phi3lab.images import open_image

            images = [open_image(p) for p in args.image]
            tags = "".join(f"<|image_{i + 1}|>\n" for i in range(len(images)))
            prompt = prompt if "<|image_" in prompt else tags + prompt
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        result = lab.chat(messages, images, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        if args.stats:
            print(result.stats(), file=sys.stderr)
        return 0
    except (phi3lab.ModelNotFoundError, phi3lab.ModelNotAvailableError, AttentionRequestError,
            ChatFormatError, ValueError) as exc:
        print(f"phi3lab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
