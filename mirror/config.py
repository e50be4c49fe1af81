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
    name: str
    index: str


@dataclass(frozen=True)
class FileKind:
    name: str
    table: str
    id_column: str


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
            tables={k: TableSpec(k, v["index"]) for k, v in raw.get("tables", {}).items()},
            file_kinds={k: FileKind(k, v["table"], v["id_column"]) for k, v in raw.get("file_kinds", {}).items()},
        )
    except (KeyError, TypeError, re.error) as exc:
        raise ConfigError(f"{path}: invalid dataset config ({exc!r})") from exc
