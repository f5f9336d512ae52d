"""Video frames as a Phi-3.5-vision prompt: sample N frames evenly, one image tag per frame.

Phi-3.5-vision reads a clip as several images in one user turn, ``<|image_1|>`` … ``<|image_N|>``,
each on its own line before the question; its model card recommends ``num_crops=4`` for several
frames (16 for one image), which is what its ``preprocessor_config.json`` sets.  :func:`sample_frames`
picks the frames (the middle of each of N equal stretches of the clip, so the first and last moments
are represented without sitting on the very first or last frame), and :func:`frames_prompt` writes the
user turn that goes with them:

    >>> from PIL import Image
    >>> clip = [Image.new("RGB", (64, 36), (10 * k, 0, 0)) for k in range(20)]
    >>> text, chosen = frames_prompt(clip, "What happens in this clip?", max_frames=4)
    >>> print(text)
    <|image_1|>
    <|image_2|>
    <|image_3|>
    <|image_4|>
    What happens in this clip?
    >>> [frame.getpixel((0, 0))[0] // 10 for frame in chosen]  # frames 2, 7, 12, 17 of 0..19
    [2, 7, 12, 17]

Then ``lab.chat(text, chosen)``, ``lab.budget(text, images=chosen)`` (each frame's tokens from its
size alone) or ``lab.encode(text, chosen).images`` (each frame's token span).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["sample_frames", "frames_prompt", "frame_indices"]


def frame_indices(total: int, count: int) -> list[int]:
    """The indices of ``count`` frames spread evenly over ``total``: the middle of each equal stretch.

    Examples:
        >>> frame_indices(10, 5), frame_indices(3, 8), frame_indices(7, 1)
        ([1, 3, 5, 7, 9], [0, 1, 2], [3])
    """
    for name, value in (("total", total), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "total" else 1):
            raise ValueError(f"{name} must be a whole number{' ≥ 1' if name == 'count' else ''}, got {value!r}")
    if total <= count:
        return list(range(total))
    return [int((k + 0.5) * total / count) for k in range(count)]


def sample_frames(frames: Sequence, count: int) -> list:
    """``count`` frames of ``frames`` spread evenly (all of them when there are no more than ``count``).

    Raises:
        TypeError: ``frames`` is not a sequence (a generator: pass ``list(frames)``, or decode only the
            frames :func:`frame_indices` names).
        ValueError: no frames, or ``count`` below 1.
    """
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise TypeError(
            f"frames must be a sequence of pictures (a list of PIL images or arrays), got {type(frames).__name__}; "
            "for a generator pass list(frames), or decode only frame_indices(total, count)"
        )
    if not frames:
        raise ValueError("no frames were given; pass the clip's frames as a list of pictures")
    return [frames[i] for i in frame_indices(len(frames), count)]


def frames_prompt(frames: Sequence, question: str, *, max_frames: int = 8) -> tuple[str, list]:
    """The user turn for a clip, and the frames it refers to, in order.

    Args:
        frames: the clip's frames (PIL images, arrays or file paths), in time order.
        question: what to ask about them.
        max_frames: at most this many frames are kept, spread evenly (8 frames at ``num_crops=4``
            cost about 6,000 image tokens for 16:9 frames: past 4,096 the 128K model's LongRoPE
            switches to its long factors, which ``lab.budget`` flags).

    Returns:
        ``(text, chosen)``: one ``<|image_k|>`` tag per chosen frame, each on its own line, then the question.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    chosen = sample_frames(frames, max_frames)
    tags = "".join(f"<|image_{k}|>\n" for k in range(1, len(chosen) + 1))
    return tags + question, chosen
