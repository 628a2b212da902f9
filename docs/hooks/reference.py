"""mkdocs hook: the reference pages, generated from the code at every build.

A page holding one of the markers below gets it replaced by Markdown made from the code:

- `<!-- reference:spec -->`: every field of `StudySpec` and of the models nested in it (and
  of `RunConfig`), from the pydantic models: name, type, default, constraints, description;
  the search space's knobs from the configs they come from (`TrainingKnobs`, `ModelConfig`,
  each shipped architecture's config);
- `<!-- reference:cli -->`: every command of the `vae-tune` CLI, its arguments and options
  with their help, defaults and environment variables, from the click command typer builds;
- `<!-- reference:api -->`: a mkdocstrings block for each public name of `vae_tune`
  (`vae_tune.__all__`), rendered from its docstring.

Nothing here is a copy of a field or an option: add one to the code and the next build shows it.
"""

from __future__ import annotations

import enum
import json
import os
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# --------------------------------------------------------------------------- helpers


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(value: Any) -> str:
    """A value as inline code, written as YAML would show it."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str)
    return f"`{_cell(text)}`"


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _type(annotation: Any, links: dict[type, str]) -> str:
    """A readable type: `int`, `one of: a, b`, `list of str`, a link to a nested model."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(_code(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a, links) for a in args)
    if origin is typing.Annotated:
        return _type(args[0], links)
    if origin in (list, tuple, set):
        if not args:
            return "list"
        inner = _type(args[0], links)
        return f"list of ({inner})" if " or " in inner else f"list of {inner}"
    if origin is dict:
        if not args:
            return "mapping"
        return f"mapping of {_type(args[0], links)} to {_type(args[1], links)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        name = annotation.__name__
        return f"[{name}](#{links[annotation]})" if annotation in links else name
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥",
           "max_length": "length ≤", "pattern": "matches"}


def _constraints(field: FieldInfo) -> str:
    """`≥ 1`, `> 0, ≤ 1`, ... from the field's metadata (annotated_types and pydantic's)."""
    found = []
    for meta in field.metadata:
        for attr, sign in _BOUNDS.items():
            value = getattr(meta, attr, None)
            if value is not None:
                shown = f"`{value}`" if attr == "pattern" else value
                found.append(f"{sign} {shown}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "its fields' defaults"
        return _code(value)
    return "" if field.default is PydanticUndefined else _code(field.default)


def _fields_table(model: type[BaseModel], links: dict[type, str],
                  skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| field | type | default | constraints | description |",
            "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        rows.append(
            f"| `{name}` | {_cell(_type(field.annotation, links))} | {_default(field)} "
            f"| {_cell(_constraints(field))} | {_cell(field.description or '')} |"
        )
    return rows


def _doc(model: type) -> str:
    """The class's own docstring (or that of the private base it was made from), one line."""
    for cls in model.__mro__:
        if cls is model or cls.__name__.startswith("_"):
            text = cls.__dict__.get("__doc__")
            if text:
                return " ".join(text.split())
    return ""


def _public(cls: type) -> str:
    """`optuna.samplers.TPESampler`, not the private module it is defined in."""
    parts = []
    for part in cls.__module__.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    return ".".join([*parts, cls.__qualname__])


# --------------------------------------------------------------------------- the spec


def spec_reference() -> str:
    """Every field of a study spec, from the pydantic models themselves."""
    from vae_tune.models.config import ModelConfig
    from vae_tune.models.registry import SHIPPED
    from vae_tune.training.config import (
        MODEL_KNOBS,
        TRAINING_KNOBS,
        DatasetSpec,
        LikelihoodSpec,
        RunConfig,
        TrainingKnobs,
    )
    from vae_tune.tuning.samplers import PRUNER_CLASSES, SAMPLER_CLASSES
    from vae_tune.tuning.spec import (
        BudgetSpec,
        Param,
        PrunerSpec,
        SamplerSpec,
        SearchSpace,
        StudySpec,
        TrainingSpec,
    )

    nested = [DatasetSpec, LikelihoodSpec, SearchSpace, TrainingSpec, SamplerSpec, PrunerSpec,
              BudgetSpec, Param, RunConfig]
    links = {m: _anchor(m) for m in [StudySpec, *nested]}
    out = ["## StudySpec", "", _doc(StudySpec), "",
           "The top level of a spec file (YAML) or of the dict `vae_tune.tune` takes. "
           "Unknown keys are errors.", ""]
    out += _fields_table(StudySpec, links)

    for model in (DatasetSpec, LikelihoodSpec, TrainingSpec, SamplerSpec, PrunerSpec,
                  BudgetSpec):
        key = next((n for n, f in StudySpec.model_fields.items() if f.annotation is model), "")
        out += ["", f"## {model.__name__}", "", f"The `{key}` block. {_doc(model)}".strip(), ""]
        out += _fields_table(model, links)
        if model is SamplerSpec:
            out += ["", "`options` are passed to the Optuna class of the name, checked against "
                    "its signature first:", ""]
            out += [f"- `{n}`: `{_public(c)}`"
                    for n, c in SAMPLER_CLASSES.items()]
        if model is PrunerSpec:
            out += ["", "`options` are passed to the pruner class of the name, checked against "
                    "its signature first:", ""]
            out += [f"- `{n}`: `{_public(c)}`"
                    for n, c in PRUNER_CLASSES.items()]

    out += ["", "## SearchSpace", "", f"The `search_space` block. {_doc(SearchSpace)}", "",
            "Each knob is a [Param](#param): a fixed value, a range or choices. A knob left out "
            "is fixed at its default. Type, constraints and description are those of the "
            "config field the knob sets; every value a Param can take is checked against them.",
            "", "| knob | type | default | constraints | description |",
            "| --- | --- | --- | --- | --- |"]
    arch = SearchSpace.model_fields["architecture"]
    out.append(f"| `architecture` | string: {', '.join(f'`{a}`' for a in SHIPPED)}, a "
               f"registered name or a reference `file.py:Class` | "
               f"{_code(arch.default_factory().value)} | | which network a trial trains |")
    for source, names in ((ModelConfig, MODEL_KNOBS), (TrainingKnobs, TRAINING_KNOBS)):
        for name in names:
            field = source.model_fields[name]
            out.append(
                f"| `{name}` | {_cell(_type(field.annotation, links))} | {_default(field)} "
                f"| {_cell(_constraints(field))} | {_cell(field.description or '')} |"
            )
    out += ["", "### Architecture blocks", "",
            "`search_space.<architecture>` holds the knobs of one architecture, active only in "
            "trials that drew it. Your own architecture's block is keyed by its name and holds "
            "the fields of its config class.", ""]
    from vae_tune.models import config_class

    for name in SHIPPED:
        config = config_class(name)
        out += [f"#### `{name}` ({config.__name__})", "", _doc(config), ""]
        out += _fields_table(config, links, skip=MODEL_KNOBS)
        out.append("")

    out += ["## Param", "", _doc(Param), ""]
    out += _fields_table(Param, links)
    out += ["", "## RunConfig", "", _doc(RunConfig), "",
            "What `vae-tune export-best` writes and `vae-tune train` reads: the knobs and run "
            "settings above as one flat mapping, plus the fields below.", ""]
    out += _fields_table(RunConfig, links, skip=TRAINING_KNOBS)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the CLI


def _annotation_type(annotation: Any) -> str:
    """A parameter's Python annotation as a CLI type: text, integer, number, path, choices."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_annotation_type(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return _annotation_type(args[0]) if args else "text"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    names = {str: "text", int: "integer", float: "number", bool: "boolean"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _param_type(param: Any) -> str:
    """The type of a click parameter as typer made it (recent typer keeps the annotation in
    `type_descriptor`; older typer and plain click have a click `type`)."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return _annotation_type(descriptor.annotation)
    kind = param.type
    if getattr(kind, "choices", None):
        return "one of " + ", ".join(f"`{c}`" for c in kind.choices)
    name = getattr(kind, "name", str(kind)).lower()
    return {"text": "text", "integer": "integer", "float": "number", "path": "path",
            "boolean": "boolean"}.get(name, name)


def _param_default(param: Any) -> str:
    default = param.default
    if default is None or default == () or default == []:
        return ""
    if getattr(param, "is_flag", False) and getattr(param, "secondary_opts", None):
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if getattr(param, "is_flag", False):
        return "off" if not default else "on"
    return _code(default.value if isinstance(default, enum.Enum) else default)


def _range(param: Any) -> str:
    where = param if hasattr(param, "min") else getattr(param, "type", None)
    low, high = getattr(where, "min", None), getattr(where, "max", None)
    parts = []
    if low is not None:
        parts.append(f"≥ {low}")
    if high is not None:
        parts.append(f"≤ {high}")
    return ", ".join(parts)


def cli_reference() -> str:
    """Every command of `vae-tune`, its arguments and options, from click's objects."""
    import typer.main

    from vae_tune.cli import app

    # typer builds click objects (its own vendored click in recent typer): read them by their
    # attributes, not by isinstance against a click module
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="vae-tune")
    out = ["## vae-tune", "", _cell(group.help or ""), "", "```text",
           "vae-tune [--version] [--help] COMMAND [ARGS]...", "```", "",
           "| command | what it does |", "| --- | --- |"]
    names = group.list_commands(ctx)
    for name in names:
        cmd = group.get_command(ctx, name)
        out.append(f"| [`{name}`](#vae-tune-{name}) | {_cell(cmd.get_short_help_str(200))} |")
    for name in names:
        cmd = group.get_command(ctx, name)
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        params = cmd.get_params(sub)  # the options, and --help
        arguments = [p for p in params if p.param_type_name == "argument"]
        options = [p for p in params if p.param_type_name == "option"]
        usage = " ".join(["[OPTIONS]", *(
            (p.metavar or p.name).upper() if p.required else f"[{(p.metavar or p.name).upper()}]"
            for p in arguments)])
        out += ["", f"## vae-tune {name}", "", " ".join((cmd.help or "").split()), "",
                "```text", f"vae-tune {name} {usage}", "```", ""]
        if arguments:
            out += ["| argument | type | default | help |", "| --- | --- | --- | --- |"]
            for p in arguments:
                default = "**required**" if p.required else _param_default(p)
                out.append(f"| `{(p.metavar or p.name).upper()}` | {_param_type(p)} | {default} "
                           f"| {_cell(getattr(p, 'help', '') or '')} |")
            out.append("")
        out += ["| option | type | default | help |", "| --- | --- | --- | --- |"]
        for p in options:
            flags = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            kind = _param_type(p)
            limits = _range(p)
            kind += f" ({limits})" if limits else ""
            if p.multiple:
                kind += ", repeatable"
            text = p.help or ""
            if p.envvar:
                envvars = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar)
                text += " Environment: " + ", ".join(f"`{e}`" for e in envvars) + "."
            default = "**required**" if p.required else _param_default(p)
            out.append(f"| {flags} | {kind} | {default} | {_cell(text)} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the Python API


# griffe (mkdocstrings' reader) does not find modules of implicit namespace packages
# (vae_tune/training, vae_tune/tuning have no __init__.py); the pydantic models from there are
# described by the spec reference, so their entry here is their docstring and a link to it
_MODELS_ON_THE_SPEC_PAGE = {"RunConfig": "runconfig", "StudySpec": "studyspec"}


def api_reference() -> str:
    """A mkdocstrings block per public name of `vae_tune` (where it is defined)."""
    import importlib

    import vae_tune

    out = []
    for name in vae_tune.__all__:
        if name == "__version__":
            continue
        module = vae_tune._EXPORTS[name]
        if name in _MODELS_ON_THE_SPEC_PAGE:
            obj = getattr(importlib.import_module(module), name)
            anchor = _MODELS_ON_THE_SPEC_PAGE[name]
            out += [f"## {name}", "", f"`{module}.{name}`: {_doc(obj)}", "",
                    f"Its fields: [study spec reference](spec.md#{anchor}).", ""]
            continue
        out += [f"::: {module}.{name}", "    options:", "      show_root_heading: true",
                "      heading_level: 2", "      show_root_full_path: false", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- shipped specs


def specs_reference() -> str:
    """One row per shipped spec, read from its file."""
    from vae_tune.tuning.spec import load_spec, shipped_specs

    out = ["| spec | dataset | architectures | sampler | pruner | trials | max epochs "
           "| command | measured wall time |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, path in sorted(shipped_specs().items()):
        spec = load_spec(path)
        archs = ", ".join(str(a) for a in spec.search_space.architecture.values())
        data = "" if spec.dataset.name == "digits" else " --data-dir DIR"
        command = "vae-tune run" if name == "quickstart" else f"vae-tune run {name}{data}"
        out.append(f"| `{name}` | {spec.dataset.name} | {archs} | {spec.sampler.name} "
                   f"| {spec.pruner.name} | {spec.budget.n_trials or 'every grid point'} "
                   f"| {spec.training.epochs} | `{command}` | not measured yet |")
    return "\n".join(out) + "\n"


MARKERS = {
    "<!-- reference:specs -->": specs_reference,
    "<!-- reference:spec -->": spec_reference,
    "<!-- reference:cli -->": cli_reference,
    "<!-- reference:api -->": api_reference,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker that stands on a line of its own (a page that only names one, in
    a code span, keeps it as written)."""
    for marker, make in MARKERS.items():
        line = re.compile(rf"^{re.escape(marker)}[ \t]*$", re.M)
        if line.search(markdown):
            made = make()
            markdown = line.sub(lambda _, made=made: made, markdown)
    return markdown
