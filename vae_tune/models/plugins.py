"""The user's own VAE: the contract it meets, and how a reference to it is imported.

The contract (see docs/byo-vae.md for a whole example):

- a `torch.nn.Module` built as `Model(config, input_shape)`, where `config` is an instance of
  its typed config and `input_shape` the shape of one example (an image's (H, W));
- `encode(x)` returns `(mu, logvar)` of the Gaussian q(z|x), each `batch x latent_dim`;
- `decode(z)` returns the likelihood's parameters for `x` (the logits of a Bernoulli), one
  row per z, with as many numbers per row as an example has;
- its config is a pydantic model subclassing `vae_tune.ModelConfig` (which brings
  `latent_dim`, `dropout`, `flow`, `flow_length` and `conditional`); its fields are the knobs
  a spec can search, with their types and ranges as their checks. Give it with the decorator
  (`config=`), as a class attribute `config_class`, or as the annotation of `__init__`'s
  `config` parameter.

A subclass of `vae_tune.VAE` (as the shipped models are) may instead implement
`encode_images` and `decode_latents` and override `posterior` for more stochastic layers.

A reference is `module.path:Class` (imported from the import path, the working folder
appended last so it cannot shadow an installed package) or `path/to/file.py:Class` (a file,
made absolute so that every worker process imports the same one).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import typing
from pathlib import Path

from torch import nn

from vae_tune.errors import SpecError
from vae_tune.models.base import VAE
from vae_tune.models.config import ModelConfig

_FILE_MODULES: dict[str, str] = {}  # module name given to a file we imported -> its path


def is_reference(name: str) -> bool:
    """Whether an architecture name is a reference (`module:Class`, `file.py:Class`)."""
    return ":" in name


def _import_file(path: Path, field: str) -> object:
    """Import a .py file as a module of its own (once per file and process)."""
    name = "vae_tune_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{path} is not a Python file", field)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # its sibling modules, as `python file.py` finds them
        sys.path.append(str(path.parent))
    sys.modules[name] = module  # before running it: dataclasses and pydantic look it up
    _FILE_MODULES[name] = str(path)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise SpecError(f"{path} fails to import: {type(err).__name__}: {err}", field) from None
    return module


def _try_import(dotted: str, field: str) -> object | None:
    """The module, None if `dotted` itself is not found; any other failure (its own error, a
    package it needs) raises SpecError naming it."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as err:
        if err.name is not None and dotted.startswith(err.name.split(".")[0]):
            return None
        raise SpecError(f"module {dotted!r} fails to import: {err}", field) from None
    except Exception as err:  # the user's module may fail in any way: name it
        raise SpecError(f"module {dotted!r} fails to import: {type(err).__name__}: {err}",
                        field) from None


def _import_module(dotted: str, field: str) -> object:
    module = _try_import(dotted, field)
    cwd = str(Path.cwd())
    if module is None and cwd not in sys.path:  # a package beside the spec, as `python -m` has
        sys.path.append(cwd)
        module = _try_import(dotted, field)
    if module is None:
        raise SpecError(
            f"no module named {dotted!r} (not installed, and not in the working folder {cwd})",
            field,
        )
    return module


def import_reference(ref: str, field: str = "architecture") -> tuple[type[nn.Module], str]:
    """The class a reference names, and the reference as every process should read it
    (files made absolute). Raises SpecError naming the missing module, file or class."""
    where, sep, qualname = ref.rpartition(":")
    if not sep or not where or not qualname:
        raise SpecError(f"a reference is module:Class or path/file.py:Class, got {ref!r}", field)
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"no such file: {where} (in the reference {ref!r})", field)
        module, reference = _import_file(path, field), f"{path}:{qualname}"
    else:
        module, reference = _import_module(where, field), ref
    obj: object = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{where} has no class {qualname!r} (in the reference {ref!r})", field)
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise SpecError(f"{ref} is not a torch.nn.Module subclass", field)
    return obj, reference


def reference_of(model: type) -> str | None:
    """How a fresh process finds a decorated class: its module (a file we imported by path,
    or the script run as __main__, by its file). None where there is no file (a notebook)."""
    module = model.__module__
    if module in _FILE_MODULES:
        return f"{_FILE_MODULES[module]}:{model.__qualname__}"
    if "<locals>" in model.__qualname__:
        return None
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main_file or not str(main_file).endswith(".py"):
            return None
        return f"{Path(main_file).resolve()}:{model.__qualname__}"
    return f"{module}:{model.__qualname__}"


def config_of(model: type, name: str) -> type[ModelConfig]:
    """A model's typed config: its `config_class`, else the annotation of `config`."""
    config = getattr(model, "config_class", None)
    if config is None:
        try:
            hints = typing.get_type_hints(model.__init__)
        except Exception:  # noqa: BLE001 - unresolvable annotations: say what to give instead
            hints = {}
        config = hints.get("config")
    if config is None:
        raise SpecError(
            f"{name}: give the config class of {model.__qualname__} (the decorator's config=, a "
            "class attribute config_class, or the annotation of __init__'s config parameter)",
            "architecture",
        )
    return config


def check_contract(model: type, config: type, name: str) -> None:
    """Raise SpecError naming the first way `model` and `config` break the contract."""
    if not (isinstance(model, type) and issubclass(model, nn.Module)):
        raise SpecError(f"{name}: {model!r} is not a torch.nn.Module subclass", "architecture")
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise SpecError(
            f"{name}: its config {config!r} must subclass vae_tune.ModelConfig (it brings "
            "latent_dim and the knobs every VAE has)",
            "architecture",
        )
    own = issubclass(model, VAE)
    for method in ("encode_images", "decode_latents") if own else ("encode", "decode"):
        if not callable(getattr(model, method, None)):
            raise SpecError(
                f"{name}: {model.__qualname__} has no {method}() method (the contract: "
                "encode(x) -> (mu, logvar), decode(z) -> the likelihood's parameters)",
                "architecture",
            )
    params = list(inspect.signature(model.__init__).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise SpecError(
            f"{name}: {model.__qualname__}.__init__ must take (config, input_shape)",
            "architecture",
        )
