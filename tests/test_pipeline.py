"""Input preprocessing and output post-processing."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teellm.devmodel import make_model_dir
from teellm.engine.errors import InvalidModelError, InvalidRequestError
from teellm.engine.source import ModelSource
from teellm.pipeline.chat import ChatTemplate, TemplateRaised
from teellm.pipeline.detokenize import IncrementalDetokenizer
from teellm.pipeline.stops import StopMatcher
from teellm.pipeline.text import normalize_text
from teellm.pipeline.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_source(ModelSource.from_dir(model_dir))


# -- text -----------------------------------------------------------------------------
def test_nfc_and_control_characters() -> None:
    assert normalize_text("cafe\u0301") == "caf\u00e9"
    assert normalize_text("a\x00b\x1b[31mc\x7fd\x85e") == "ab[31mcde"
    assert normalize_text("tab\tline\nret\r") == "tab\tline\nret\r"
    assert normalize_text("lone \ud800 surrogate") == "lone  surrogate"


@given(st.text())
def test_normalize_is_clean_and_idempotent(text: str) -> None:
    out = normalize_text(text)
    assert unicodedata.is_normalized("NFC", out)
    assert normalize_text(out) == out
    bad = [c for c in out if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r"]
    assert not bad


# -- chat templates -------------------------------------------------------------------
def test_chat_template_matches_transformers(model_dir: Path, tokenizer: TextTokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello world!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
    ]
    for gen in (True, False):
        ours = tokenizer.apply_chat_template(messages, add_generation_prompt=gen)
        theirs = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
        assert ours == theirs
        ids = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert tokenizer.encode(ours, add_special_tokens=False) == list(ids)


def test_chat_template_raise_exception_and_bos_eos() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "x"}], add_generation_prompt=True) == (
        "<s>x</s>"
    )
    with pytest.raises(TemplateRaised) as info:
        template.render([{"role": "system", "content": "x"}], add_generation_prompt=True)
    assert info.value.code == "chat_template_rejected"


def test_chat_template_is_sandboxed() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequestError):
        template.render([{"role": "user", "content": "x"}], add_generation_prompt=False)


def test_broken_template_is_a_model_error() -> None:
    with pytest.raises(InvalidModelError):
        ChatTemplate("{% for %}")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "wizard", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
        ["not a dict"],
    ],
)
def test_bad_messages_are_typed_errors(tokenizer: TextTokenizer, messages: object) -> None:
    with pytest.raises(InvalidRequestError):
        tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # type: ignore[arg-type]


message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "bogus"]),
        "content": st.one_of(st.text(max_size=20), st.integers(), st.none()),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(message, max_size=4))
def test_fuzzed_messages_render_or_raise_typed(tokenizer: TextTokenizer, messages: list) -> None:
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except InvalidRequestError:
        return
    assert isinstance(out, str)


def test_content_parts_are_joined(tokenizer: TextTokenizer) -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    with_parts = tokenizer.apply_chat_template([{"role": "user", "content": parts}])
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert with_parts == plain


# -- detokenisation -------------------------------------------------------------------
@pytest.mark.parametrize("text", ["Hello world! 42", "héllo wörld 世界 🙂👍🏽 ok", "ζ\nσ\t∑ é"])
def test_incremental_detokenization_never_splits_characters(
    tokenizer: TextTokenizer, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 4  # multi-byte characters span several byte tokens
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi", add_special_tokens=True))
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == tokenizer.decode(ids)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40))
def test_incremental_equals_full_decode(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)


def test_truncated_character_flushes_as_replacement(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert "\ufffd" in detok.flush()


# -- stop strings ---------------------------------------------------------------------
def _run_stops(chunks: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(c) for c in chunks)
    stopped = matcher.stopped
    return out + matcher.flush(), stopped


def test_stop_string_across_chunks() -> None:
    # 'b' completes before the longer 'SbS' could: generation stops there.
    assert _run_stops(["Sb", "S"], ["b", "SbS"]) == ("S", True)
    assert _run_stops(["SbS"], ["b", "SbS"]) == ("", True)
    assert _run_stops(["Hello wo", "rld! E", "ND more"], ["END"]) == ("Hello world! ", True)
    assert _run_stops(["ab", "c"], ["bcd"]) == ("abc", False)
    assert _run_stops(["x<", "|", "stop|>y"], ["<|stop|>", "zz"]) == ("x", True)


def test_stop_held_back_text_is_not_released_early() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.feed("O") == ""
    assert matcher.feed("x") == "STOx"


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abcS", max_size=30),
    st.lists(st.text(alphabet="abcS", min_size=1, max_size=3), min_size=1, max_size=3),
    st.lists(st.integers(1, 5), min_size=1, max_size=30),
)
def test_stop_matches_reference(text: str, stops: list[str], cuts: list[int]) -> None:
    chunks, i = [], 0
    for n in cuts:
        chunks.append(text[i : i + n])
        i += n
    chunks.append(text[i:])
    # Generation stops at the first chunk after which some stop string is complete,
    # cut before the earliest stop string present by then (a longer stop string that
    # would only complete later cannot count: the text after the stop is never made).
    seen, expected, hit = "", text, False
    for chunk in chunks:
        seen += chunk
        hits = [seen.find(s) for s in stops if s in seen]
        if hits:
            expected, hit = seen[: min(hits)], True
            break
    assert _run_stops(chunks, stops) == (expected, hit)


def test_generation_tag_and_pipeline_imports_alone() -> None:
    import subprocess
    import sys

    code = (
        "from teellm.pipeline.chat import ChatTemplate\n"
        "t = ChatTemplate(\"{% for m in messages %}{% generation %}{{ m['content'] }}"
        '{% endgeneration %}{% endfor %}")\n'
        "print(t.render([{'role': 'assistant', 'content': 'yo'}], add_generation_prompt=False))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "yo"
