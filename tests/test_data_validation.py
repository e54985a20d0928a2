"""Training JSONL validation: each bad input names file, line and field; summary counts (CPU)."""

import json

import pytest

from nemo_nvembed.data.jsonl import DataError, Example, load_examples
from nemo_nvembed.data.tasks import TaskRegistry


@pytest.fixture(scope="module")
def registry():
    entry = dict(weight=1.0, train_instruction="x", eval_instruction="x")
    return TaskRegistry.from_dict(
        {"tasks": {"NQ": dict(kind="retrieval", in_batch_negatives=True, **entry),
                   "HotpotQA": dict(kind="retrieval", in_batch_negatives=True, **entry),
                   "Banking77Classification": dict(kind="classification", in_batch_negatives=False, **entry)}},
        source="test-tasks",
    )


def ex(**overrides):
    row = {"task": "NQ", "query": "who wrote it", "pos": "the author", "neg": ["n1", "n2", "n3"]}
    row.update(overrides)
    return row


def write(tmp_path, rows, name="train.jsonl"):
    """Rows are dicts (JSON-encoded), str (written as-is) or bytes (written raw); one per line."""
    path = tmp_path / name
    data = b"".join(
        (r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
        for r in rows
    )
    path.write_bytes(data)
    return path


def load(path, registry, **kw):
    kw.setdefault("num_negatives", 3)
    return load_examples(path, registry, **kw)


def test_valid_file_loads(tmp_path, registry):
    path = write(tmp_path, [ex(), "", ex(task="HotpotQA", query="q2")])
    result = load(path, registry)
    assert result.examples[0] == Example("NQ", "who wrote it", "the author", ("n1", "n2", "n3"), line=1)
    assert result.examples[0].pos_key == "the author" and result.examples[0].neg_keys == ("n1", "n2", "n3")
    s = result.summary
    assert (s.lines_read, s.blank_lines, s.examples_accepted, s.refused) == (3, 1, 2, 0)
    assert s.examples_per_task == {"NQ": 1, "HotpotQA": 1}
    text = s.format()
    assert "examples accepted          2" in text and "HotpotQA" in text


def test_ids_are_kept_and_used_as_keys(tmp_path, registry):
    path = write(tmp_path, [ex(pos_id="d0", neg_ids=["d1", "d2", "d3"])])
    e = load(path, registry).examples[0]
    assert e.pos_id == "d0" and e.neg_ids == ("d1", "d2", "d3")
    assert e.pos_key == "d0" and e.neg_keys == ("d1", "d2", "d3")


@pytest.mark.parametrize(
    "row, line_field, message",
    [
        ('{"task": "NQ", "query": ', ":2: ", "malformed JSON"),
        ('["NQ", "q"]', ":2: ", "expected a JSON object, got list"),
        ('{"task": "NQ", "task": "NQ", "query": "q", "pos": "p", "neg": ["n"]}', ":2: ", "duplicate key 'task'"),
        ({k: v for k, v in ex().items() if k != "pos"}, ":2: field 'pos'", "missing required field"),
        ({**ex(), "negs": ["x"]}, ":2: field 'negs'", "unknown field. Did you mean 'neg'?"),
        ({**ex(), "pos_ids": "d"}, ":2: field 'pos_ids'", "Did you mean 'pos_id'?"),
        (ex(query=3), ":2: field 'query'", "expected a string, got number"),
        (ex(neg="n1"), ":2: field 'neg'", "expected a list of strings, got string"),
        (ex(neg=["n1", None, "n3"]), ":2: field 'neg[1]'", "expected a string, got null"),
        (ex(query="   \t"), ":2: field 'query'", "empty or whitespace-only"),
        (ex(pos=""), ":2: field 'pos'", "empty or whitespace-only"),
        (ex(neg=["n1", " ", "n3"]), ":2: field 'neg[1]'", "empty or whitespace-only"),
        (ex(task="HotPotQA"), ":2: field 'task'", "unknown task 'HotPotQA' (not in test-tasks). Close matches: HotpotQA"),
        (ex(neg=["n1", "the author", "n3"]), ":2: field 'neg[1]'", "positive text is repeated"),
        (ex(pos_id="d0", neg_ids=["d1", "d0", "d3"]), ":2: field 'neg_ids[1]'", "positive id 'd0' is repeated"),
        (ex(pos_id="d0", neg_ids=["d1", "d2"]), ":2: field 'neg_ids'", "has 2 ids but 'neg' has 3 texts"),
        (ex(pos_id="d0"), ":2: field 'neg_ids'", "must be given together with 'pos_id'"),
        (ex(neg=["n1", "n2"]), ":2: field 'neg'", "has 2 hard negatives, 3 required"),
        (ex(neg=[]), ":2: field 'neg'", "no hard negatives"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, registry, row, line_field, message):
    path = write(tmp_path, [ex(), row, ex()])
    with pytest.raises(DataError) as info:
        load(path, registry)
    assert str(info.value).startswith(f"{path}{line_field}"), str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_utf8_reports_line_and_byte_offset(tmp_path, registry):
    good = json.dumps(ex()).encode()
    bad = b'{"task": "NQ", "query": "caf\xe9", "pos": "p", "neg": ["a", "b", "c"]}'
    path = write(tmp_path, [good, bad])
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8 at byte 28 of the line "
                                        rf"\(file offset {len(good) + 1 + 28}\)"):
        load(path, registry)


def test_zero_negatives_is_an_error_even_with_resampling(tmp_path, registry):
    path = write(tmp_path, [ex(neg=[])])
    with pytest.raises(DataError, match=":1: field 'neg': no hard negatives"):
        load(path, registry, allow_negative_resampling=True)


def test_mixing_lines_with_and_without_ids_is_an_error(tmp_path, registry):
    path = write(tmp_path, [ex(pos_id="d0", neg_ids=["d1", "d2", "d3"]), ex()])
    with pytest.raises(DataError, match=r":2: field 'pos_id': ids must be given on every line or on none"):
        load(path, registry)


def test_resampling_is_deterministic_counted_and_from_own_negatives(tmp_path, registry):
    rows = [ex(neg=["a"], pos_id="p", neg_ids=["ia"]),
            ex(neg=["b", "c"], pos_id="p2", neg_ids=["ib", "ic"]),
            ex(pos_id="p3", neg_ids=["i1", "i2", "i3"])]
    path = write(tmp_path, rows)
    r1 = load(path, registry, num_negatives=3, allow_negative_resampling=True, seed=5)
    r2 = load(path, registry, num_negatives=3, allow_negative_resampling=True, seed=5)
    assert r1.examples == r2.examples
    a, b, c = r1.examples
    assert a.neg == ("a", "a", "a") and a.neg_ids == ("ia", "ia", "ia")
    assert b.neg[:2] == ("b", "c") and b.neg[2] in ("b", "c")
    assert b.neg_ids == tuple("i" + n for n in b.neg)  # ids follow their texts
    assert c.neg == ("n1", "n2", "n3")
    s = r1.summary
    assert (s.examples_resampled, s.negatives_resampled) == (2, 3)
    assert "2 examples, 3 draws with replacement" in s.format()
    wide = write(tmp_path, [ex(neg=[f"n{i}" for i in range(40)])], name="wide.jsonl")
    assert load(wide, registry, num_negatives=2).examples[0].neg == ("n0", "n1")
    many = write(tmp_path, [ex(neg=[f"m{i}" for i in range(5)])], name="many.jsonl")
    seeds = {load(many, registry, num_negatives=40, allow_negative_resampling=True, seed=s).examples[0].neg
             for s in range(3)}
    assert len(seeds) > 1  # the seed matters


def test_extra_negatives_are_truncated_and_counted(tmp_path, registry):
    path = write(tmp_path, [ex(neg=["a", "b", "c", "d", "e"], pos_id="p", neg_ids=list("ABCDE"))])
    result = load(path, registry)
    assert result.examples[0].neg == ("a", "b", "c") and result.examples[0].neg_ids == ("A", "B", "C")
    assert (result.summary.examples_truncated_negatives, result.summary.negatives_dropped) == (1, 2)


def test_over_max_length_is_counted_per_field(tmp_path, registry):
    rows = [ex(query="one two three four", pos="a b", neg=["x y z w v", "s", "t u"]),
            ex(query="short", pos="p q r s t", neg=["a b c d e f", "g", "h"])]
    path = write(tmp_path, rows)
    result = load(path, registry, count_tokens=lambda t: len(t.split()), max_length=3)
    assert result.summary.over_max_length == {"query": 1, "pos": 1, "neg": 2}
    assert "texts over 3 tokens" in result.summary.format()
    with pytest.raises(ValueError, match="together"):
        load(path, registry, max_length=3)


def test_collect_mode_lists_every_bad_line(tmp_path, registry):
    rows = [ex(), ex(task="NQQ"), "{oops", ex(pos=" "), ex(query="who wrote that")]  # last: not a duplicate of line 1
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        load(path, registry, on_error="collect")
    err = info.value
    assert len(err.errors) == 3 and err.summary.refused == 3 and err.summary.examples_accepted == 2
    message = str(err)
    assert message.startswith(f"{path}: 3 invalid line(s) of 5:")
    for fragment in (":2: field 'task'", ":3: malformed JSON", ":4: field 'pos'"):
        assert fragment in message


def test_collect_mode_caps_the_listing(tmp_path, registry):
    path = write(tmp_path, [ex(task="nope")] * 25)
    with pytest.raises(DataError, match=r"25 invalid line\(s\)[\s\S]*\.\.\. and 5 more"):
        load(path, registry, on_error="collect")


def test_empty_file_and_bad_arguments(tmp_path, registry):
    with pytest.raises(DataError, match="no examples"):
        load(write(tmp_path, ["", "  "]), registry)
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "absent.jsonl", registry)
    with pytest.raises(ValueError, match="on_error"):
        load(write(tmp_path, [ex()]), registry, on_error="skip")
