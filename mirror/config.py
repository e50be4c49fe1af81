"""Dataset configuration: what bucket, prefix and manifest names a dataset uses.

Datasets are data, not code: `configs/datasets/NAME.toml`. `--dataset` takes a name
(looked up in the shipped configs) or a path to a TOML file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .semver import Version
from .errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent
# In a wheel the configs are inside the package; in a checkout they sit beside it.
_CONFIG_DIRS = (_PACKAGE_DIR / "configs" / "datasets", _PACKAGE_DIR.parent / "configs" / "datasets")

DEFAULT_DATASET = "visual-behavior-ophys"


@dataclass(frozen=True)
class TableSpec:
    """One metadata table, and how AllenSDK's cache shapes it as pandas (its `recipe`):
    `getter` is the cache's method for it (`Mirror` answers the same name); the column lists
    say which columns are text (`dtype=str`), dates (UTC), nullable "Int64", Python lists
    (ast.literal_eval), which come first and in what order, and `drop_rows_with`: rows with
    any of these columns filled are left out (AllenSDK's default filters)."""

    name: str
    index: str
    getter: str | None = None
    str_columns: tuple[str, ...] = ()
    date_columns: tuple[str, ...] = ()
    int_columns: tuple[str, ...] = ()
    list_columns: tuple[str, ...] = ()
    column_order: tuple[str, ...] = ()
    drop_rows_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileKind:
    """Data files found through a table: the row whose `id_column` is the id carries a
    `file_id`, and the file is data_files[str(int(file_id))]. `no_file`: why a row may have
    none (said when one is asked for)."""

    name: str
    table: str
    id_column: str
    no_file: str = ""
    # A row without a file of its own is another kind's item: the one whose id is in this
    # column (VBN: a behavior session recorded with Neuropixels → its ecephys session's NWB).
    fallback_column: str | None = None
    fallback_kind: str | None = None


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    bucket: str
    region: str
    prefix: str
    manifest_prefix: str
    manifest_pattern: re.Pattern[str]
    manifest_template: str
    tables: dict[str, TableSpec] = field(default_factory=dict)
    file_kinds: dict[str, FileKind] = field(default_factory=dict)
    # `--ids FILE`: the id columns a CSV header may name, in order of preference, and the ones a
    # bare id list is matched against (in every file-carrying table that has them).
    id_columns: tuple[str, ...] = ()
    bare_id_columns: tuple[str, ...] = ()
    title: str = ""  # what the dataset is called in messages ("Visual Behavior Ophys")
    no_file_id: int | None = None  # a file_id that means "no file" (VBN: -999), besides an empty cell
    sandbox: str | None = None  # the replica `sandbox up` serves for it (mirror/sandbox), if any

    @property
    def list_columns(self) -> frozenset[str]:
        """Columns that hold lists ("[1, 2]") in some table: never read as ids."""
        return frozenset(c for t in self.tables.values() for c in t.list_columns)

    def table_for(self, *, name: str | None = None, index: str | None = None) -> TableSpec | None:
        if name is not None:
            return self.tables.get(name)
        return next((t for t in self.tables.values() if t.index == index), None) if index else None

    def manifest_name(self, version: str) -> str:
        return self.manifest_template.format(version=version)

    def version_of(self, manifest_name: str) -> str | None:
        """The version in a manifest file name; None for names that are not a manifest of
        this dataset, or whose version is not a valid semantic version (`_v01.0.0.json`): such
        an object in the bucket or in cache_dir is ignored, not an error for every command."""
        m = self.manifest_pattern.match(manifest_name)
        if not m:
            return None
        version = m.group("version")
        return version if Version.is_valid(version) else None


def available_datasets() -> list[str]:
    names: set[str] = set()
    for d in _CONFIG_DIRS:
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def load_dataset(name_or_path: str) -> DatasetConfig:
    path = Path(name_or_path)
    if not (name_or_path.endswith(".toml") and path.is_file()):
        path = next((d / f"{name_or_path}.toml" for d in _CONFIG_DIRS if (d / f"{name_or_path}.toml").is_file()), None)
        if path is None:
            raise ConfigError(
                f"unknown dataset {name_or_path!r}; known: {', '.join(available_datasets()) or '(none)'}",
                hint="pass a dataset name from configs/datasets/ or a path to a .toml file",
            )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset config: {exc}") from exc
    try:
        pattern = re.compile(raw["manifest_pattern"])
        if "version" not in pattern.groupindex:
            raise ConfigError(f"{path}: manifest_pattern needs a named group 'version'")
        prefix = raw["prefix"]
        if not prefix.endswith("/"):
            prefix += "/"
        return DatasetConfig(
            name=raw["name"],
            bucket=raw["bucket"],
            region=raw["region"],
            prefix=prefix,
            manifest_prefix=raw["manifest_prefix"],
            manifest_pattern=pattern,
            manifest_template=raw["manifest_template"],
            tables={k: _table(k, v, raw.get("recipes", {})) for k, v in raw.get("tables", {}).items()},
            file_kinds={k: FileKind(k, v["table"], v["id_column"], v.get("no_file", ""),
                                    v.get("fallback", {}).get("column"), v.get("fallback", {}).get("kind"))
                        for k, v in raw.get("file_kinds", {}).items()},
            no_file_id=raw.get("no_file_id"),
            id_columns=tuple(raw.get("id_columns", ())),
            bare_id_columns=tuple(raw.get("bare_id_columns", ())),
            title=raw.get("title", raw["name"]),
            sandbox=raw.get("sandbox"),
        )
    except (KeyError, TypeError, re.error) as exc:
        raise ConfigError(f"{path}: invalid dataset config ({exc!r})") from exc


_RECIPE_KEYS = ("str_columns", "date_columns", "int_columns", "list_columns", "column_order", "drop_rows_with")


def _table(name: str, raw: dict, recipes: dict) -> TableSpec:
    """A table's spec: its own keys over those of the recipe it names (`recipe = "session"`
    takes `[recipes.session]`), so tables AllenSDK treats alike are described once."""
    recipe = raw.get("recipe")
    if recipe is not None and recipe not in recipes:
        raise KeyError(f"table {name!r} names recipe {recipe!r}, which [recipes] does not define")
    merged = {**(recipes.get(recipe) or {}), **raw}
    unknown = set(merged) - {"index", "getter", "recipe", *_RECIPE_KEYS}
    if unknown:
        raise KeyError(f"table {name!r} has unknown keys {sorted(unknown)}")
    return TableSpec(name, merged["index"], merged.get("getter"),
                     **{k: tuple(merged.get(k, ())) for k in _RECIPE_KEYS})
