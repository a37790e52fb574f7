"""The recipe: one YAML file describing a run, validated section by section.

Each stage owns its section's config model (`pipelines/<stage>/config.py`); this module assembles them
into `Recipe` and turns YAML (plus `--set a.b=c` overrides) into a validated recipe. A bad recipe fails
here, before any work starts, with a message that names the file, the line, the key and, for an unknown
key, the closest valid one.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipelines.allocator import ArrowPool
from pipelines.compress.config import CompressConfig
from pipelines.config_base import SectionConfig
from pipelines.data.config import DataConfig, TokenizerConfig
from pipelines.models.config import ModelConfig
from pipelines.train.config import PretrainConfig
from pipelines.train.finetune_config import FinetuneConfig
from serving.config import ServeConfig


class ClusterConfig(SectionConfig):
    """Where the run executes: an embedded local Ray (the default) or a running cluster."""

    address: str | None = None
    """Ray address (`ray://host:10001`, `host:6379` or `auto`). None: `$RAY_ADDRESS` if set, else an
    embedded local Ray started for this run and stopped after it."""
    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs for the embedded local Ray. None: all of this machine's cores. Ignored with an address."""
    object_store_memory_gb: float | None = Field(default=None, gt=0)
    """Object store size for the embedded local Ray, in GiB. None: Ray's default (30% of RAM)."""
    dashboard: bool = False
    """Start the Ray dashboard with the embedded local Ray (needed for job submission and metrics)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard binds to. Keep 127.0.0.1 unless the network in front is trusted."""
    dashboard_port: int = Field(default=8265, ge=1, le=65535)
    """Dashboard port for the embedded local Ray."""
    namespace: str = "raylm"
    """Ray namespace the run's named actors live in."""
    serve_ingress: Literal["haproxy", "proxy"] = "haproxy"
    """How HTTP reaches a served app on the embedded local Ray: `haproxy` (Ray Serve's HAProxy ingress
    and throughput mode; its stats and metrics listeners on 127.0.0.1) or `proxy` (Serve's Python proxy
    actor). Set when the embedded Ray starts; a running cluster (`address`) keeps its own setting."""
    arrow_memory_pool: ArrowPool = "auto"
    """Memory pool of Arrow (Ray Data's blocks) in the embedded Ray's processes: auto (jemalloc where
    pyarrow has it: it gives freed pages back, where Arrow's default mimalloc kept a data run's workers
    near their peak), jemalloc, mimalloc or system. `ARROW_DEFAULT_MEMORY_POOL` in the environment
    wins; `raylm k8s` manifests set it in every pod; other running clusters keep their own."""
    storage: str | None = None
    """Storage every node of a cluster sees (a shared path such as `/mnt/cluster/raylm`, or
    `s3://bucket/raylm`). A run sent with `raylm submit` writes to `<storage>/<name>` unless `run_dir`
    is set; None: `run_dir` must then be set to such a place."""


class Recipe(SectionConfig):
    """A whole run. Sections that are absent are stages the run skips."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Run name: letters, digits, '.', '_' and '-'. Names the run folder."""
    run_dir: str | None = None
    """Run folder (local path or `s3://`). None: `runs/<name>` under the current directory."""
    seed: int = 0
    """Seed for every stage's random choices (sampling, splits, initialisation)."""
    cluster: ClusterConfig = ClusterConfig()
    """Where the run executes."""
    data: DataConfig | None = None
    """The data stage (`raylm data`): inputs, column types and cleaning operators -> `<run>/data/`
    (cleaned Parquet, stats.json, quarantine/). None: no data stage."""
    tokenizer: TokenizerConfig | None = None
    """The tokenize stage (`raylm data`): train or take a tokenizer, pack the cleaned text into
    fixed-length sequences -> `<run>/tokenize/` (tokenizer/, train/, heldout/). None: no tokenize stage."""
    model: ModelConfig | None = None
    """The model `pretrain` trains (`raylm keys model`): family (decoder, encoder-decoder, encoder), size
    preset and overrides. None with a `pretrain` section: the small decoder-only preset."""
    pretrain: PretrainConfig | None = None
    """The pretrain stage (`raylm pretrain`): Ray Train + DeepSpeed on the tokenize stage's sequences ->
    `<run>/pretrain/` (model/ as a Hugging Face folder, metrics.jsonl, loss_curve.png). None: no
    pretraining."""
    finetune: FinetuneConfig | None = None
    """The finetune stage (`raylm finetune`): SFT or DPO of `finetune.base` (default: this run's pretrained
    model), full or with LoRA / prefix / P-tuning, on Ray Train + DeepSpeed -> `<run>/finetune/` (model/ or
    an adapter folder, metrics, before/after summary). None: no fine-tuning."""
    compress: CompressConfig | None = None
    """The compress stage (`raylm compress`): quantize (W8A8, W4A16), prune (structured, magnitude, Wanda),
    low-rank factorize or distill `compress.base` (default: this run's fine-tuned, else pretrained model)
    -> `<run>/compress/<method>/` (Hugging Face folders with manifests), report.md, pareto.png. None: no
    compression."""
    serve: ServeConfig | None = None
    """The serve stage (`raylm serve`): an OpenAI-compatible Ray Serve app over vLLM for the listed models;
    a pipeline run ends by sending `serve.sample_prompts` through it. None: nothing is served."""

    def resolved_run_dir(self) -> str:
        return self.run_dir or str(Path("runs") / self.name)


class RecipeError(ValueError):
    """A recipe that cannot run. The message names every problem with file, line and key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid recipe:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------------
# YAML with line numbers. PyYAML's composed node tree keeps each key's position; pydantic reports an
# error's location as a key path, so a path -> line index joins the two.


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            _line_index(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _line_index(item, (*path, i), out)
    return out


def _nested_set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = tree
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise RecipeError([f"--set {dotted}: '{k}' is not a section (it holds {nxt!r})"])
        cur = nxt
    cur[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c), the value parsed as YAML (so 3 is an int, [1,2] a list, null None)."""
    if "=" not in text:
        raise RecipeError([f"--set {text!r}: expected KEY=VALUE, e.g. --set cluster.num_cpus=2"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError([f"--set {text!r}: empty key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# --------------------------------------------------------------------------------------------------
# Walking the schema to find which keys are valid at an error's location.


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (unwrapping Optional, unions, lists and dicts)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found += _model_classes(arg)
        return found
    return []


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose fields are valid at `loc` (a pydantic error location)."""
    model: type[BaseModel] = Recipe
    options: list[type[BaseModel]] = []
    for part in loc:
        if isinstance(part, int):
            continue
        # union branches show up as extra loc parts named after the class, or after the branch's
        # discriminator value (`op: zscore_outliers`); follow them when known
        branch = _union_branch(options, part) if len(options) > 1 else None
        if branch is not None:
            model, options = branch, []
            continue
        field = model.model_fields.get(part)
        if field is None:
            candidates = [m for m in _model_classes_in(model) if m.__name__ == part]
            if candidates:
                model = candidates[0]
                continue
            return model
        classes = _model_classes(field.annotation)
        if not classes:
            return model
        model, options = classes[0], classes
    return model


def _union_branch(options: list[type[BaseModel]], part: str) -> type[BaseModel] | None:
    """The branch of a union that a location part names: by class name or by its discriminator value."""
    for cls in options:
        if cls.__name__ == part:
            return cls
        for f in cls.model_fields.values():
            if typing.get_origin(f.annotation) is typing.Literal and part in typing.get_args(f.annotation):
                return cls
    return None


def _union_tags(loc: tuple) -> set[str]:
    """Location parts of `loc` that are discriminated-union branch markers (e.g. `zscore_outliers`)."""
    tags, model, options = set(), Recipe, []
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        branch = _union_branch(options, part) if len(options) > 1 else None
        if branch is not None:
            tags.add(part)
            model, options = branch, []
            continue
        field = model.model_fields.get(part)
        classes = _model_classes(field.annotation) if field is not None else []
        model, options = (classes[0] if classes else None), classes
    return tags


def _model_classes_in(model: type[BaseModel]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for field in model.model_fields.values():
        found += _model_classes(field.annotation)
    return found


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-branch markers (class names, discriminator values, 'function-after[...]')."""
    tags = _union_tags(loc)
    return tuple(
        p for p in loc if isinstance(p, int) or ("[" not in p and not p[:1].isupper() and p not in tags)
    )


def _describe(err: dict, source: str, lines: dict[tuple, int], overrides: set[str]) -> str:
    raw_loc = tuple(err["loc"])
    loc = _clean_loc(raw_loc)
    dotted = ".".join(str(p) for p in loc) or "<top>"
    if dotted in overrides:
        where = "--set"
    else:
        line = None
        for n in range(len(loc), 0, -1):
            line = lines.get(loc[:n])
            if line is not None:
                break
        where = f"{source}:{line}" if line is not None else source
    if err["type"] == "extra_forbidden":
        model = _model_at(raw_loc[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{where}: {dotted}: unknown key ({hint})"
    if err["type"] == "missing":
        return f"{where}: {dotted}: required key is missing"
    if err["type"] == "union_tag_invalid":  # e.g. an unknown `op:` in data.operators
        ctx = err.get("ctx", {})
        key, tag = str(ctx.get("discriminator", "")).strip("'\""), str(ctx.get("tag", ""))
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        close = difflib.get_close_matches(tag, expected, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(expected)}"
        return f"{where}: {dotted}: unknown {key} '{tag}' ({hint})"
    if err["type"] == "value_error":
        return f"{where}: {dotted}: {err['msg'].removeprefix('Value error, ')}"
    got = err.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{where}: {dotted}: {err['msg']}{got_text}"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe file, apply `--set` overrides, validate. Raises `RecipeError` naming each problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    text = path.read_text(encoding="utf-8")
    return parse_recipe(text, source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([f"{where}: not valid YAML: {problem}"]) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise RecipeError([f"{source}:1: a recipe is a mapping of sections, got {type(tree).__name__}"])
    lines = _line_index(node) if node is not None else {}
    applied: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        _nested_set(tree, key, value)
        applied.add(key)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        problems = [_describe(e, source, lines, applied) for e in exc.errors()]
        raise RecipeError(problems) from None


# --------------------------------------------------------------------------------------------------
# Documentation of every key, generated from the models (used by `raylm keys`).


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


def describe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key, nested sections expanded."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        nested = _model_classes(field.annotation)
        if nested and len(default) > 40:
            default = "(section defaults)" if field.default is not None else "None"
        rows.append((key, _type_name(field.annotation), default, (field.description or "").strip()))
        for sub in nested:
            rows += describe_keys(sub, prefix=f"{key}.")
    return rows
