"""The user's own table: examples as rows of numeric features, from .npy, .npz, .csv, .parquet
or AnnData .h5ad, with optional class labels; and the check that a likelihood fits its values.

A table becomes N x 1 x D float32 "images" of one row, so every vector architecture (the MLP,
the hierarchical model, a user's own) and every bound, schedule and diagnostic apply as they
are; the feature names travel with it for the pictures and the error messages. CSV and
Parquet are read with pandas (and pyarrow), .h5ad with anndata: optional extras, named when
missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_tune.data.arrays import read_array
from vae_tune.data.labelled import Labelled
from vae_tune.errors import DataError
from vae_tune.models.likelihoods import COUNTS

TABLE_SUFFIXES = (".npy", ".npz", ".csv", ".parquet", ".h5ad")
EXTRAS = {"pandas": "tables", "pyarrow": "tables", "anndata": "anndata"}


def _optional(module: str, path: Path) -> Any:
    """An optional dependency, or a DataError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise DataError(
            f"{path}: reading {path.suffix} files needs {module}: pip install 'vae-tune[{extra}]'"
        ) from None


@dataclass(frozen=True)
class Table:
    values: np.ndarray  # N x D float32
    columns: list[str]
    labels: np.ndarray | None = None  # N int64 class indices
    label_names: list[str] | None = None  # the class each index stands for


def _class_indices(raw: Any, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels of any type -> (int64 indices into the sorted distinct values, their names)."""
    values = np.asarray(raw)
    if values.ndim != 1:
        raise DataError(f"{where}: labels must be one value per example, got shape {values.shape}")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise DataError(f"{where}: labels contain NaN or infinite values")
    names, index = np.unique(values.astype(str) if values.dtype.kind in "OUS" else values,
                             return_inverse=True)
    return index.astype(np.int64), [str(n) for n in names]


def _frame_table(frame: Any, path: Path, columns: list[str] | None, labels: str | None) -> Table:
    known = [str(c) for c in frame.columns]
    for name in [*(columns or []), *([labels] if labels else [])]:
        if name not in known:
            raise DataError(f"{path}: no column {name!r}; columns: {', '.join(known)}")
    chosen = columns or [c for c in known if c != labels]
    for name in chosen:
        if frame[name].dtype.kind not in "biuf":
            first = frame[name].iloc[0]
            raise DataError(
                f"{path}: column {name!r} is not numeric (first value {first!r}); leave it out "
                "with `columns:` or name it as `labels:`"
            )
    values = frame[chosen].to_numpy(dtype=np.float64)
    y, names = _class_indices(frame[labels].to_numpy(), f"{path}, column {labels!r}") if (
        labels
    ) else (None, None)
    return Table(values.astype(np.float32), chosen, y, names)


def _labels_file(spec_labels: str, path: Path, n: int) -> tuple[np.ndarray, list[str]] | None:
    """`labels:` naming a file of its own (.npy, .csv or .txt, one label per example)."""
    file = Path(spec_labels).expanduser()
    if file.suffix not in (".npy", ".csv", ".txt") or not file.is_file():
        return None
    raw = np.load(file) if file.suffix == ".npy" else np.loadtxt(file, dtype=str, delimiter=",")
    y, names = _class_indices(raw, str(file))
    if len(y) != n:
        raise DataError(f"{file}: {len(y)} labels for the {n} examples of {path}")
    return y, names


def read_table(
    path: Path, key: str | None = None, columns: list[str] | None = None,
    labels: str | None = None,
) -> Table:
    """Read a table file; `labels` is a column (csv, parquet), an array of the same .npz, an
    `obs` column (h5ad), or a file of its own."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: a table is one of {', '.join(TABLE_SUFFIXES)}, not {suffix!r}")
    if columns is not None and suffix not in (".csv", ".parquet", ".h5ad"):
        raise DataError(f"{path}: `columns` select columns of a .csv, .parquet or .h5ad file")
    if suffix in (".csv", ".parquet"):
        pandas = _optional("pandas", path)
        if suffix == ".parquet":
            _optional("pyarrow", path)
        try:
            frame = pandas.read_csv(path) if suffix == ".csv" else pandas.read_parquet(path)
        except Exception as err:  # a malformed file may fail in any way: name it
            raise DataError(f"{path}: cannot read as {suffix[1:]} ({err})") from None
        own = labels if labels in {str(c) for c in frame.columns} else None
        table = _frame_table(frame, path, columns, own)
        if labels and own is None:
            table = _with_labels_file(table, labels, path)
    elif suffix == ".h5ad":
        table = _h5ad(path, columns, labels)
    else:
        table = _array_table(path, key, labels)
    if table.values.ndim != 2 or table.values.shape[0] == 0 or table.values.shape[1] == 0:
        raise DataError(f"{path}: expected N examples x D features, got {table.values.shape}")
    bad = ~np.isfinite(table.values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{path}: column {table.columns[col]!r}, data row {row + 1}: {table.values[row, col]} "
            "(NaN or infinite values cannot be modelled; drop or impute them first)"
        )
    return table


def _with_labels_file(table: Table, labels: str, path: Path) -> Table:
    found = _labels_file(labels, path, len(table.values))
    if found is None:
        raise DataError(f"{path}: labels {labels!r} is neither a column nor a label file")
    return Table(table.values, table.columns, *found)


def _array_table(path: Path, key: str | None, labels: str | None) -> Table:
    values = read_array(path, key, frozenset({labels} if labels else ()))
    stored = None
    if labels and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            has_labels = labels in z.files
        stored = read_array(path, labels) if has_labels else None
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: expected a numeric N x D array, got {values.dtype} {values.shape}"
        )
    columns = [f"{key or path.stem}[{j}]" for j in range(values.shape[1])]
    table = Table(values.astype(np.float32), columns)
    if stored is not None:
        return Table(table.values, columns, *_class_indices(stored, f"{path}, key {labels!r}"))
    return _with_labels_file(table, labels, path) if labels else table


def _h5ad(path: Path, columns: list[str] | None, labels: str | None) -> Table:
    anndata = _optional("anndata", path)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # a malformed file may fail in any way: name it
        raise DataError(f"{path}: cannot read as h5ad ({err})") from None
    names = [str(v) for v in adata.var_names]
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: no variable {missing[0]!r} in var_names")
        adata = adata[:, columns]
        names = list(columns)
    matrix = adata.X
    values = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    table = Table(values.astype(np.float32), names)
    if labels:
        if labels in adata.obs.columns:
            y, label_names = _class_indices(adata.obs[labels].astype(str).to_numpy(),
                                            f"{path}, obs column {labels!r}")
            return Table(table.values, names, y, label_names)
        return _with_labels_file(table, labels, path)
    return table


def load_table(path: Path, key: str | None, columns: list[str] | None,
               labels: str | None) -> Labelled:
    """A table as the loaders return data: N x 1 x D values, labels, feature names."""
    table = read_table(path, key, columns, labels)
    return Labelled(table.values[:, None, :], table.labels, tuple(table.columns),
                    tuple(table.label_names) if table.label_names else None)


def check_fits(likelihood: str, values: np.ndarray, columns: list[str] | tuple[str, ...],
               source: str) -> None:
    """Raise DataError naming the file, the column and the first value that `likelihood`
    cannot model: negative or non-integer values under a count likelihood, values outside
    [0, 1] under a Bernoulli, outside {0, 1}... as the likelihood needs."""
    flat = values.reshape(len(values), -1)
    if likelihood in COUNTS:
        bad = (flat < 0) | (flat != np.round(flat))
        need = "non-negative integer counts"
    elif likelihood in ("bernoulli", "continuous_bernoulli"):
        bad = (flat < 0) | (flat > 1)
        need = "values in [0, 1]"
    else:
        return
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        name = columns[col] if col < len(columns) else f"pixel {col}"
        raise DataError(
            f"{source}: column {name!r}, data row {row + 1}: {flat[row, col]:g} is not one of "
            f"the {need} the {likelihood} likelihood models"
        )
