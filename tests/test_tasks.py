"""Task registry: conf/tasks.yaml loads, covers the paper's tables, and bad entries fail loudly (CPU)."""

from pathlib import Path

import pytest

from nemo_nvembed.data.tasks import Task, TaskConfigError, TaskRegistry, UnknownTaskError

TASKS_YAML = Path(__file__).resolve().parents[1] / "conf" / "tasks.yaml"

# Every task of NV-Embed's instruction tables (arXiv 2405.17428, Tables 6 and 7), by kind.
RETRIEVAL = [
    "ArguAna", "ClimateFEVER", "DBPedia", "FEVER", "FiQA2018", "HotpotQA", "MSMARCO", "NFCorpus",
    "NQ", "QuoraRetrieval", "SCIDOCS", "SciFact", "Touche2020", "TRECCOVID", "SQuAD",
    "StackExchange", "BioASQ", "NLI", "PAQ", "AskUbuntuDupQuestions", "MindSmallReranking",
    "SciDocsRR", "StackOverflowDupQuestions", "SprintDuplicateQuestions", "TwitterSemEval2015",
    "TwitterURLCorpus",
]
CLASSIFICATION = [
    "AmazonCounterfactualClassification", "AmazonPolarityClassification",
    "AmazonReviewsClassification", "Banking77Classification", "EmotionClassification",
    "ImdbClassification", "MassiveIntentClassification", "MassiveScenarioClassification",
    "MTOPDomainClassification", "MTOPIntentClassification", "ToxicConversationsClassification",
    "TweetSentimentExtractionClassification",
]
CLUSTERING = [
    "ArxivClusteringP2P", "ArxivClusteringS2S", "BiorxivClusteringP2P", "BiorxivClusteringS2S",
    "MedrxivClusteringP2P", "MedrxivClusteringS2S", "RedditClustering", "RedditClusteringP2P",
    "StackExchangeClustering", "StackExchangeClusteringP2P", "TwentyNewsgroupsClustering",
]
STS_LIKE = ["STS", "STS12", "STSBenchmark", "SICK-R", "BIOSSES", "SummEval"]

# A sample of exact strings from the facts table.
EXACT = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NLI": "Retrieve semantically similar text",
    "STS": "Retrieve semantically similar text.",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of "
    "the six emotions: anger, fear, joy, love, sadness, and surprise",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "PyDocRetrieval": "Given a one-line summary of a Python standard-library function or class, retrieve its documentation",
    "PyDocClassification": "Classify the given Python standard-library function summary into the module it belongs to",
    "PyDocClustering": "Identify the area of the Python standard library based on the titles and summaries",
}


@pytest.fixture(scope="module")
def registry():
    return TaskRegistry.from_yaml(TASKS_YAML)


def _entry(**overrides):
    entry = dict(kind="retrieval", weight=1.0, in_batch_negatives=True,
                 train_instruction="Find it", eval_instruction="Find it")
    entry.update(overrides)
    return entry


def test_registry_covers_the_paper_tables_and_demo(registry):
    expected = {**{t: "retrieval" for t in RETRIEVAL + ["PyDocRetrieval"]},
                **{t: "classification" for t in CLASSIFICATION + ["PyDocClassification"]},
                **{t: "clustering" for t in CLUSTERING + ["PyDocClustering"]},
                **{t: "sts" for t in STS_LIKE}}
    for name, kind in expected.items():
        assert registry[name].kind == kind, name
    for name, text in EXACT.items():
        assert registry[name].train_instruction == text
        assert registry[name].eval_instruction == text


def test_registry_defaults_per_kind(registry):
    for name in registry:
        task = registry[name]
        assert isinstance(task, Task) and task.weight > 0
        assert task.train_instruction == task.eval_instruction  # one string per task in the paper
        if task.kind in ("classification", "clustering"):
            assert not task.in_batch_negatives, name  # other queries' labels are false negatives
        if task.kind == "retrieval":
            assert task.in_batch_negatives, name


def test_unknown_task_lookup_suggests(registry):
    with pytest.raises(UnknownTaskError, match=r"'HotpotQa'.*Did you mean: 'HotpotQA'"):
        registry["HotpotQa"]
    assert "Banking77Classification" in registry.suggest("Banking77Clasification")


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"tasks": {"A": _entry(instruction="x")}}, r"src\.yaml: tasks\.A\.instruction: .*"),
        ({"tasks": {"A": {**_entry(), "wieght": 2.0}}}, r"tasks\.A\.wieght.*Did you mean: 'weight'"),
        ({"taks": {}}, r"src\.yaml: taks: .*Did you mean: 'tasks'"),
        ({"tasks": {"A": _entry(kind="retreival")}}, r"tasks\.A\.kind: Invalid value 'retreival'"),
        ({"tasks": {"A": _entry(weight=0.0)}}, r"tasks\.A\.weight: must be finite and > 0"),
        ({"tasks": {"A": _entry(weight="heavy")}}, r"tasks\.A\.weight"),
        ({"tasks": {"A": _entry(train_instruction="  ")}}, r"tasks\.A\.train_instruction: must be a non-empty"),
        ({"tasks": {"A": {"kind": "sts"}}}, r"required key\(s\) not set: tasks\.A\.eval_instruction"),
        ({"tasks": {}}, r"no tasks defined"),
    ],
)
def test_invalid_registry_names_source_and_key(data, pattern):
    with pytest.raises(TaskConfigError, match=pattern):
        TaskRegistry.from_dict(data, source="src.yaml")


def test_misspelled_key_in_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  A:\n    kind: sts\n    weight: 1.0\n    in_batch_negative: true\n")
    with pytest.raises(TaskConfigError, match=rf"{path}: tasks\.A\.in_batch_negative: .*'in_batch_negatives'"):
        TaskRegistry.from_yaml(path)
    with pytest.raises(TaskConfigError, match="not found"):
        TaskRegistry.from_yaml(tmp_path / "absent.yaml")
