"""GLUE-style data for the command line: GLUE tasks through `datasets`, or csv/tsv/json files, checked up front.

Every problem (unknown task, missing file or column, missing labels, validation labels unseen in training) raises one
ValueError or FileNotFoundError that names it and the fix, before anything is trained or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..serialization.atomic import atomic_write_text

GLUE_TASKS = {  # task -> (first text column, second text column or None, number of labels; 1 = regression)
    "cola": ("sentence", None, 2),
    "sst2": ("sentence", None, 2),
    "mrpc": ("sentence1", "sentence2", 2),
    "qqp": ("question1", "question2", 2),
    "stsb": ("sentence1", "sentence2", 1),
    "mnli": ("premise", "hypothesis", 3),
    "qnli": ("question", "sentence", 2),
    "rte": ("sentence1", "sentence2", 2),
    "wnli": ("sentence1", "sentence2", 2),
}
_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class TaskData:
    """Train and validation splits with what the model and the metric need to know about them."""

    train: datasets.Dataset
    validation: datasets.Dataset
    text_columns: tuple[str, str | None]
    label_list: list | None  # None for regression
    metric_task: str  # key of hf_prune.metrics.TASK_METRICS

    @property
    def is_regression(self) -> bool:
        return self.label_list is None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_list)


def _load_files(train_file: str, validation_file: str) -> datasets.DatasetDict:
    files = {"train": train_file, "validation": validation_file}
    suffixes = set()
    for split, name in files.items():
        if name is None:
            raise ValueError(f"--{split}_file is missing: give both --train_file and --validation_file, or --task_name")
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--{split}_file {name} does not exist")
        if path.suffix not in _FORMATS:
            raise ValueError(f"--{split}_file {name}: use a .csv, .tsv or .json/.jsonl file")
        suffixes.add(path.suffix)
    if len({_FORMATS[s] for s in suffixes}) > 1 or len(suffixes) > 1 and ".tsv" in suffixes:
        raise ValueError("--train_file and --validation_file must have the same format")
    suffix = suffixes.pop()
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    splits = {}
    datasets.disable_progress_bars()  # reading two small files needs no bars; errors stay on one line
    try:
        for split, name in files.items():
            splits[split] = _load_one(_FORMATS[suffix], split, name, kwargs)
    finally:
        datasets.enable_progress_bars()
    return datasets.DatasetDict(splits)


def _load_one(builder: str, split: str, name: str, kwargs: dict) -> datasets.Dataset:
    """One split on its own, so that the column checks after it give the clear message."""
    try:
        return datasets.load_dataset(builder, data_files={split: name}, split=split, **kwargs)
    except Exception as err:
        raise ValueError(f"--{split}_file {name} could not be read: {err}") from None


def _text_columns(columns: list[str], where: str) -> tuple[str, str | None]:
    if "sentence1" in columns and "sentence2" in columns:
        return "sentence1", "sentence2"
    if "sentence" in columns:
        return "sentence", None
    raise ValueError(f"{where} needs a `sentence` column (or `sentence1` and `sentence2`); it has {columns}")


def load_task_data(task_name: str | None = None, train_file: str | None = None, validation_file: str | None = None,
                   max_train_samples: int | None = None, max_eval_samples: int | None = None) -> TaskData:
    """Load and check a GLUE task (from the Hub through datasets) or a pair of local files."""
    if task_name is not None:
        task = task_name.lower()
        if task not in GLUE_TASKS:
            raise ValueError(f"unknown --task_name {task_name!r}; choose one of {', '.join(GLUE_TASKS)}")
        first, second, n_labels = GLUE_TASKS[task]
        try:
            raw = datasets.load_dataset("nyu-mll/glue", task)
        except Exception as err:  # offline, or the Hub is down: one clear line
            raise OSError(f"could not load GLUE task {task!r} from the Hub ({type(err).__name__}: {err}); "
                          f"use --train_file/--validation_file for local data") from None
        validation = raw["validation_matched" if task == "mnli" else "validation"]
        label_list = None if n_labels == 1 else list(range(n_labels))
        data = TaskData(raw["train"], validation, (first, second), label_list, task)
    else:
        raw = _load_files(train_file, validation_file)
        columns = {split: raw[split].column_names for split in ("train", "validation")}
        text = _text_columns(columns["train"], f"--train_file {train_file}")
        for split, file in (("train", train_file), ("validation", validation_file)):
            missing = [c for c in (*filter(None, text), "label") if c not in columns[split]]
            if missing:
                raise ValueError(f"--{split}_file {file} has no column {missing[0]!r} (columns: {columns[split]})")
        for split, file in (("train", train_file), ("validation", validation_file)):
            check_labels(raw[split]["label"], f"--{split}_file {file}")
        data = _label_files(raw, text, validation_file)
    if max_train_samples is not None:
        data.train = data.train.select(range(min(max_train_samples, len(data.train))))
    if max_eval_samples is not None:
        data.validation = data.validation.select(range(min(max_eval_samples, len(data.validation))))
    if len(data.train) == 0 or len(data.validation) == 0:
        raise ValueError("the training and validation data must not be empty")
    return data


def check_labels(labels, where: str) -> None:
    """ValueError naming the first data row (1-based, header not counted) whose label is empty or NaN."""
    for row, value in enumerate(labels, start=1):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{where}: data row {row} has no label (empty or NaN); fill it in or remove the row")


def _label_files(raw: datasets.DatasetDict, text, validation_file: str) -> TaskData:
    """Decide classification or regression from the training labels (floats that are not whole = regression)."""
    train_labels = raw["train"]["label"]
    is_float = raw["train"].features["label"].dtype in ("float32", "float64")
    if is_float and any(float(v) != int(v) for v in train_labels if v is not None):
        label_list, metric_task = None, "regression"
    else:
        label_list = sorted(set(train_labels))
        unseen = sorted(set(raw["validation"]["label"]) - set(label_list), key=str)
        if unseen:
            raise ValueError(
                f"--validation_file {validation_file} has labels {unseen[:5]} that the training file never uses "
                f"(training labels: {label_list[:10]}); fix the files or merge the label sets"
            )
        metric_task = "binary" if len(label_list) == 2 else "classification"
    return TaskData(raw["train"], raw["validation"], text, label_list, metric_task)


def tokenize(data: TaskData, tokenizer, max_seq_length: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Tokenized train and validation sets with `labels` (class ids, or floats for regression)."""
    first, second = data.text_columns
    label_to_id = None if data.is_regression else {v: i for i, v in enumerate(data.label_list)}

    def encode(batch):
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        out = tokenizer(*texts, truncation=True, max_length=max_seq_length)
        labels = batch["label"]
        out["labels"] = [float(v) for v in labels] if label_to_id is None else [label_to_id[v] for v in labels]
        return out

    columns = data.train.column_names
    train = data.train.map(encode, batched=True, remove_columns=columns, desc="tokenizing train")
    validation = data.validation.map(encode, batched=True, remove_columns=data.validation.column_names,
                                     desc="tokenizing validation")
    return train, validation


def movie_review_files(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the offline movie-review sentences (hf_prune_assets) as train/validation csv files, for the demo."""
    import csv
    import io

    from hf_prune_assets import movie_reviews

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, split in zip(("train", "validation"), movie_reviews(seed=seed)):
        path = folder / f"movie_reviews_{name}_seed{seed}.csv"
        if not path.exists():
            rows = io.StringIO()
            writer = csv.writer(rows)
            writer.writerow(["sentence", "label"])
            writer.writerows(zip(split["sentence"], split["label"]))
            atomic_write_text(path, rows.getvalue())
        paths.append(path)
    return paths[0], paths[1]
