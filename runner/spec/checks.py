"""What the schema cannot check: names, model sources, files and templates that must exist,
tasks that share a split, probes, strategies — each a located problem line."""

from __future__ import annotations

import difflib
import glob
from pathlib import Path

import yaml

from runner.model.sources import DEFAULT_MODEL, RANDOM_TINY
from runner.spec.messages import show_value
from runner.spec.types import BUILTIN_REPLAY, DATA_EXTENSIONS, SUITES_DIR, TEMPLATE_DIR, TrainerSpec, schema


def semantic_problems(spec: dict, base_dir: Path) -> list[str]:
    """Rules the schema cannot express: files exist, names unique, shares add up, shared
    sources split alike."""
    problems = _name_problems(spec)
    seen = set()
    readers: dict[tuple, list[int]] = {}  # data source -> the tasks reading it
    for i, task in enumerate(spec["tasks"]):
        where = f"$.tasks[{i}]"
        if task["name"] in seen:
            problems.append(f"{where}.name: {task['name']!r} is used by an earlier task; give each task its own name.")
        seen.add(task["name"])
        data_problems = [
            problem
            for source_where, source in _task_sources(task["data"], f"{where}.data")
            for problem in _data_problems(source, base_dir, source_where)
        ]
        problems += data_problems
        template = find_template(task["template"], base_dir)
        if template is None:
            available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
            problems.append(f"{where}.template: {task['template']!r} not found in templates/; available: {available}.")
        if not data_problems and any(
            _data_format(source, base_dir) == "text" for _, source in _task_sources(task["data"], where)
        ):
            problems.append(f"{where}.data: a task needs rows (.jsonl, .json, .csv, .tsv, .parquet), not a .txt file.")
        split = task["split"]
        total = split["train"] + split["val"] + split["test"]
        if abs(total - 1.0) > 1e-6:
            problems.append(
                f"{where}.split: train + val + test = {total:g}, expected 1; e.g. train: 0.7, val: 0.2, test: 0.1."
            )
        problems += _label_map_problems(task, where)
        readers.setdefault(_source_key(task["data"], base_dir), []).append(i)
    for indices in readers.values():
        problems += _shared_source_problems([spec["tasks"][i] for i in indices], indices)
    for i, probe in enumerate(spec["evaluation"]["forgetting"]):
        if isinstance(probe, dict):
            problems += probe_problems(probe, base_dir, f"$.evaluation.forgetting[{i}]")
    problems += _model_problems(spec["model"], base_dir)
    if str(spec["trainer"]["strategy"]).startswith("deepspeed"):
        problems.append(
            f"$.trainer.strategy: {spec['trainer']['strategy']!r} is not supported: DeepSpeed saves checkpoints as "
            "folders of shards that runner's scoring, --resume and export do not load. Use 'ddp' (the model fits "
            "on each device) or 'fsdp' (sharded; saved as one full checkpoint)."
        )
    names = [t["name"] for t in spec["tasks"]]
    if spec["primary_task"] is not None and spec["primary_task"] not in names:
        problems.append(f"$.primary_task: {spec['primary_task']!r} is not a task; tasks: {', '.join(names)}.")
    if spec["replay"] is not None:
        problems += _replay_problems(spec["replay"], base_dir)
    primary = next((t for t in spec["tasks"] if t["name"] == (spec["primary_task"] or names[0])), None)
    if primary is not None and not primary.get("labels") and not primary.get("label_map"):
        training = spec["training"]
        for key, default in (("monitor", "loss"), ("class_balance", "none")):
            if training[key] != default:
                problems.append(
                    f"$.training.{key}: {training[key]!r} needs a classification primary task (labels), "
                    f"and {primary['name']!r} has none; use {default!r} or give the task labels."
                )
    return problems


def _name_problems(spec: dict) -> list[str]:
    """Names become folder names and report headings: no control characters (JSON Schema's `$`
    lets a trailing newline through the name pattern), and max_time within a year."""
    named = [("$.name", spec["name"])]
    named += [(f"$.tasks[{i}].name", t["name"]) for i, t in enumerate(spec["tasks"])]
    named += [(f"$.variants[{i}].name", v["name"]) for i, v in enumerate(spec.get("variants") or [])]
    named += [
        (f"$.evaluation.forgetting[{i}].name", p["name"])
        for i, p in enumerate(spec["evaluation"]["forgetting"])
        if isinstance(p, dict)
    ]
    problems = [
        f"{where}: got {show_value(name)}, which holds a control character (a newline, tab, ...); use letters, "
        "digits, '_', '.' or '-'."
        for where, name in named
        if any(ord(c) < 32 or ord(c) == 127 for c in name)
    ]
    max_time = spec["training"].get("max_time")
    if isinstance(max_time, str) and max_time_seconds(max_time.strip()) > 366 * 86400:
        problems.append(f'$.training.max_time: got {max_time!r}, expected at most a year ("365:00:00:00").')
    return problems


def _model_problems(model: dict, base_dir: Path) -> list[str]:
    """model.source, and model.tokenizer when given, in the forms a source may take."""
    problems = _model_source_problems(model["source"], base_dir)
    if model.get("tokenizer") is not None:
        problems += _model_source_problems(model["tokenizer"], base_dir, "$.model.tokenizer")
    return problems


def _model_source_problems(source: str, base_dir: Path, where: str = "$.model.source") -> list[str]:
    """A source written as a path (./, ../, /, ~, or a .gguf file) must exist; anything else not
    found as a folder is taken as a hub id, checked when the model loads."""
    if source in (DEFAULT_MODEL, RANDOM_TINY):
        return []
    path = resolve_model_path(source, base_dir)
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(".gguf")
    kinds = f"'{DEFAULT_MODEL}', '{RANDOM_TINY}', a Hugging Face model folder, a .gguf file or a hub id"
    if source.endswith(".gguf"):
        return [] if path.is_file() else [f"{where}: file {source!r} not found (looked at {path}); give {kinds}."]
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"{where}: folder {source!r} holds no config.json; expected a Hugging Face model folder."]
        return []
    if looks_like_path:
        return [f"{where}: folder {source!r} not found (looked at {path}); give {kinds}."]
    return []


def model_source(source: str, base_dir: Path) -> str:
    """A local model path made absolute (relative to the spec's folder); names and hub ids as given."""
    if source in (DEFAULT_MODEL, RANDOM_TINY):
        return source
    path = resolve_model_path(source, base_dir)
    return str(path) if path.exists() or source.endswith(".gguf") else source


def resolve_model_path(source: str, base_dir: Path) -> Path:
    """A model path as written, relative to the spec's folder like every other path."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _replay_problems(replay: dict, base_dir: Path) -> list[str]:
    if replay["data"] in BUILTIN_REPLAY:
        return []
    problems = _data_problems(replay["data"], base_dir, "$.replay.data")
    if not problems and _data_format(replay["data"], base_dir) == "text":
        problems.append("$.replay.data: replay needs rows (.jsonl, .json, .csv, .tsv, .parquet), not a .txt file.")
    if replay["template"] is not None and find_template(replay["template"], base_dir) is None:
        available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
        problems.append(f"$.replay.template: {replay['template']!r} not found in templates/; available: {available}.")
    return problems


def _task_sources(data: str | dict, where: str) -> list[tuple[str, str | dict]]:
    """(JSON path, source) of every file or hub split a task's data names."""
    if isinstance(data, dict) and "train" in data:
        return [(f"{where}.{name}", data[name]) for name in ("train", "val", "test") if name in data]
    return [(where, data)]


def _source_key(data: str | dict, base_dir: Path) -> tuple:
    def one(source):
        if isinstance(source, str):
            source = {"path": source}
        if "path" in source:
            return ("file", str((base_dir / source["path"]).resolve()))
        if "glob" in source:
            return ("glob", absolute_pattern(source["glob"], base_dir))
        return ("hub", source["hub"], source.get("config"), source.get("split", "train"))

    if isinstance(data, dict) and "train" in data:
        return ("split_files", *(one(data[n]) if n in data else None for n in ("train", "val", "test")))
    return one(data)


# Settings that decide which rows a source's split holds: tasks sharing the source must agree.
SHARED_SETTINGS = {
    "split": "split shares",
    "max_rows": "max_rows sample",
}


def _shared_source_problems(tasks: list[dict], indices: list[int]) -> list[str]:
    if len(tasks) < 2:
        return []
    problems = []
    names = ", ".join(repr(t["name"]) for t in tasks)
    first = tasks[0]
    for task, i in zip(tasks[1:], indices[1:]):
        for key, words in SHARED_SETTINGS.items():
            if task[key] != first[key]:
                problems.append(
                    f"$.tasks[{i}].{key}: tasks {names} read the same data, so they share one split of its rows and "
                    f"need the same {words}; got {show_value(task[key])} here and {show_value(first[key])} in "
                    f"task {first['name']!r}."
                )
        for key in ("stratify_by", "group_by"):
            mine = task["data"].get(key) if isinstance(task["data"], dict) else None
            theirs = first["data"].get(key) if isinstance(first["data"], dict) else None
            if mine != theirs:
                problems.append(
                    f"$.tasks[{i}].data.{key}: tasks {names} read the same data and share one split; give them the "
                    f"same {key} (got {show_value(mine)} here, {show_value(theirs)} in task {first['name']!r})."
                )
    return problems


def _label_map_problems(task: dict, where: str) -> list[str]:
    label_map, labels = task.get("label_map"), task.get("labels")
    if not label_map or labels is None:
        return []
    unknown = sorted({v for v in label_map.values() if v not in labels})
    if unknown:
        return [
            f"{where}.label_map: maps to {', '.join(map(repr, unknown))}, not among labels "
            f"({', '.join(labels)}); add them to labels or fix the map."
        ]
    return []


def probe_problems(probe: dict, base_dir: Path, where: str) -> list[str]:
    """Problems of one forgetting probe: its data file, the data kind its probe kind reads, and the
    template or `choices` it needs; located at `where` (its JSON path).
    """
    problems = _data_problems(probe["data"], base_dir, f"{where}.data")
    # Which kinds read a .txt file is the schema's to say (x-reads-text), beside the kinds themselves.
    text = probe["kind"] in schema()["$defs"]["probe"]["properties"]["kind"]["x-reads-text"]
    if not problems and (_data_format(probe["data"], base_dir) == "text") != text:
        wanted = "a .txt file" if text else "rows (.jsonl, .json, .csv, .parquet)"
        problems.append(f"{where}.data: a {probe['kind']} probe reads {wanted}.")
    if not text:
        if "template" not in probe:
            problems.append(
                f"{where}: a {probe['kind']} probe needs 'template' (a Jinja file rendering '<prompt> ||| <answer>')."
            )
        elif find_template(probe["template"], base_dir) is None:
            available = ", ".join(p.name for p in _template_dirs_listing(base_dir)) or "none"
            problems.append(f"{where}.template: {probe['template']!r} not found in templates/; available: {available}.")
    if probe["kind"] == "multiple_choice" and "choices" not in probe:
        problems.append(
            f"{where}: a multiple_choice probe needs 'choices', a Jinja expression giving the list of choice texts."
        )
    return problems


def _data_format(data: str | dict, base_dir: Path) -> str:
    if isinstance(data, str):
        data = {"path": data}
    if "glob" in data and data.get("format", "auto") == "auto":
        return DATA_EXTENSIONS.get(Path(data["glob"]).suffix.lower(), "auto")
    if "path" not in data:
        return data.get("format", "auto")
    if data.get("format", "auto") != "auto":
        return data["format"]
    return DATA_EXTENSIONS.get(Path(data["path"]).suffix.lower(), "auto")


def builtin_suite(name: str) -> list[dict]:
    """The probe definitions of a built-in suite (runner/suites/<name>/suite.yaml)."""
    return yaml.safe_load((SUITES_DIR / name / "suite.yaml").read_text())


def _data_problems(data: str | dict, base_dir: Path, where: str) -> list[str]:
    if isinstance(data, str):
        data = {"path": data, "format": "auto"}
    elif "glob" in data:
        matches = [p for p in glob.glob(absolute_pattern(data["glob"], base_dir), recursive=True) if Path(p).is_file()]
        if not matches:
            return [
                f"{where}.glob: {data['glob']!r} matches no file (relative to {base_dir.name}/); check the pattern."
            ]
        unknown = sorted({Path(p).suffix for p in matches if Path(p).suffix.lower() not in DATA_EXTENSIONS})
        if data.get("format", "auto") == "auto" and unknown:
            return [f"{where}.glob: matches files of unknown format ({', '.join(unknown)}); narrow it or set format."]
        return []
    elif "path" in data:
        where = f"{where}.path"
    else:
        return []
    path = (base_dir / data["path"]).resolve()
    if not path.is_file():
        return [f"{where}: file {data['path']!r} not found (relative to {base_dir.name}/); check the path."]
    if data.get("format", "auto") == "auto" and path.suffix.lower() not in DATA_EXTENSIONS:
        known = ", ".join(DATA_EXTENSIONS)
        return [f"{where}: cannot tell the format of {path.name!r} from its extension ({known}); set data.format."]
    return []


def template_dirs(base_dir: Path) -> list[Path]:
    """Where template names are looked up: next to the spec, its templates/, then the project's."""
    dirs = [base_dir, base_dir / "templates", base_dir.parent / "templates", TEMPLATE_DIR]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def find_template(name: str, base_dir: Path) -> Path | None:
    """The first file called `name` in template_dirs' order, resolved; None when none has it."""
    for d in template_dirs(base_dir):
        candidate = (d / name).resolve()
        if candidate.is_file():
            return candidate
    return None


def _template_dirs_listing(base_dir: Path) -> list[Path]:
    found = {}
    for d in template_dirs(base_dir):
        for p in sorted(d.glob("*.jinja")):
            found.setdefault(p.name, p)
    return list(found.values())


def max_time_seconds(value: float | str | None) -> float | None:
    """training.max_time as seconds: a number of minutes, or "HH:MM:SS" / "DD:HH:MM:SS"."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value) * 60
    parts = [int(p) for p in value.split(":")]
    days, hours, minutes, seconds = [0] * (4 - len(parts)) + parts
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def absolute_pattern(pattern: str, base_dir: Path) -> str:
    """A glob pattern relative to the spec's folder, made absolute with the folder's own name
    escaped (a spec in `runs[1]/` must not make `[1]` a character class)."""
    if Path(pattern).expanduser().is_absolute():
        return str(Path(pattern).expanduser())
    return str(Path(glob.escape(str(base_dir.resolve()))) / pattern)


def strategy_problems(trainer: TrainerSpec) -> list[str]:
    """The Lightning strategy, checked before any work: a name Lightning knows, and FSDP only
    where Lightning runs it (CUDA devices). Otherwise the Trainer refuses it after minutes of
    data preparation and base scoring."""
    strategy = trainer.strategy
    if strategy == "auto":  # the default: nothing to check, and Lightning need not be imported
        return []
    import torch
    from lightning.pytorch.strategies import StrategyRegistry

    known = StrategyRegistry.available_strategies()
    if strategy not in known:
        close = difflib.get_close_matches(strategy, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; Lightning's: auto, {', '.join(sorted(known))}."
        return [f"$.trainer.strategy: unknown strategy {strategy!r}{hint}"]
    cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
    if strategy.startswith("fsdp") and cpu:
        return [
            f"$.trainer.strategy: {strategy!r} needs CUDA devices (Lightning runs FSDP on GPUs only); use 'ddp' on CPUs."
        ]
    return []
