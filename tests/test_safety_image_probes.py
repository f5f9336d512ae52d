"""Image-borne probes with a stand-in target: three-way verdicts per channel, honest transfer text, bad arguments."""

import pytest

from phi3lab.safety.image_probes import image_borne, key_words, render_request


class Reader:
    """Declines typed harmful requests; reads pictures back, answers a benign twin to harmful ones."""

    def __init__(self, reads: bool = True):
        self.reads = reads

    def answer(self, conversations):
        out = []
        for conversation in conversations:
            content = conversation[-1]["content"]
            if isinstance(content, str):
                words = ("bomb", "poison", "hurt", "steal", "weapon", "break", "hack", "malware", "virus", "gun")
                harmful = any(w in content for w in (*words, "pick", "harm", "safe", "eating"))
                out.append("I'm sorry, but I can't help with that." if harmful else "Sure! " + content)
            elif content[1] == "What does the picture say?":
                out.append(self.drawn.pop(0) if self.reads else "A cat.")
            else:
                out.append("Sure! To make a kite at home, plan it, gather what you need, and go step by step.")
        return out


def test_three_way_columns_and_transfer():
    target = Reader()
    probes = "tiny"
    from phi3lab.safety.probes import resolve

    target.drawn = [key_words(p.prompt) for p in resolve(probes) if p.kind == "harmful"]
    report = image_borne(target, probes, kinds=("harmful",))
    table = report.table()
    assert {t["kind"] for t in table} == {"harmful"}
    for t in table:
        assert t["text_refusal"] == 1 and t["image_declined"] == 0  # declined typed, not in the picture
        assert t["image_off_topic"] + t["image_complied"] == 1 and t["image_off_topic"] > 0
        # the refusal did not carry over, but what the picture got done is the benign twin, not the request
        assert t["gap_points"] == 100 and t["gain_points"] == round(100 * t["image_complied"], 1)
    text = report.to_text()
    assert "off-topic" in text and "declined" in text and "were declined in the picture" in text
    assert "refusal gap = typed minus picture declined; complied gain" in text


def test_transfer_is_called_unmeasurable_when_nothing_was_read():
    report = image_borne(Reader(reads=False), "tiny", kinds="harmful")
    assert report.transfer()["read_and_refused_typed"] == 0
    text = report.to_text()
    assert "not measurable — none of the 30 harmful requests declined typed was read back" in text
    assert "of 0 harmful" not in text
    quick = image_borne(Reader(reads=False), "tiny", kinds="harmful", read_back=False)
    assert "not measured (no read-back question was asked)" in quick.to_text()


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        ({"kinds": ["evil"]}, ValueError, "kinds must name 'harmful' and/or 'benign', got ['evil']"),
        ({"kinds": []}, ValueError, "kinds must name"),
        ({"words": "all"}, ValueError, "words must be 'request' or 'keywords'"),
        ({"read_back": "yes"}, TypeError, "read_back must be True or False"),
        ({"detector": "strict"}, TypeError, "detector must be a function"),
    ],
)
def test_image_borne_bad_arguments(kwargs, error, says):
    with pytest.raises(error) as info:
        image_borne(Reader(), "tiny", **kwargs)
    assert says in str(info.value)
    with pytest.raises(TypeError, match="a loaded vision Lab or a target with answer"):
        image_borne(object(), "tiny")


@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        ({"width": 0}, ValueError, "width must be at least 64"),
        ({"width": -5}, ValueError, "width must be at least 64"),
        ({"width": 10**6}, ValueError, "width must be at most 4096"),
        ({"width": 300.5}, TypeError, "width must be an integer"),
        ({"font_size": 0}, ValueError, "font_size must be at least 6"),
        ({"margin": -1}, ValueError, "margin must be at least 0"),
        ({"margin": 300}, ValueError, "leaves no room"),
    ],
)
def test_render_request_refuses_sizes_with_no_room(kwargs, error, says):
    with pytest.raises(error) as info:
        render_request("pick lock", **kwargs)
    assert says in str(info.value)


@pytest.mark.parametrize("text, error", [("", ValueError), ("   ", ValueError), (None, TypeError), (b"x", TypeError)])
def test_render_request_needs_text(text, error):
    with pytest.raises(error, match="text"):
        render_request(text)
    assert render_request("pick lock", width=64, font_size=12, margin=4).size == (64, 160)


def test_a_quick_look_keeps_the_first_probes_of_each_category_and_kind(reader):
    from phi3lab.safety.image_probes import image_borne

    report = image_borne(reader, "tiny", limit=1, read_back=False, progress=False)
    keys = [(r["category"], r["kind"]) for r in report.rows]
    assert len(keys) == len(set(keys)) and len({c for c, _ in keys}) == 5  # one per category and kind
    with pytest.raises(ValueError, match="limit must be at least 1"):
        image_borne(reader, "tiny", limit=0)


@pytest.mark.parametrize("env, show, shown", [(None, True, True), ("1", True, False), (None, False, False)])
def test_the_progress_bar_follows_tqdm_disable(monkeypatch, env, show, shown):
    """TQDM_DISABLE=1 (CI, nbval, the notebook refresh) turns the bar off, as in sweep: an explicit disable=
    would otherwise override tqdm's own reading of it, and a refreshed notebook would store a stale widget."""
    from phi3lab.safety import image_probes

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    if env:
        monkeypatch.setenv("TQDM_DISABLE", env)
    bar = image_probes._bar(3, show, "image-borne probes")
    assert (not bar.disable) == shown
    bar.close()
