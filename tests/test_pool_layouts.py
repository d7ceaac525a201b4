"""Layout detection and normalisation of single records (curate.pool.layouts), with hand-computed answers."""

from __future__ import annotations

import json

import pytest

from curate.pool import RowError, content_id, normalise
from curate.pool.ids import canonical_bytes


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def S(c):
    return {"role": "system", "content": c}


def reason(record, columns=None):
    with pytest.raises(RowError) as ei:
        normalise(record, columns)
    return ei.value.reason


def test_alpaca_with_and_without_input():
    n = normalise({"instruction": "Add.", "input": "1+1", "output": "2"})
    assert n.kind == "sft" and n.rejected is None and n.domain is None
    assert n.messages == [U("Add.\n\n1+1"), A("2")]
    assert n.prompt == "Add.\n\n1+1" and n.response == "2"
    assert json.loads(n.meta) == {}
    for empty in ("", "   ", None):
        n = normalise({"instruction": "Say hi", "input": empty, "output": "hi"})
        assert n.prompt == "Say hi" and n.messages == [U("Say hi"), A("hi")]


def test_sharegpt_with_system():
    rec = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Ciao"},
        ],
        "id": "x1",
    }
    n = normalise(rec)
    assert n.messages == [S("Be brief."), U("Hi"), A("Hello"), U("Bye"), A("Ciao")]
    assert n.prompt == "system: Be brief.\n\nuser: Hi\n\nassistant: Hello\n\nuser: Bye"
    assert n.response == "Ciao"
    assert json.loads(n.meta) == {"id": "x1"}


def test_openai_messages_single_turn_and_content_parts():
    n = normalise({"messages": [U("q"), A("a")]})
    assert n.prompt == "q" and n.response == "a"
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "l1"}, {"type": "text", "text": "l2"}]},
            A("a"),
        ]
    }
    assert normalise(parts).prompt == "l1\nl2"


def test_system_message_in_messages_and_prompt():
    n = normalise({"messages": [S("sys"), U("q"), A("a")]})
    assert n.messages == [S("sys"), U("q"), A("a")]
    assert n.prompt == "system: sys\n\nuser: q"
    # a separate `system` field works for text layouts too
    n = normalise({"prompt": "q", "response": "a", "system": "sys"})
    assert n.messages == [S("sys"), U("q"), A("a")] and n.prompt == "system: sys\n\nuser: q"


def test_prompt_response_and_completion():
    assert normalise({"prompt": "p", "response": "r"}).messages == [U("p"), A("r")]
    n = normalise({"prompt": "p", "completion": "c"})
    assert n.response == "c" and n.kind == "sft"


@pytest.mark.parametrize("record", [
    {"instruction": "Name a fruit", "context": "", "response": "Apple", "category": "open_qa"},  # Dolly
    {"instruction": "Name a fruit", "completion": "Apple"},
    {"prompt": "Name a fruit", "output": "Apple"},
])
def test_every_instruction_or_prompt_field_pairs_with_every_answer_field(record):
    """An answer under any canonical name is the response, never left in meta of a prompt-only row."""
    n = normalise(record)
    assert n.kind == "sft" and n.messages == [U("Name a fruit"), A("Apple")] and n.response == "Apple"
    assert not {"response", "completion", "output"} & set(json.loads(n.meta))


def test_preference_strings():
    n = normalise({"prompt": "p", "chosen": "good", "rejected": "bad", "score": 3})
    assert n.kind == "preference"
    assert n.messages == [U("p"), A("good")] and n.response == "good" and n.rejected == "bad"
    assert json.loads(n.meta) == {"score": 3}


def test_preference_message_lists():
    # chosen/rejected are whole conversations (prompt included) -- UltraFeedback-binarised style
    rec = {"prompt": "p", "chosen": [U("p"), A("good")], "rejected": [U("p"), A("bad")]}
    n = normalise(rec)
    assert n.messages == [U("p"), A("good")] and n.rejected == "bad" and n.prompt == "p"
    # TRL conversational: prompt as a list, chosen/rejected only the answer turn
    n2 = normalise({"prompt": [U("p")], "chosen": [A("good")], "rejected": [A("bad")]})
    assert n2.messages == n.messages and n2.rejected == "bad"
    # no prompt at all: chosen/rejected carry the conversation
    n3 = normalise({"chosen": [U("p"), A("good")], "rejected": [U("p"), A("bad")]})
    assert n3 == n._replace(meta="{}")
    assert content_id(n.kind, n.messages, n.rejected) == content_id(n3.kind, n3.messages, n3.rejected)


def test_preference_mismatched_pair_and_missing_prompt():
    rec = {"chosen": [U("p"), A("good")], "rejected": [U("other"), A("bad")]}
    assert reason(rec).startswith("mismatched_pair")
    assert reason({"chosen": "good", "rejected": "bad"}).startswith("missing_fields")
    assert reason({"prompt": "p", "chosen": "good", "rejected": " "}) == "empty_text: rejected"


def test_column_mapping_and_domain():
    rec = {"question": "q?", "answer": "a!", "category": "trivia", "prompt": "not me"}
    n = normalise(rec, {"prompt": "question", "response": "answer", "domain": "category"})
    assert n.messages == [U("q?"), A("a!")] and n.domain == "trivia"
    assert json.loads(n.meta) == {"prompt": "not me"}
    assert normalise({"prompt": "p", "response": "r", "domain": "math"}).domain == "math"
    assert normalise({"prompt": "p", "response": "r", "domain": 7}).domain == "7"
    assert normalise({"prompt": "p", "response": "r", "domain": ""}).domain is None


def test_message_list_stored_as_json_text():
    n = normalise({"messages": json.dumps([U("q"), A("a")])})
    assert n.messages == [U("q"), A("a")]
    # a text answer that merely looks like a list stays text
    assert normalise({"prompt": "p", "chosen": "[1, 2]", "rejected": "[3]"}).response == "[1, 2]"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"a": 1, "b": 2}, "missing_fields: no known layout (keys: a, b)"),
        ({"question": "x"}, "missing_fields: no known layout (keys: question)"),
        ({"instruction": "x", "output": 5}, "wrong_type: output is int"),
        ({"prompt": "x", "response": ["a"]}, "wrong_type: response is list"),
        ({"messages": "hello"}, "wrong_type: messages is str, expected a list of messages"),
        ({"messages": [U("q"), "a"]}, "wrong_type: messages[1] is str, expected an object"),
        (
            {"messages": [U("q"), {"role": "assistant", "content": None}]},
            "wrong_type: messages[1].content is null",
        ),
        (
            {"messages": [U("q"), A("a"), {"role": "tool", "content": "42"}]},
            "missing_fields: messages ends with a tool turn, not assistant",
        ),
        ({"messages": [A("a")]}, "empty_text: prompt"),
        ({"prompt": "  ", "response": "r"}, "empty_text: prompt"),
        ({"prompt": "p", "response": "\n"}, "empty_text: response"),
        ({"instruction": "", "input": "", "output": "r"}, "empty_text: prompt"),
        ({"messages": [U("q"), A(""), U("q2"), A("a2")]}, "empty_text: messages[1].content"),
        ([1, 2], "wrong_type: record is list, expected an object"),
        ({"prompt": "p", "response": "r", "domain": ["x"]}, "wrong_type: domain is list"),
    ],
)
def test_bad_records(record, expected):
    assert reason(record) == expected


def test_blank_signature_falls_back_to_the_layout_that_fits():
    # CSV-like row with empty columns of another layout: the filled layout wins
    rec = {"instruction": "", "input": "", "output": "", "prompt": "p", "response": "r"}
    n = normalise(rec)
    assert n.messages == [U("p"), A("r")]
    assert json.loads(n.meta) == {"instruction": "", "input": "", "output": ""}


def test_content_id_known_answer_and_properties():
    import hashlib

    msgs = [U("p"), A("r")]
    expected = hashlib.blake2b(b'["sft",[["user","p"],["assistant","r"]],null]', digest_size=16).hexdigest()
    assert canonical_bytes("sft", msgs, None) == b'["sft",[["user","p"],["assistant","r"]],null]'
    assert content_id("sft", msgs) == expected and len(expected) == 32
    assert content_id("sft", msgs) != content_id("preference", msgs, "x")
    assert content_id("preference", msgs, "x") != content_id("preference", msgs, "y")
    # alpaca and prompt/response with the same content get the same id
    a = normalise({"instruction": "p", "output": "r"})
    b = normalise({"prompt": "p", "response": "r", "extra": 1})
    assert (
        content_id(a.kind, a.messages, a.rejected) == content_id(b.kind, b.messages, b.rejected) == expected
    )


def test_bad_column_mapping():
    from curate.pool.layouts import check_columns

    with pytest.raises(ValueError, match="unknown field 'question'"):
        check_columns({"question": "prompt"})
    with pytest.raises(ValueError, match="mapped twice"):
        check_columns({"prompt": "q", "response": "q"})


def test_preference_with_system_field_and_whole_conversations():
    rec = {"system": "sys", "prompt": "p", "chosen": [U("p"), A("good")], "rejected": [U("p"), A("bad")]}
    n = normalise(rec)
    assert n.messages == [S("sys"), U("p"), A("good")] and n.rejected == "bad"
    assert n.prompt == "system: sys\n\nuser: p"
    n2 = normalise({"system": "sys", "prompt": "p", "chosen": "good", "rejected": "bad"})
    assert n2.messages == n.messages and n2.rejected == "bad"


def test_meta_is_valid_json_when_an_extra_column_holds_nan():
    """parquet extra columns may hold NaN / inf: meta stays JSON (those values become null)."""
    n = normalise({"prompt": "p", "response": "r", "score": float("nan"), "w": [1.0, float("inf")], "k": 2.5})
    assert json.loads(n.meta) == {"score": None, "w": [1.0, None], "k": 2.5}
