"""The ``phi3lab`` command.

    phi3lab info [--model NAME]              hardware report and attention choice (and the model's info)
    phi3lab chat "What is 2 plus 3?" [--model NAME] [--image PATH ...] [--max-new-tokens N]
    phi3lab probe --model tiny --out results.jsonl   a resumable safety sweep and its report (phi3lab.safety.cli)

Errors never show a traceback: a problem with the arguments, the model files or the prompt prints
one ``phi3lab: error: ...`` line that says what to do and exits with 2; an unexpected error prints
its type and message and exits with 1 (``PHI3LAB_TRACEBACK=1`` re-raises it to show where).  When
the reader of the output goes away (``phi3lab info | head -1``) the command ends quietly with 141,
the exit status of a process stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3lab", description="Phi-3 research workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    from phi3lab.safety.cli import add_hardware_options, add_probe_command

    info = sub.add_parser("info", help="print the hardware report and the attention choice with its reason")
    info.add_argument("--model", help="also load this model and print its info table")
    add_hardware_options(info)
    chat = sub.add_parser("chat", help="answer one prompt")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--model", default="tiny", help="embedded name, local folder or hub id (default: tiny)")
    chat.add_argument(
        "--image",
        action="append",
        default=[],
        help="a picture for a vision model (repeat for several: <|image_1|>, <|image_2|>, … are added to the prompt)",
    )
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=128, help="most tokens in the answer (default 128)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default); above 0 samples")
    chat.add_argument(
        "--special-tokens",
        choices=("refuse", "allow", "escape"),
        default="refuse",
        help="control-token strings such as <|end|> typed in the prompt: refuse them (default), "
        "allow them as control tokens, or escape them as plain text",
    )
    add_hardware_options(chat)
    chat.add_argument("--stats", action="store_true", help="print token counts and speed after the answer")
    add_probe_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 unexpected error, 2 usage or input error)."""
    try:
        return _run(_parser().parse_args(argv))
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # the last line of defence: a message, not a traceback
        if os.environ.get("PHI3LAB_TRACEBACK"):
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (set PHI3LAB_TRACEBACK=1 to see where it happened)")
        return 1


def _say(message: str) -> None:
    try:
        print(f"phi3lab: {message}", file=sys.stderr)
    except (OSError, ValueError):  # stderr closed as well: nothing left to tell
        pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured by a test)
        pass


def _run(args: argparse.Namespace) -> int:
    import phi3lab
    from phi3lab.runtime.generation import chat

    try:
        if args.command == "info":
            print(phi3lab.hardware_report())
            choice = phi3lab.select_attention(args.device, args.dtype, attn=args.attn)
            print(f"\nselected: {choice.summary()}")
            if args.model:
                lab = phi3lab.load(args.model, device=args.device, dtype=args.dtype, attn=args.attn, verbose=False)
                print("\n" + lab.info())
            return 0
        if args.command == "probe":
            from phi3lab.safety.cli import run_probe

            return run_probe(args)
        lab = phi3lab.load(args.model, device=args.device, dtype=args.dtype, attn=args.attn, verbose=False)
        prompt = args.prompt
        images = []
        if not args.image and lab.spec.modality == "vision" and "<|image_" not in prompt:
            _say(
                f"warning: {lab.spec.name} is a vision model and no picture was given, so it answers from the text "
                "alone; pass one with --image PATH (e.g. --image data/images/shapes.png)"
            )
        if args.image:
            from phi3lab.prompts.images import open_image

            images = [open_image(p) for p in args.image]
            tags = "".join(f"<|image_{i + 1}|>\n" for i in range(len(images)))
            prompt = prompt if "<|image_" in prompt else tags + prompt
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        result = chat(
            lab,
            messages,
            images,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            special_tokens=args.special_tokens,
        )
        if args.stats:
            print(result.stats(), file=sys.stderr)
        return 0
    except BrokenPipeError:
        raise
    except (ValueError, OSError, MemoryError) as exc:
        # ModelNotFoundError, ModelNotAvailableError, ModelFilesError, NotEnoughMemoryError,
        # AttentionRequestError, ChatFormatError, ContextOverflowError, ImageInputError and bad values
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
